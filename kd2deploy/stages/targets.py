"""Edge devices over SSH: after the shipping guard, time what ships on every target of ``targets:``.

The shipped student, the teacher and its best variant go there with real test inputs from the task adapter
(its primary benchmark shape); the headline then names the first target that answered
(:mod:`kd2deploy.targets.stage`). A pipeline without targets skips this stage.
"""

from __future__ import annotations

from kd2deploy import ui
from kd2deploy.engine.stage import BaseStage


class TargetsStage(BaseStage):
    name = "targets"
    requires = ("ship",)

    @staticmethod
    def applies(cfg) -> bool:
        """Only pipelines with targets: have this stage (the plan and the stage timings say nothing otherwise)."""
        return bool(cfg.targets)

    def run(self, state, progress) -> None:
        cfg = state.cfg
        from kd2deploy.targets.stage import run_stage

        rows = max(max(t.batch_sizes or cfg.benchmark.batch_sizes) for t in cfg.targets)
        inputs = state.task.bench_inputs(rows, state.task.bench_shapes()[0])
        run_stage(cfg, state.results, state.dir, state.onnx, state.variants, inputs, ui.step)
