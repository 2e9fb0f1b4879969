"""What can be checked before anything trains: the task's own checks and the required benchmark backends."""

from __future__ import annotations

from kd2deploy.engine.stage import BaseStage
from kd2deploy.errors import ConfigError


class ChecksStage(BaseStage):
    name = "checks"
    requires = ("data",)
    ranks = "all"

    def run(self, state, progress) -> None:
        from kd2deploy.bench.backends import BACKENDS

        state.task.check(state)
        bench = state.cfg.benchmark
        for name in bench.backends:
            ok, reason = BACKENDS.get(name).available()
            if not ok and bench.required:
                raise ConfigError(f"benchmark.backends: {name} is unavailable here ({reason}) and "
                                  "benchmark.required is true; nothing was trained")
