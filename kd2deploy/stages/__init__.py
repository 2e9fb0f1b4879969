"""The shared stages, in run order: one file each, one line each in ``STAGES`` below.

Every stage calls the run's task adapter for what depends on the task (:mod:`kd2deploy.tasks.base`) and never
asks which task it runs.
"""

from __future__ import annotations

from typing import Any

from kd2deploy.engine.stage import Stage
from kd2deploy.stages.benchmark import BenchmarkStage
from kd2deploy.stages.checks import ChecksStage
from kd2deploy.stages.data import DataStage
from kd2deploy.stages.energy import EnergyStage
from kd2deploy.stages.export import ExportStage
from kd2deploy.stages.report import ReportStage
from kd2deploy.stages.ship import SelectStage, ShipStage
from kd2deploy.stages.students import StudentsStage
from kd2deploy.stages.targets import TargetsStage
from kd2deploy.stages.teacher import TeacherStage
from kd2deploy.stages.variants import VariantsStage

STAGES: tuple[type[Stage], ...] = (
    DataStage,
    ChecksStage,
    TeacherStage,
    StudentsStage,
    ExportStage,
    VariantsStage,
    BenchmarkStage,
    SelectStage,
    EnergyStage,
    ShipStage,
    TargetsStage,
    ReportStage,
)


def stages_for(cfg: Any) -> list[Stage]:
    """The stages of a run of ``cfg``, in order: the shared ones, or a task's own list when its adapter has
    ``stages()`` (causal-lm: perplexity and per-token latency do not fit the classifier stages)."""
    from kd2deploy.tasks.base import task_of

    adapter = task_of(cfg)
    if hasattr(adapter, "stages"):
        return adapter(cfg).stages()
    return [cls() for cls in STAGES if getattr(cls, "applies", None) is None or cls.applies(cfg)]


def stage_names() -> list[str]:
    return [cls.name for cls in STAGES]
