"""The targets stage: after the local benchmark and the shipping guard, time what ships on every target.

It sends the shipped student (``ship/student.onnx``, the stamped file users deploy), the teacher and the
teacher's best variant (what the guard would ship for the teacher, when that is a variant) with real test
inputs, and records ``results["targets"][name]``; then the headline names the first target that answered.
Task-independent: it needs only the run's results, its ONNX files and a batch of real inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def target_models(results: Mapping[str, Any], run_dir: Path, onnx: Mapping[str, Path],
                  variants: Mapping[str, tuple[str, Path]]) -> dict[str, Path]:
    """{label: file}: teacher, its best variant (when the guard picked one), and the shipped student."""
    models = {"teacher": Path(onnx["teacher"])}
    shipped_teacher = (((results.get("variants") or {}).get("teacher") or {}).get("selection") or {}).get("shipped")
    if shipped_teacher and shipped_teacher != "teacher" and shipped_teacher in variants:
        models[shipped_teacher] = Path(variants[shipped_teacher][1])
    ship = results.get("ship") or {}
    models["student"] = run_dir / ship["path"] if ship.get("path") else Path(onnx["student"])
    return models


def run_stage(cfg: Any, results: dict[str, Any], run_dir: Path, onnx: Mapping[str, Path],
              variants: Mapping[str, tuple[str, Path]], x_test: Any,
              say: Callable[[str], object] | None = None) -> None:
    """Benchmarks on every target of ``cfg`` and names the first that answered in the headline.

    Raises:
        TargetError: a target with ``required: true`` failed (``results["targets"]`` records it first).
    """
    if not cfg.targets:
        return
    import numpy as np

    from kd2deploy.targets.api import run_targets
    from kd2deploy.targets.report import apply_headline

    rows = max(max(t.batch_sizes or cfg.benchmark.batch_sizes) for t in cfg.targets)
    inputs = None if x_test is None else (
        {k: np.asarray(v[:rows]) for k, v in x_test.items()} if isinstance(x_test, Mapping)
        else np.asarray(x_test[:rows]))
    models = target_models(results, run_dir, onnx, variants)
    try:
        results["targets"] = run_targets(cfg, results, models, inputs, progress=say)
    finally:
        apply_headline(results)
