"""The schema of results.json (``results.schema.json``, JSON Schema 2020-12) and its validator.

Everything that reads a finished run (``kd2deploy report``, ``kd2deploy compare``) validates first, so a file
from another version or a hand edit fails with the JSON path of the problem, not a KeyError in a template.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("results.schema.json")
SCHEMA_VERSION = 1


@functools.cache
def load_schema() -> dict[str, Any]:
    """The parsed schema (cached; treat it as read-only)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def json_path(parts: Iterable[str | int]) -> str:
    """``["benchmark", "results", 3, "p50_us"]`` -> ``$.benchmark.results[3].p50_us``."""
    out = "$"
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.isidentifier():
            out += f".{p}"
        else:
            out += f"[{json.dumps(p)}]"
    return out


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 2] + " …"


def validate_results(results: dict[str, Any], source: str | Path | None = None) -> None:
    """Checks a results.json object against the schema of its ``schema_version``.

    Args:
        results: the parsed results.json.
        source: file name to put in front of the message (e.g. ``runs/x/results.json``).

    Raises:
        ConfigError: ``<source>: $.json.path: what is wrong``, for the most relevant problem (a wrong
            ``schema_version`` first, then jsonschema's best match: the shallowest failing path).
    """
    where = f"{source}: " if source else ""
    if not isinstance(results, dict):
        raise ConfigError(f"{where}$: expected a JSON object, got {type(results).__name__}")
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{where}$.schema_version: {version!r}; this kd2deploy reads schema_version {SCHEMA_VERSION}"
            + ("" if version is not None else " (is this a kd2deploy results.json?)")
        )
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema ships with the dev extra; fall back to the top level
        missing = [k for k in load_schema()["required"] if k not in results]
        if missing:
            raise ConfigError(f"{where}$: {missing[0]!r} is a required property") from None
        return
    validator = jsonschema.Draft202012Validator(load_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(results))
    if error is not None:
        raise ConfigError(f"{where}{json_path(error.absolute_path)}: {_short(error.message)}")
