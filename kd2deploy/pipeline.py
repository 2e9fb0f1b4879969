"""The Python API behind ``kd2deploy run`` and ``kd2deploy plan`` (the engine lives in :mod:`kd2deploy.engine`).

>>> from kd2deploy.config import load_config
>>> from kd2deploy.pipeline import run_pipeline
>>> state = run_pipeline(load_config("pipelines/edge.yaml"))   # doctest: +SKIP
>>> state.results["headline"]["text"]                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from kd2deploy.engine import plan_pipeline, run_pipeline
from kd2deploy.report.headline import headline

__all__ = ["headline", "plan_pipeline", "run_pipeline", "summary_rows", "summary_table"]


def summary_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the terminal summary table: model, params, ONNX accuracy, p50 per batch size, energy."""
    rows = []
    lat = {(r["model"], r["batch_size"]): r for r in results.get("benchmark", {}).get("results", [])}
    batches = sorted({b for _, b in lat})
    energy = results.get("energy", {}).get("models", {})
    models = {name: (name, e["parity"]["accuracy_onnx"]) for name, e in results.get("export", {}).items()}
    for model, entry in results.get("variants", {}).items():
        models.update({v["label"]: (model, v["accuracy"]) for v in entry["variants"]})
    for name, (source, acc) in models.items():
        params = (results["models"]["teacher"]["params"] if source == "teacher"
                  else results.get("distill", {}).get("student_params"))
        cells = [name, f"{params:,}" if params else "", f"{acc:.2%}"]
        cells += [f"{lat[(name, b)]['p50_us']:.1f}" if (name, b) in lat else "–" for b in batches]
        ej = energy.get(name, {}).get("j_per_inference_active", {}).get("mean")
        cells.append(f"{ej * 1e3:.3f}" if ej is not None else "–")
        rows.append(tuple(cells))
    return rows


def summary_table(results: dict[str, Any]) -> tuple[str, list[str], list[tuple[str, ...]]]:
    """``kd2deploy run``'s closing table: (title, columns, rows); the task's own ``summary_table`` when its adapter
    has one (a causal LM is summarised by perplexity and per-token latency)."""
    from kd2deploy.tasks.base import task_named

    own = getattr(task_named(results.get("task", "tensor")), "summary_table", None)
    if own is not None:
        return own(results)
    batches = sorted({r["batch_size"] for r in results.get("benchmark", {}).get("results", [])})
    return ("kd2deploy summary (onnxruntime CPU)",
            ["model", "params", "test acc (ONNX)", *[f"p50 µs b{b}" for b in batches], "mJ/inf (active)"],
            summary_rows(results))
