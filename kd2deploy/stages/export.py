"""ONNX export of the teacher, the selected student and its scratch control, each with a parity check."""

from __future__ import annotations

from kd2deploy import ui
from kd2deploy.engine.stage import BaseStage


class ExportStage(BaseStage):
    name = "export"
    requires = ("students",)

    def run(self, state, progress) -> None:
        todo = {"teacher": state.teacher, "student": state.student}
        if state.scratch is not None:
            todo["student_scratch"] = state.scratch
        exported = {name: state.task.export(state, name, model) for name, model in todo.items()}
        state.results["export"] = exported
        ui.step("export: " + ", ".join(
            f"{n} max|Δ| {e['parity']['max_abs_diff']:.1e}, ORT acc {e['parity']['accuracy_onnx']:.2%}"
            for n, e in exported.items()))
