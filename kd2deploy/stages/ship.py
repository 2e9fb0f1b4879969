"""The shipping guard and the shipped file.

``select`` (after the benchmark, before energy): the guard picks, per model, the fastest variant that keeps
accuracy **on the validation split**; the student's pick is what ships, and energy is measured on it.
``ship``: the headline and verdict about that file (:mod:`kd2deploy.report.verdict`), then the task packages it
under ship/ (stamped, with its model card).
"""

from __future__ import annotations

from kd2deploy import ui
from kd2deploy.engine.stage import BaseStage


class SelectStage(BaseStage):
    name = "select"
    requires = ("benchmark",)

    def run(self, state, progress) -> None:
        from kd2deploy.ship.guard import select_variants

        select_variants(state.results, state.latency, state.cfg.ship)


class ShipStage(BaseStage):
    name = "ship"
    requires = ("select", "energy")

    def run(self, state, progress) -> None:
        from kd2deploy.report.verdict import build_headline, shipped_label, teacher_best_label

        task = state.task
        files = {"teacher": state.onnx["teacher"], "student": state.onnx["student"],
                 **{label: path for label, (_, path) in state.variants.items()}}
        y = task.labels("test")
        correct = {label: task.outputs(files[label], "test").argmax(-1) == y
                   for label in {"teacher", shipped_label(state.results), teacher_best_label(state.results)}}
        settings = state.results.get("benchmark", {}).get("settings", {})
        # the shipped file's card and metadata quote it
        state.results["headline"] = build_headline(
            state.results, latency=state.latency, correct=correct, budget_pp=state.cfg.report.max_accuracy_drop_pp,
            batch=state.cfg.ship.batch_size, bootstrap=settings.get("bootstrap", 1000), seed=settings.get("seed", 0),
            ship_file=getattr(task, "ship_file", None))
        path = task.package(state)
        sel = state.results["ship"].get("selection")
        ui.step(f"ship: {path.relative_to(state.dir)} ← {state.results['ship']['source']}"
                + (f" ({sel['reason']})" if sel else ""))
