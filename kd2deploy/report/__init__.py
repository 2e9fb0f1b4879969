"""Report rendering: one view of results.json feeds report.md and report.html, so their numbers agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kd2deploy.report.view import build_view


def _env():
    from jinja2 import Environment, PackageLoader

    env = Environment(
        loader=PackageLoader("kd2deploy.report", "templates"),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v, d=2: "–" if v is None else f"{100 * v:.{d}f} %"
    env.filters["num"] = lambda v, d=1: "–" if v is None else f"{v:,.{d}f}"
    env.filters["sci"] = lambda v, d=2: "–" if v is None else f"{v:.{d}e}"
    env.filters["sig"] = lambda v, d=3: "–" if v is None else f"{v:.{d}g}"
    return env


def render_markdown(results: dict[str, Any]) -> str:
    return _env().get_template("report.md.j2").render(v=build_view(results, with_plots=False))


def render_html(results: dict[str, Any]) -> str:
    from markupsafe import escape

    env = _env()
    env.autoescape = True
    env.filters["e"] = escape
    return env.get_template("report.html.j2").render(v=build_view(results, with_plots=True))


def write_reports(results: dict[str, Any], run_dir: Path, formats: list[str]) -> list[Path]:
    """Writes report.md / report.html atomically into ``run_dir`` (the pipeline writes results.json), through the
    task's own ``render_report`` where its adapter has one."""
    from kd2deploy.rundir import write_atomic
    from kd2deploy.tasks.base import task_named

    own = getattr(task_named(results.get("task", "tensor")), "render_report", None)
    render = own or (lambda r, fmt: render_markdown(r) if fmt == "md" else render_html(r))
    return [write_atomic(Path(run_dir) / f"report.{fmt}", render(results, fmt)) for fmt in ("md", "html")
            if fmt in formats]
