"""The pipeline file: one pydantic schema holding every default, and a loader whose errors point at the cause.

A pipeline file is YAML (read with ``yaml.safe_load`` only). Unknown keys are errors; a bad value is reported as
``pipelines/edge.yaml:23:5 benchmark.batch_sizes.0: Input should be greater than 0`` before any work starts.
Relative paths in the file are resolved against the folder that holds the pipeline file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import reprlib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kd2deploy.errors import ConfigError
from kd2deploy.export.variants import VariantsConfig
from kd2deploy.ship.guard import ShipPolicy
from kd2deploy.strict import Fraction, PositiveFloat, PositiveInt, Strict
from kd2deploy.targets.config import TargetConfig
from kd2deploy.tasks.causal_lm.config import CausalLMConfig
from kd2deploy.tasks.text.config import TextConfig


def _existing_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Resolves ``value`` against the pipeline file's folder and checks that it exists."""
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    path = value if value.is_absolute() else (base / value)
    try:
        found = path.exists()
    except OSError as e:  # e.g. a name too long for the file system
        raise ValueError(f"not a usable path ({e.strerror}): {path}") from None
    if not found:
        raise ValueError(f"file not found: {path}")
    return path.resolve()


# --------------------------------------------------------------------------------------------- data
class DataConfig(Strict):
    """Where examples come from and how they are split."""

    source: str = Field("sklearn-digits", description="dataset name: sklearn-digits or npz")
    path: Path | None = Field(None, description="the .npz file (x_train, y_train, x_test, y_test[, x_val, y_val])")
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.15
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    standardize: bool = Field(True, description="scale inputs with the training split's mean and std")

    _check_path = field_validator("path")(_existing_path)

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        from kd2deploy.data import DATASETS

        return DATASETS.check(v)

    @model_validator(mode="after")
    def _npz_needs_path(self) -> DataConfig:
        if self.source == "npz" and self.path is None:
            raise ValueError("source 'npz' needs data.path: the .npz file to read")
        return self


# ------------------------------------------------------------------------------------------- models
class StudentTrainConfig(Strict):
    """The students' shared budget and optimiser (``distill.train``).

    No ``label_smoothing`` here: each arm sets its own (KD and scratch none, the label_smoothing control
    ``distill.control_label_smoothing``), so a shared value would be silently ignored; the key is rejected.
    """

    epochs: PositiveInt = 30
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant"] = "cosine"


class TrainConfig(StudentTrainConfig):
    """One training run's budget and optimiser (the teacher's, with its label smoothing)."""

    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0


def _check_arch(v: str, info: ValidationInfo) -> str:
    from kd2deploy.models import MODELS, removed_hub_message, split_file_spec

    removed = removed_hub_message(v)
    if removed:
        raise ValueError(removed)
    spec = split_file_spec(v)
    if spec is None:
        try:
            return MODELS.check(v)
        except ValueError as e:
            raise ValueError(f"{e}; or path/to/file.py:function") from None
    file, fn = spec
    path = _existing_path(Path(file), info)
    return f"{path}:{fn}"


class TeacherMember(Strict):
    """One member of an ensemble teacher; unset keys take the teacher section's values."""

    arch: str | None = Field(None, description="zoo name or file.py:function; default: teacher.arch")
    kwargs: dict[str, Any] | None = Field(None, description="builder arguments; default: teacher.kwargs")
    seed: int | None = Field(None, description="initial weights and batch order; default: pipeline seed + index")
    checkpoint: Path | None = Field(None, description="state_dict of this member; skips its training")
    train: TrainConfig | None = Field(None, description="default: teacher.train")

    _check_checkpoint = field_validator("checkpoint")(_existing_path)

    @field_validator("arch")
    @classmethod
    def _member_arch(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _check_arch(v, info)


class TeacherConfig(Strict):
    """The big model: trained here on the data, or loaded from a checkpoint (a state_dict).

    With ``ensemble``, the teacher is several models whose softened probabilities are averaged at the
    distillation temperature; it is exported and benchmarked as one module (the members' mean probabilities).
    """

    arch: str = Field("cnn-large", description="zoo name, or path/to/file.py:function (runs your code)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder")
    checkpoint: Path | None = Field(None, description="state_dict saved with torch.save; skips training")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=60, lr=3e-3, batch_size=128))
    ensemble: list[TeacherMember] = Field(
        default_factory=list,
        description="two or more members (e.g. [{seed: 1}, {seed: 2}, {arch: cnn-small}]); empty: one teacher",
    )

    _check_arch = field_validator("arch")(_check_arch)
    _check_checkpoint = field_validator("checkpoint")(_existing_path)

    @field_validator("ensemble")
    @classmethod
    def _two_or_more(cls, v: list[TeacherMember]) -> list[TeacherMember]:
        if len(v) == 1:
            raise ValueError("an ensemble needs at least two members (or none for a single teacher)")
        return v

    @model_validator(mode="after")
    def _ensemble_alone(self) -> TeacherConfig:
        if self.ensemble and self.checkpoint is not None:
            raise ValueError("teacher.checkpoint is for a single teacher; give each ensemble member its checkpoint")
        return self

    def members(self, pipeline_seed: int) -> list[dict[str, Any]]:
        """The resolved members: ``{arch, kwargs, seed, checkpoint, train}`` each (one for a single teacher)."""
        if not self.ensemble:
            return [{"arch": self.arch, "kwargs": self.kwargs, "seed": pipeline_seed, "checkpoint": self.checkpoint,
                     "train": self.train}]
        return [
            {"arch": m.arch or self.arch, "kwargs": self.kwargs if m.kwargs is None else m.kwargs,
             "seed": pipeline_seed + i if m.seed is None else m.seed, "checkpoint": m.checkpoint,
             "train": m.train or self.train}
            for i, m in enumerate(self.ensemble)
        ]


class StudentConfig(Strict):
    """The small model that ships."""

    arch: str = Field("cnn-tiny", description="zoo name, or path/to/file.py:function (runs your code)")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    _check_arch = field_validator("arch")(_check_arch)


_TERM_LOSSES = ("hint", "ce")


class TermConfig(Strict):
    """One weighted term of the KD student's loss."""

    loss: str = Field(..., description="a logit loss (hinton, mse-logits), hint (FitNets), or ce (hard labels)")
    weight: Annotated[float, Field(ge=0)] = 1.0
    temperature: PositiveFloat | None = Field(None, description="logit losses; default: distill.temperature")
    alpha: Fraction | None = Field(None, description="logit losses; default: distill.alpha")
    student_layer: str | None = Field(None, description="hint: module name in the student (named_modules)")
    teacher_layer: str | None = Field(None, description="hint: module name in the teacher (first member)")

    @field_validator("loss")
    @classmethod
    def _known_term(cls, v: str) -> str:
        from kd2deploy.distill.losses import LOSSES

        if v in _TERM_LOSSES or v in LOSSES:
            return v
        raise ValueError(f"unknown loss {v!r}; valid names: {', '.join(sorted([*LOSSES.names(), *_TERM_LOSSES]))}")

    @model_validator(mode="after")
    def _layers_for_hints(self) -> TermConfig:
        has = self.student_layer is not None or self.teacher_layer is not None
        if self.loss == "hint" and not (self.student_layer and self.teacher_layer):
            raise ValueError("a hint term needs student_layer and teacher_layer (module names)")
        if self.loss != "hint" and has:
            raise ValueError(f"student_layer / teacher_layer belong to hint terms, not {self.loss!r}")
        return self


class TransferConfig(Strict):
    """Per-step perturbations of the transfer set, applied to every arm alike (controls included).

    With either on, the teacher runs on every batch, on the same perturbed view as the student.
    """

    shift_px: Annotated[int, Field(ge=0, le=4)] = Field(0, description="random image shifts up to this many pixels")
    mixup_alpha: Annotated[float, Field(ge=0)] = Field(0.0, description="mixup Beta(a, a); 0 = off")


class TeacherStoreConfig(Strict):
    """The teacher's logits on the (fixed) transfer set, computed once and kept on disk for every student run
    (``<out>/.cache/teacher_outputs/``; see ``kd2deploy/distill/store.py``).

    With per-step shifts or mixup the teacher must see every augmented batch, so the store does not apply: the
    teacher then runs on every batch and the run says so (a fallback, not an error).
    """

    enabled: bool = Field(True, description="read teacher outputs from the on-disk store (written once)")
    top_k: Annotated[int, Field(ge=1)] | None = Field(
        None, description="store only the k largest logits per sample (null: full logits, exact)")


class MungeConfig(Strict):
    """A synthetic transfer set labelled by the teacher (Bucilua et al. 2006, MUNGE; kd2deploy/distill/synthetic.py).

    The synthetic samples carry no hard label, so only the KD student learns from them; the controls train on the
    real samples for the same number of steps.
    """

    passes: Annotated[int, Field(ge=0, le=10)] = Field(0, description="synthetic samples per real one (0 = off)")
    p: Fraction = Field(0.5, description="probability that an attribute moves towards the nearest neighbour")
    s: PositiveFloat = Field(2.0, description="spread divisor: sd = |x_a - x'_a| / s")


class ControlTrain(Strict):
    """A control's own epochs and learning rate (e.g. chosen by its own search); unset: distill.train's."""

    epochs: PositiveInt | None = None
    lr: PositiveFloat | None = None


class SearchConfig(Strict):
    """Search of the distillation settings on the validation split (kd2deploy/distill/study.py, Optuna).

    On by default. Each list holds the candidates of one setting; empty = the pipeline's own value (not searched),
    except temperature, alpha and control_label_smoothing when the pipeline file leaves them unset: those are
    searched over ``study.UNSET_CANDIDATES`` (T 1/2/4, alpha 0.5/0.9, smoothing 0.05/0.1/0.2). The controls get the
    same budget for their own settings (label-smoothing strength, epochs, learning rate); a family with nothing to
    choose is not searched. Not run under ``--nproc`` (the settings as written are used, and the report says so).
    """

    enabled: bool = Field(True, description="search before training the students of the run (false: train with "
                          "the settings as written)")
    budget_s: PositiveFloat | None = Field(120.0, description="seconds per arm family (kd and each control)")
    trials: PositiveInt | None = Field(None, description="finished trials per arm family (with or instead of budget_s)")
    sampler: Literal["auto", "tpe", "grid"] = Field(
        "auto", description="auto: every combination when a family has at most 12, else TPE")
    seeds: Annotated[list[int], Field(min_length=1)] | None = Field(
        None, description="seeds of each trial (default: distill.seeds)")
    methods: list[str] = Field(default_factory=list, description="distillation losses, e.g. [hinton, dkd]")
    temperatures: list[PositiveFloat] = Field(default_factory=list)
    alphas: list[Fraction] = Field(default_factory=list)
    nontarget_weights: list[Annotated[float, Field(ge=0)]] = Field(default_factory=list, description="dkd")
    standardize_logits: list[bool] = Field(default_factory=list)
    hard_label_smoothing: list[Annotated[float, Field(ge=0, lt=1)]] = Field(default_factory=list)
    munge_passes: list[Annotated[int, Field(ge=0, le=10)]] = Field(default_factory=list)
    calibrate_teacher: list[bool] = Field(default_factory=list)
    epochs: list[PositiveInt] = Field(default_factory=list)
    lrs: list[PositiveFloat] = Field(default_factory=list)
    control_label_smoothing: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=list)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from kd2deploy.distill.losses import LOSSES

        return [LOSSES.check(name) for name in v]

    @model_validator(mode="after")
    def _some_budget(self) -> SearchConfig:
        if self.budget_s is None and self.trials is None:
            raise ValueError("search needs budget_s or trials")
        return self


class DistillConfig(Strict):
    """Hinton distillation of the student, and the controls it is compared with."""

    loss: str = Field("hinton", description="distillation loss name")
    temperature: PositiveFloat = 2.0
    alpha: Fraction = Field(0.5, description="weight of the soft-target term; 1 - alpha weighs hard labels")
    terms: list[TermConfig] = Field(
        default_factory=list,
        description="weighted loss terms (hint terms included); empty: the one term loss/temperature/alpha",
    )
    seeds: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [0])
    controls: list[Literal["scratch", "label_smoothing"]] = Field(
        default_factory=lambda: ["scratch"],
        description="students trained without the teacher, same init and budget",
    )
    control_label_smoothing: Annotated[float, Field(gt=0, lt=1)] = 0.1
    labelled_fraction: Fraction = Field(
        1.0, description="keep labels for this stratified, seeded fraction of the training split (0: none)"
    )
    teacher_labels: Literal["all", "labelled"] = Field(
        "all", description="what the teacher trains on with labelled_fraction < 1: every label, or the kept ones"
    )
    options: dict[str, float | bool] = Field(
        default_factory=dict, description="the loss's own settings, e.g. {nontarget_weight: 8} for dkd, "
        "{label_smoothing: 0.1, standardize_logits: true} for hinton (see distill/losses.py)")
    munge: MungeConfig = Field(default_factory=MungeConfig)
    calibrate_teacher: bool = Field(
        False, description="divide the teacher's logits by the temperature that calibrates it on validation")
    control_train: dict[Literal["scratch", "label_smoothing"], ControlTrain] = Field(
        default_factory=dict, description="a control's own epochs / lr (default: distill.train)")
    search: SearchConfig = Field(default_factory=SearchConfig)
    label_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=list, description="a label-efficiency study: KD and the controls at each fraction of the "
        "labels, the teacher trained on that fraction only (kd2deploy/distill/label_efficiency.py)")
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    teacher_store: TeacherStoreConfig = Field(default_factory=TeacherStoreConfig)
    train: StudentTrainConfig = Field(default_factory=lambda: StudentTrainConfig(epochs=120, lr=1e-2))

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        from kd2deploy.distill.losses import LOSSES

        return LOSSES.check(v)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _loss_options(self) -> DistillConfig:
        from kd2deploy.distill.losses import check_options

        try:
            check_options(self.loss, self.options)
        except ValueError as e:
            raise ValueError(f"options: {e}") from None
        return self

    @model_validator(mode="after")
    def _few_labels(self) -> DistillConfig:
        if self.labelled_fraction == 0 and self.controls:
            raise ValueError("labelled_fraction 0 leaves the controls no labels to learn from; set controls: []")
        if self.labelled_fraction == 0 and self.teacher_labels == "labelled":
            raise ValueError("teacher_labels 'labelled' with labelled_fraction 0 leaves the teacher no labels")
        return self


# ------------------------------------------------------------------------------------ export, bench
class ExportConfig(Strict):
    """ONNX export and the parity check that must pass before a file counts as exported."""

    opset: Annotated[int, Field(ge=13, le=23)] = 18
    dynamo: bool = Field(True, description="torch.onnx dynamo exporter (False: legacy TorchScript exporter)")
    atol: PositiveFloat = Field(1e-4, description="max abs difference of logits, PyTorch vs onnxruntime")
    min_argmax_agreement: Fraction = 1.0


class BenchmarkConfig(Strict):
    """Latency measurement: onnxruntime on the CPU, stated threads, warm-up, minimum window and run count."""

    backends: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["onnxruntime-cpu"])
    torch_baseline: bool = Field(True, description="also time the teacher in PyTorch eager (the 'before')")
    intra_op_threads: PositiveInt = 1
    inter_op_threads: PositiveInt = 1
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = Field(default_factory=lambda: [1, 32])
    warmup_s: Annotated[float, Field(ge=0)] = 0.2
    warmup_runs: Annotated[int, Field(ge=0)] = 10
    min_duration_s: PositiveFloat = 1.0
    min_runs: PositiveInt = 100
    max_window_s: PositiveFloat = Field(
        10.0, description="time budget of one window (warm-up included): a window stops when it has min_runs calls "
        "and min_duration_s, or when this budget is spent, whichever comes first; the result says which "
        "(window_short) — for slow models (a transformer at batch 32) the budget, not min_runs, ends the window")
    rounds: PositiveInt = 3
    renew_sessions: bool = Field(
        True, description="from round 2 on, time a freshly created session, so session-to-session variation "
        "shows in the confidence intervals"
    )
    required: bool = Field(False, description="a listed backend that is unavailable here is an error, not a skip")

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        from kd2deploy.bench.backends import BACKENDS

        return [BACKENDS.check(name) for name in v]


class TargetProfile(Strict):
    """Known power draw of the target device, measured elsewhere (an edge board's datasheet or meter)."""

    name: str
    cpu_power_w: PositiveFloat
    ram_power_w: Annotated[float, Field(ge=0)] = 0.0


class EnergyConfig(Strict):
    """CodeCarbon tracking of training stages and inference windows (offline, no network)."""

    enabled: bool = True
    country_iso_code: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USA"
    measure_power_secs: Annotated[float, Field(ge=1)] = 1.0
    tracking_mode: Literal["machine", "process"] = Field(
        "process", description="process: this process's CPU share (robust to other load); machine: the whole machine"
    )
    window_s: Annotated[float, Field(ge=1)] = Field(
        10.0, description="seconds per inference window (and per idle window); CodeCarbon samples power each "
        "measure_power_secs, so short windows hold few samples"
    )
    repeats: PositiveInt = 2
    batch_size: PositiveInt = 1
    idle_baseline: bool = True
    target: TargetProfile | None = None


class ReportConfig(Strict):
    """What the run writes for people and dashboards."""

    formats: list[Literal["html", "md"]] = Field(
        default_factory=lambda: ["md", "html"], description="results.json is always written"
    )
    max_accuracy_drop_pp: Annotated[float, Field(ge=0)] = Field(
        1.0, description="the verdict says 'do not ship' when the student loses more accuracy than this"
    )


TENSOR_SECTIONS = frozenset({"data", "teacher", "student", "distill"})  # the tensor task's own sections
TASK_SECTIONS = ("text", "causal_lm")  # sections that belong to one task each


class PipelineConfig(Strict):
    """A whole pipeline: data -> teacher -> student (KD + controls) -> export -> variants -> benchmark -> energy
    -> ship -> report."""

    version: Literal[1] = 1
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "pipeline"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    variants: VariantsConfig = Field(default_factory=VariantsConfig)
    ship: ShipPolicy = Field(default_factory=ShipPolicy)
    report: ReportConfig = Field(default_factory=ReportConfig)
    task: str = Field(
        "tensor", description="which task adapter runs the pipeline (kd2deploy/tasks/): tensor (the data / teacher / "
        "student / distill sections), text (Hugging Face text classification, its text section) or causal-lm (its "
        "causal_lm section)")
    text: TextConfig | None = Field(None, description="task: text only (see kd2deploy/tasks/text/config.py)")
    causal_lm: CausalLMConfig | None = Field(
        None, description="task: causal-lm only (see kd2deploy/tasks/causal_lm/config.py)")
    targets: list[TargetConfig] = Field(
        default_factory=list, description="edge devices benchmarked over SSH after the local benchmark "
        "(see kd2deploy/targets/config.py)")

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, v: list[TargetConfig]) -> list[TargetConfig]:
        names = [t.name for t in v]
        for n in names:
            if n == "local" or names.count(n) > 1:
                raise ValueError(f"target name {n!r} is " + ("reserved for this machine" if n == "local"
                                                              else "used twice") + "; names must be unique")
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from kd2deploy.tasks import TASKS

        return TASKS.check(v)

    @model_validator(mode="after")
    def _task_sections(self) -> PipelineConfig:
        """The task's own section is there; sections of other tasks, or tensor sections for a task with its own
        section, are errors naming the task; what the task cannot do is refused with its reason."""
        from kd2deploy.tasks import TASKS
        from kd2deploy.tasks.base import check_capabilities

        adapter = TASKS.get(self.task)
        section = adapter.capabilities.section
        for name in TASK_SECTIONS:
            if name != section and getattr(self, name) is not None:
                raise ValueError(f"a {name} section needs task: {name}; this pipeline's task is {self.task}")
        if section is not None:
            if getattr(self, section) is None:
                raise ValueError(f"task {self.task!r} needs a {section} section")
            stray = sorted(TENSOR_SECTIONS & self.model_fields_set)
            if stray:
                raise ValueError(f"{stray[0]}: does not apply to task {self.task}; its settings live in the "
                                 f"{section} section ({section}.{stray[0]})")
            if "variants" not in self.model_fields_set:  # default for transformers: dynamic INT8 and fusions
                from kd2deploy.export.variants import Int8DynamicSpec, TransformerFusionSpec, VariantsConfig

                self.__dict__["variants"] = VariantsConfig(
                    variants=[v for v in (Int8DynamicSpec(), TransformerFusionSpec())
                              if v.kind in adapter.capabilities.variant_kinds], apply_to=["student"])
        problems = check_capabilities(self, adapter.capabilities, self.task)
        if problems:
            raise ValueError(problems[0])
        return self

    @model_validator(mode="after")
    def _ship_batch_is_timed(self) -> PipelineConfig:
        if self.variants.variants and self.ship.batch_size not in self.benchmark.batch_sizes:
            raise ValueError(
                f"ship.batch_size {self.ship.batch_size} is not timed; allowed: one of benchmark.batch_sizes "
                f"{self.benchmark.batch_sizes}"
            )
        return self

    def resolved(self) -> dict[str, Any]:
        """The fully defaulted config as plain JSON-able data."""
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        """sha256 of the resolved config, canonical JSON."""
        blob = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


# ------------------------------------------------------------------------------------------ loading
def _marks(node: yaml.Node, path: tuple = (), seen: set[int] | None = None) -> dict[tuple, yaml.Mark]:
    """Maps every key path of a composed YAML document to the position of its value (or its key).

    A node reached again through an alias (``*name``) is not walked twice, so a recursive alias cannot loop and
    nested aliases cannot blow up; its inner keys point at the anchor.
    """
    seen = set() if seen is None else seen
    out: dict[tuple, yaml.Mark] = {path: node.start_mark}
    if id(node) in seen:
        return out
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a list or mapping as a key: safe_load rejects it
            key = key_node.value
            out[path + (key,)] = value_node.start_mark
            out[path + (key, "__key__")] = key_node.start_mark
            inner = _marks(value_node, path + (key,), seen)
            out.update({k: v for k, v in inner.items() if k != path + (key,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.update(_marks(item, path + (i,), seen))
    return out


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur: Any = data
    for k in keys[:-1]:
        if isinstance(cur, list) and k.isdigit():
            if int(k) >= len(cur):
                raise ConfigError(f"--set {dotted}: index {k} is past the end of a list of {len(cur)} item(s)")
            cur = cur[int(k)]
            continue
        if not isinstance(cur, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is inside a value that is not a mapping")
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        cur = nxt
    last = keys[-1]
    if isinstance(cur, list) and last.isdigit() and int(last) < len(cur):
        cur[int(last)] = value
    elif isinstance(cur, dict):
        cur[last] = value
    else:
        raise ConfigError(f"--set {dotted}: cannot set {last!r} here")


def parse_override(item: str) -> tuple[str, Any]:
    """``'distill.temperature=2'`` -> ``('distill.temperature', 2.0)``; the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. distill.temperature=2")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise ConfigError(f"--set {item!r}: {key!r} is not a key path like distill.temperature")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(e)[1]})") from None
    return key, value


def _yaml_problem(e: BaseException) -> tuple[Any, str]:
    """(position or None, one-line problem) of an error raised while reading YAML."""
    if isinstance(e, RecursionError):
        return None, "the document is nested too deeply"
    if not isinstance(e, yaml.YAMLError):  # a scalar the constructor cannot convert (2024-13-45, 5000 digits)
        return None, f"a value cannot be read ({str(e).split(';')[0]})"
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.reader.ReaderError):
        return None, f"{str(e).splitlines()[0]} (character {e.position + 1})"
    return mark, getattr(e, "problem", None) or str(e).splitlines()[0]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field annotation (through Optional, list, Annotated and unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _walk(loc: tuple) -> tuple[tuple, list[type[BaseModel]]]:
    """A pydantic error location without union tags, and the model(s) that own its last key.

    pydantic puts the tag of a discriminated union into the location (``variants.variants.0.int8-static.x``);
    the user wrote ``variants.variants.0.x``.
    """
    models: list[type[BaseModel]] = [PipelineConfig]
    owners = models
    clean: list = []
    for part in loc:
        if isinstance(part, int):
            clean.append(part)
            continue
        tags = {m.model_fields["kind"].default: m for m in models if "kind" in m.model_fields}
        if len(models) > 1 and part in tags:
            models = [tags[part]]
            continue
        clean.append(part)
        owners = models
        models = [c for m in models if part in m.model_fields for c in _models_in(m.model_fields[part].annotation)]
    return tuple(clean), owners


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 2


def _short(value: Any) -> str:
    """``repr`` cut to a readable length (a bad value can be a 5000-character string or a deep structure)."""
    return _REPR.repr(value)


def _describe(err: dict) -> str:
    loc, owners = _walk(err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = sorted(owners[0].model_fields) if len(owners) == 1 else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = f"unknown key {loc[-1]!r}"
        if hint:
            msg += f" (did you mean {hint[0]!r}?)"
        return msg + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"kind {ctx.get('tag')!r} is not allowed; allowed: {ctx.get('expected_tags')}"
    if err["type"] in {"literal_error", "enum"}:
        return f"{_short(err['input'])} is not allowed; {msg.replace('Input should be', 'allowed:')}"
    if (
        "input" in err
        and not isinstance(err["input"], dict | list)
        and err["type"] != "missing"
        and str(err["input"]) not in msg
    ):
        return f"{msg} (got {_short(err['input'])})"
    return msg


def format_validation_error(
    exc: ValidationError, source: str, marks: dict[tuple, yaml.Mark], overrides: dict[str, Any]
) -> str:
    """One line for the root cause (the first error in file order), plus a count of the rest."""
    errors = exc.errors()

    def position(err: dict) -> tuple[int, int, str]:
        loc = tuple(p for p in _walk(err["loc"])[0] if not (isinstance(p, str) and p.endswith("]")))
        dotted = ".".join(str(p) for p in loc)
        if not loc:  # a rule across sections: the message names the keys
            return (0, 0, source)
        for key in overrides:
            if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
                return (-1, 0, f"--set {key}={overrides[key]!r}: {dotted}")
        use = loc + ("__key__",) if err["type"] == "extra_forbidden" else loc
        while use and use not in marks:
            use = use[:-1]
        mark = marks.get(use) or marks.get(())
        if mark is None:
            return (0, 0, f"{source} {dotted}")
        return (mark.line, mark.column, f"{source}:{mark.line + 1}:{mark.column + 1} {dotted}")

    ordered = sorted(errors, key=lambda e: position(e)[:2])
    first = ordered[0]
    msg = f"{position(first)[2]}: {_describe(first)}"
    if len(ordered) > 1:
        msg += f"  (and {len(ordered) - 1} more error{'s' if len(ordered) > 2 else ''})"
    return msg


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Reads, validates and defaults a pipeline file.

    Args:
        path: the YAML pipeline file.
        overrides: ``key.path=value`` strings applied on top (``--set`` on the command line).

    Raises:
        ConfigError: with a one-line message naming the file, line, column, key path and what is allowed.
    """
    try:
        return _load_config(Path(path), overrides)
    except ConfigError as e:  # a file name or value with a line break must not break the one-line rule
        raise ConfigError(str(e).replace("\r", "\\r").replace("\n", "\\n")) from None


def _first_non_finite(data: Any, path: tuple = (), seen: set[int] | None = None) -> tuple[tuple, float] | None:
    """The key path and value of the first NaN or infinite number in a loaded document, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return path, data
    seen = set() if seen is None else seen
    if not isinstance(data, dict | list) or id(data) in seen:  # an alias seen before (maybe recursive)
        return None
    seen.add(id(data))
    for k, v in data.items() if isinstance(data, dict) else enumerate(data):
        found = _first_non_finite(v, path + (k,), seen)
        if found:
            return found
    return None


def _load_config(path: Path, overrides: list[str] | None) -> PipelineConfig:
    source = str(path)
    try:
        is_file = path.is_file()
    except OSError as e:  # e.g. a name too long for the file system
        raise ConfigError(f"{source}: cannot open the pipeline file ({e.strerror})") from None
    if not is_file:
        raise ConfigError(f"{source}: pipeline file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read the pipeline file ({e})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as e:
        mark, problem = _yaml_problem(e)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a pipeline file must be a mapping of sections, got {type(data).__name__}")
    marks = _marks(node) if node is not None else {}
    applied: dict[str, Any] = {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(data, key, value)
        applied[key] = value
    if "name" not in data:
        data["name"] = re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem) or "pipeline"
    bad = _first_non_finite(data)
    if bad:
        dotted = ".".join(str(k) for k in bad[0])
        key = next((k for k in applied if dotted == k or dotted.startswith(k + ".")), None)
        mark = next((marks[bad[0][:n]] for n in range(len(bad[0]), 0, -1) if bad[0][:n] in marks), None)
        where = (f"--set {key}={applied[key]!r}:" if key else
                 f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source)
        raise ConfigError(f"{where} {dotted}: {bad[1]} is not allowed; numbers must be finite")
    try:
        return PipelineConfig.model_validate(data, context={"base_dir": str(path.parent.resolve())})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, marks, applied)) from None
    except ConfigError as e:
        # a registry miss raised inside a validator that pydantic did not wrap
        raise ConfigError(f"{source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: a value refers to itself (a recursive YAML alias)") from None
