"""Reads the data and its seeded splits (the task decides how)."""

from __future__ import annotations

from typing import Any

from kd2deploy.engine.stage import BaseStage


class DataStage(BaseStage):
    name = "data"
    ranks = "all"

    def key_inputs(self, state) -> dict[str, Any]:
        return state.task.key_inputs("data")

    def run(self, state, progress) -> None:
        state.results["data"] = state.task.load_data(state)
