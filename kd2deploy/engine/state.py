"""The typed state one run passes from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kd2deploy.cache import StageCache
    from kd2deploy.config import PipelineConfig
    from kd2deploy.distill.resume import Resume
    from kd2deploy.energy.meter import EnergyMeter
    from kd2deploy.tasks.base import TaskAdapter


@dataclass
class RunState:
    """Everything the stages of one run share.

    The task adapter (``task``) holds the task's own state (its data, tokenizer, ...); what every task produces
    lives in the typed fields below, written by the stage named beside each.
    """

    cfg: PipelineConfig
    task: TaskAdapter
    dir: Path
    out: Path = Path("runs")  # the --out folder (its .cache/ holds the stage cache and the teacher-output store)
    source: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)  # the future results.json
    meter: EnergyMeter | None = None
    cache: StageCache | None = None  # None: every stage computes
    use_cache: bool = True
    keys: dict[str, str] = field(default_factory=dict)  # stage -> chained cache key (engine)
    key_inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> what its key covers (engine)
    resumes: dict[str, Resume] = field(default_factory=dict)  # stage -> per-epoch checkpoints (engine)
    teacher: Any = None  # torch module (teacher stage)
    student: Any = None  # the selected student, torch module (students stage)
    scratch: Any = None  # the scratch control of the selected seed, or None (students stage)
    onnx: dict[str, Path] = field(default_factory=dict)  # model name -> exported file (export stage)
    variants: dict[str, tuple[str, Path]] = field(default_factory=dict)  # label -> (FP32 model, file) (variants)
    latency: list[dict[str, Any]] = field(default_factory=list)  # benchmark rows with samples (benchmark stage)

    def path(self, *parts: str) -> Path:
        """A path in the run folder; its parent folder exists (on the process that writes files)."""
        p = self.dir.joinpath(*parts)
        if writes():
            p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def warn(self, text: str) -> None:
        """A warning for the report (and results.json)."""
        self.results.setdefault("warnings", []).append(text)


def writes() -> bool:
    """Only rank 0 of a distributed run writes files (the other ranks train, then exit)."""
    from kd2deploy.distill import dist

    return dist.is_main()
