"""Energy per inference of the FP32 teacher and the file that ships (CodeCarbon windows with an idle baseline)."""

from __future__ import annotations

from kd2deploy.engine.stage import BaseStage


class EnergyStage(BaseStage):
    name = "energy"
    requires = ("export", "select")

    def run(self, state, progress) -> None:
        from kd2deploy.bench.pipeline_bench import inference_energy

        state.results["energy"] = inference_energy(state, progress)
