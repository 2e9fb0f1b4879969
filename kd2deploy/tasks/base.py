"""What a task is: an adapter the shared stages call, and a registry of tasks with their capabilities.

The task decides how data is read, how models are built, trained, exported, fed and packaged (optimum's
``TasksManager`` idea); the stages in :mod:`kd2deploy.stages` never ask which task they run. A new task is one
folder under ``kd2deploy/tasks/`` plus one line in :mod:`kd2deploy.tasks` registering it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from kd2deploy.registry import Registry

if TYPE_CHECKING:
    from kd2deploy.engine.state import RunState


@dataclass(frozen=True)
class Capabilities:
    """What a task supports; validation refuses any other combination, with ``reasons`` as the explanation.

    Attributes:
        section: the task's own pipeline section (``text:``), or None when it reads the tensor sections.
        variant_kinds: compressed-variant kinds (``variants.variants[].kind``) the task can make and judge.
        backends: benchmark backends (``benchmark.backends``) its exported files run on.
        torch_baseline: whether the teacher can be timed in PyTorch eager.
        distributed: whether ``--nproc N`` training works.
        label_efficiency: whether the students stage can run ``distill.label_fractions``' study (it retrains the
            teacher and students on label subsets of the tensor sections).
        reasons: why something is missing, by capability name (shown in the refusal).
    """

    section: str | None = None
    variant_kinds: frozenset[str] = frozenset()
    backends: frozenset[str] = frozenset({"onnxruntime-cpu"})
    torch_baseline: bool = True
    distributed: bool = False
    label_efficiency: bool = False
    reasons: dict[str, str] = field(default_factory=dict)


class TaskAdapter(Protocol):
    """One task's side of every stage. An adapter instance lives for one run and keeps its own state (data,
    tokenizer, encoded splits); what all tasks produce goes into :class:`~kd2deploy.engine.state.RunState`.

    Model names used across stages: ``teacher``, ``student`` (the selected seed of the selected arm) and
    ``student_scratch`` (the scratch control of that seed, when trained).
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    ship_file: ClassVar[str]  # what ``package`` writes, relative to the run folder (the verdict names it)

    # --- provenance
    def packages(self) -> list[str]:
        """Distribution names whose versions results.json records (beyond the common ones)."""

    def key_inputs(self, stage: str) -> dict[str, Any]:
        """What the ``data`` / ``teacher`` / ``students`` stage reads of the config and of files (their sha256)."""

    # --- data and training
    def load_data(self, state: RunState) -> dict[str, Any]:
        """Reads the data and its splits; returns the results' ``data`` record."""

    def check(self, state: RunState) -> None:
        """What can be checked before anything trains (model output widths, layer names, ...)."""

    def train_teacher(self, state: RunState, progress: Any) -> list[str]:
        """Builds / loads / trains the teacher into ``state.teacher``; writes ``results['models']['teacher']``
        and its checkpoints; returns the checkpoint names (the cache entry)."""

    def restore_teacher(self, state: RunState, folder: Path, record: dict[str, Any]) -> list[str]:
        """Rebuilds ``state.teacher`` from a cache entry's folder; returns the checkpoint names to copy."""

    def train_arms(self, state: RunState, progress: Any) -> tuple[list[Any], list[tuple[Any, Any]], dict[str, Any]]:
        """Trains the KD arm and the controls over the seeds (``kd2deploy.distill.arms.Arm``), every arm of a
        seed from the same initial weights and batch order, with per-epoch resume (``state.resumes``). Returns
        (arms, [(model, history with ``epochs`` and ``train_time_s``)], the task's own distill record)."""

    def accuracy(self, model: Any, split: str) -> float:
        """The torch model's accuracy on ``val`` or ``test``."""

    def save_student(self, model: Any, path: Path) -> None:
        """Writes a student's checkpoint (what :meth:`load_student` reads)."""

    def load_student(self, path: Path) -> Any:
        """A student rebuilt from its checkpoint, in eval mode."""

    def restore_students(self, state: RunState, folder: Path, record: dict[str, Any]) -> None:
        """Rebuilds ``state.student`` / ``state.scratch`` from a cache entry's folder (``record['shipped_*']``)."""

    # --- deployment
    def export(self, state: RunState, name: str, model: Any) -> dict[str, Any]:
        """Exports ``model`` as ONNX into the run folder with a parity check on real data; sets
        ``state.onnx[name]`` and returns the export record (``parity.accuracy_onnx`` included)."""

    def outputs(self, path: Path, split: str) -> np.ndarray:
        """The ONNX file's outputs (logits) on ``split`` (``val`` or ``test``)."""

    def labels(self, split: str) -> np.ndarray:
        """The labels of ``split``."""

    def bench_shapes(self) -> list[dict[str, Any]]:
        """The input shapes the benchmark sweeps besides the batch size (``[{}]``, or ``[{"seq_len": 128}]``);
        the first is the primary one (the summary, the guard and energy use it)."""

    def bench_inputs(self, batch_size: int, shape: dict[str, Any]) -> np.ndarray | dict[str, np.ndarray]:
        """Prebuilt real test inputs for one batch size and shape (an array, or a feed dict by input name)."""

    def calibration_inputs(self) -> np.ndarray | dict[str, np.ndarray]:
        """Training-split inputs for static INT8 calibration (never validation or test)."""

    def facts(self, state: RunState, name: str, model: Any) -> dict[str, Any]:
        """Parameters, FLOPs per sample (or None), layers: what the report says about one model."""

    def package(self, state: RunState) -> Path:
        """Writes the shipped artifact (``results['ship']``: the guard's pick, stamped, with its model card)
        under ``ship/``; returns its path."""

    def report_sections(self, results: dict[str, Any]) -> list[dict[str, str]]:
        """Extra report sections of the task: ``[{"title": ..., "markdown": ...}]``.

        A task whose results do not fit the classifier report instead has the static methods
        ``render_report(results, fmt) -> str`` (``md`` / ``html``) and ``summary_table(results) -> (title, columns,
        rows)``; :func:`kd2deploy.report.write_reports` and ``kd2deploy run``'s summary use them when present."""


TASKS: Registry[type[TaskAdapter]] = Registry("task")


def task_of(cfg: Any) -> type[TaskAdapter]:
    """The adapter class of ``cfg.task`` (the registry fails loudly, listing the tasks)."""
    return task_named(cfg.task)


def task_named(name: str) -> type[TaskAdapter]:
    """The adapter class registered as ``name`` (a run's ``results["task"]``)."""
    import kd2deploy.tasks  # noqa: F401 - registers the built-in tasks

    return TASKS.get(name)


def check_capabilities(cfg: Any, caps: Capabilities, task: str) -> list[str]:
    """What in ``cfg`` the task cannot do, one sentence each (empty when everything is supported)."""
    problems = []
    for spec in cfg.variants.variants:
        if spec.kind not in caps.variant_kinds:
            why = caps.reasons.get(spec.kind, "")
            problems.append(f"variants: kind {spec.kind!r} is not supported for task {task}"
                            + (f" ({why})" if why else "")
                            + f"; allowed: {', '.join(sorted(caps.variant_kinds)) or 'none'}")
    for name in cfg.benchmark.backends:
        if name not in caps.backends:
            why = caps.reasons.get(name, "")
            problems.append(f"benchmark.backends: {name!r} is not supported for task {task}"
                            + (f" ({why})" if why else "") + f"; allowed: {', '.join(sorted(caps.backends))}")
    if not caps.torch_baseline and cfg.benchmark.torch_baseline and "torch_baseline" in cfg.benchmark.model_fields_set:
        problems.append(f"benchmark.torch_baseline: not supported for task {task}"
                        + (f" ({caps.reasons['torch_baseline']})" if "torch_baseline" in caps.reasons else ""))
    return problems

