"""The engine: plans a pipeline's stages, then runs them over a run folder for any task.

- :mod:`kd2deploy.engine.stage`: the :class:`Stage` protocol every stage follows.
- :mod:`kd2deploy.engine.state`: :class:`RunState`, the typed state passed from stage to stage.
- :mod:`kd2deploy.engine.plan`: chained cache keys and the plan (``kd2deploy plan``, ``run --dry-run``).
- :mod:`kd2deploy.engine.driver`: :func:`run_pipeline`, the Python API behind ``kd2deploy run``.

Stages live in :mod:`kd2deploy.stages` (one file each), tasks in :mod:`kd2deploy.tasks` (one folder each).
"""

from kd2deploy.engine.driver import run_pipeline
from kd2deploy.engine.plan import plan_pipeline

__all__ = ["plan_pipeline", "run_pipeline"]
