"""Re-renders a run's reports from its results.json: after a template change, or on another machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError
from kd2deploy.report.schema import validate_results


def results_file(run: Path) -> Path:
    """The results.json of a run folder (a path to the file itself is accepted too)."""
    run = Path(run)
    if run.is_file() or run.suffix == ".json":
        return run
    if not run.exists():
        raise ConfigError(f"{run}: run folder not found")
    return run / "results.json"


def load_results(run: Path) -> dict[str, Any]:
    """Reads and validates a run's results.json.

    Raises:
        ConfigError: naming the file: missing (with a hint when only results.partial.json is there, i.e. the
            run failed), not JSON (with line and column), or not matching the schema (with the JSON path).
    """
    path = results_file(run)
    if not path.is_file():
        partial = path.with_name("results.partial.json")
        hint = (
            f"; {partial.name} is there, so the run did not finish"
            if partial.is_file()
            else "; is this a kd2deploy run folder (runs/<pipeline>/<timestamp>/)?"
        )
        raise ConfigError(f"{path}: file not found{hint}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    validate_results(results, source=path)
    return results


def rerender(run_dir: Path, formats: list[str] | None = None) -> list[Path]:
    """Writes report.md / report.html into ``run_dir`` again from its results.json (validated first).

    Args:
        run_dir: the run folder (or its results.json).
        formats: ``["md", "html"]`` or a subset; default: the formats the run's config asked for.

    Returns:
        The report files written.
    """
    from kd2deploy.report import write_reports

    path = results_file(run_dir)
    results = load_results(path)
    if formats is None:
        formats = (results["pipeline"]["resolved"].get("report") or {}).get("formats") or ["md", "html"]
    bad = sorted(set(formats) - {"md", "html"})
    if bad:
        raise ConfigError(f"report formats: {bad[0]!r} is not one of md, html")
    return write_reports(results, path.parent, list(formats))
