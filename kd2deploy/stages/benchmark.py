"""Latency of every exported model on every configured backend, interleaved, with intervals and an A/A control."""

from __future__ import annotations

from kd2deploy.engine.stage import BaseStage


class BenchmarkStage(BaseStage):
    name = "benchmark"
    requires = ("variants",)

    def run(self, state, progress) -> None:
        from kd2deploy.bench.pipeline_bench import benchmark_models

        state.results["benchmark"] = benchmark_models(state, progress)
