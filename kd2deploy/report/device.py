"""Latency measured on another device, added to a finished run's report.

Copy ``kd2deploy/bench/harness.py`` (numpy + onnxruntime only) and the run's ONNX files to the edge device, run
``python harness.py teacher.onnx student.onnx --batch-sizes 1 32 --json device.json`` there, bring the JSON
back and ``kd2deploy report RUN_DIR --device device.json --device-name pi5``. Models are matched to the run's
files by sha256, so a file that is not this run's (re-exported, or from another run) is named as such instead
of being reported under a wrong name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def run_files(results: dict[str, Any]) -> dict[str, str]:
    """sha256 -> label of every ONNX file the run wrote (exports, variants, the shipped student)."""
    files = {e["sha256"]: name for name, e in (results.get("export") or {}).items() if e.get("sha256")}
    for entry in (results.get("variants") or {}).values():
        files.update({v["sha256"]: v["label"] for v in entry.get("variants", [])})
    ship = results.get("ship") or {}
    if ship.get("sha256"):
        files[ship["sha256"]] = "ship/student.onnx"
    return files


def read_device_json(path: Path) -> dict[str, Any]:
    """A harness JSON (``harness.py --json`` or ``kd2deploy bench --json``), checked for what the report needs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: device results file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON file from the harness ({type(e).__name__})") from None
    missing = [k for k in ("settings", "environment", "models", "results") if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise ConfigError(f"{path}: not a harness JSON: missing {', '.join(missing)} (write it with harness.py "
                          "--json or kd2deploy bench --json)")
    return doc


def device_entry(doc: dict[str, Any], results: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``results["devices"][name]`` entry: rows renamed to the run's labels, unmatched files listed."""
    known = run_files(results)
    rename, foreign = {}, []
    for m in doc["models"]:
        label = known.get(m.get("sha256"))
        if label is None:
            foreign.append(m.get("name"))
        else:
            rename[m["name"]] = label
    rows = [{**r, "model": rename.get(r["model"], r["model"]), "this_run": r["model"] in rename}
            for r in doc["results"]]
    ratios = [{**r, "numerator": rename.get(r["numerator"], r["numerator"]),
               "denominator": rename.get(r["denominator"], r["denominator"])} for r in doc.get("ratios", [])]
    s = doc["settings"]
    return {
        "source": source,
        "environment": doc["environment"],
        "settings": {k: s.get(k) for k in ("provider", "intra_op_threads", "inter_op_threads", "graph_optimization",
                                            "min_duration_s", "min_runs", "rounds", "renew_sessions")},
        "results": rows,
        "ratios": ratios,
        "not_this_run": foreign,
        "peak_rss_bytes": doc.get("peak_rss_bytes"),
        "peak_flops": doc.get("peak_flops"),
    }


def attach_device(run_dir: Path, device_json: Path, name: str | None = None) -> str:
    """Adds ``device_json`` to the run as ``results["devices"][name]`` (a copy kept in ``devices/<name>.json``).

    results.json is rewritten atomically with the new key; nothing else in it changes. Returns the name.

    Raises:
        ConfigError: the file is missing or not a harness JSON, or the name is not file-name safe.
    """
    from kd2deploy.report.rerender import load_results, results_file
    from kd2deploy.rundir import write_atomic, write_json

    path = results_file(run_dir)
    results = load_results(path)
    doc = read_device_json(device_json)
    name = name or Path(device_json).stem
    if not _NAME.match(name):
        raise ConfigError(f"--device-name {name!r}: use letters, digits, '.', '_' or '-'")
    write_atomic(path.parent / "devices" / f"{name}.json", Path(device_json).read_bytes())
    results.setdefault("devices", {})[name] = device_entry(doc, results, f"devices/{name}.json")
    if results["devices"][name]["not_this_run"]:
        results.setdefault("warnings", []).append(
            f"device {name}: not files of this run (their sha256 matches none), reported under their own names: "
            f"{', '.join(results['devices'][name]['not_this_run'])}")
    write_json(path, results)
    return name
