"""The teacher: built, loaded or trained by the task; cached by its chained key."""

from __future__ import annotations

from typing import Any

from kd2deploy.engine.stage import BaseStage


class TeacherStage(BaseStage):
    name = "teacher"
    requires = ("data",)
    cached = True
    ranks = "all"

    def key_inputs(self, state) -> dict[str, Any]:
        return state.task.key_inputs("teacher")

    def run(self, state, progress) -> list[str]:
        return state.task.train_teacher(state, progress)

    def restore(self, state, entry, record: dict[str, Any]) -> list[str]:
        return state.task.restore_teacher(state, entry.dir, record)

    def record(self, state) -> dict[str, Any]:
        return state.results["models"]["teacher"]

    def share(self, state) -> Any:
        """What rank 0 sends the other training processes when it reuses the teacher."""
        return state.task.teacher_payload(state)

    def receive(self, state, payload: Any) -> None:
        state.task.receive_teacher(state, payload)
