"""The pipeline file: one pydantic schema holding every default, and a loader whose errors point at the cause.

A pipeline file is YAML (read with ``yaml.safe_load`` only). Unknown keys are errors; a bad value is reported as
``pipelines/edge.yaml:23:5 benchmark.batch_sizes.0: Input should be greater than 0`` before any work starts.
Relative paths in the file are resolved against the folder that holds the pipeline file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kd2deploy.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _existing_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Resolves ``value`` against the pipeline file's folder and checks that it exists."""
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    path = value if value.is_absolute() else (base / value)
    if not path.exists():
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
class TrainConfig(Strict):
    """One training run's budget and optimiser."""

    epochs: PositiveInt = 30
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0


def _check_arch(v: str, info: ValidationInfo) -> str:
    from kd2deploy.models import MODELS, split_file_spec

    spec = split_file_spec(v)
    if spec is None:
        return MODELS.check(v)
    file, fn = spec
    path = _existing_path(Path(file), info)
    return f"{path}:{fn}"


class TeacherConfig(Strict):
    """The big model: trained here on the data, or loaded from a checkpoint (a state_dict)."""

    arch: str = Field("cnn-large", description="zoo name, or path/to/file.py:function (runs your code)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder")
    checkpoint: Path | None = Field(None, description="state_dict saved with torch.save; skips training")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=40, lr=3e-3))

    _check_arch = field_validator("arch")(_check_arch)
    _check_checkpoint = field_validator("checkpoint")(_existing_path)


class StudentConfig(Strict):
    """The small model that ships."""

    arch: str = Field("cnn-tiny", description="zoo name, or path/to/file.py:function (runs your code)")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    _check_arch = field_validator("arch")(_check_arch)


class DistillConfig(Strict):
    """Hinton distillation of the student, and the controls it is compared with."""

    loss: str = Field("hinton", description="distillation loss name")
    temperature: PositiveFloat = 4.0
    alpha: Fraction = Field(0.9, description="weight of the soft-target term; 1 - alpha weighs hard labels")
    seeds: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [0])
    controls: list[Literal["scratch", "label_smoothing"]] = Field(
        default_factory=lambda: ["scratch"],
        description="students trained without the teacher, same init and budget",
    )
    control_label_smoothing: Annotated[float, Field(gt=0, lt=1)] = 0.1
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=200, lr=1e-2))

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
    rounds: PositiveInt = 3
    required: bool = Field(False, description="a listed backend that is unavailable here is an error, not a skip")

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        from kd2deploy.bench.backends import BACKENDS

        for name in v:
            BACKENDS.check(name)
        return v


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
    window_s: Annotated[float, Field(ge=1)] = 3.0
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


class PipelineConfig(Strict):
    """A whole pipeline: data -> teacher -> student (KD + controls) -> export -> benchmark -> energy -> report."""

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
    report: ReportConfig = Field(default_factory=ReportConfig)

    def resolved(self) -> dict[str, Any]:
        """The fully defaulted config as plain JSON-able data."""
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        """sha256 of the resolved config, canonical JSON."""
        blob = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


# ------------------------------------------------------------------------------------------ loading
def _marks(node: yaml.Node, path: tuple = ()) -> dict[tuple, yaml.Mark]:
    """Maps every key path of a composed YAML document to the position of its value (or its key)."""
    out: dict[tuple, yaml.Mark] = {path: node.start_mark}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = value_node.start_mark
            out[path + (key, "__key__")] = key_node.start_mark
            out.update({k: v for k, v in _marks(value_node, path + (key,)).items() if k != path + (key,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.update(_marks(item, path + (i,)))
    return out


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur: Any = data
    for k in keys[:-1]:
        if isinstance(cur, list) and k.isdigit():
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
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e.problem})") from None
    return key, value


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that the location's last key belongs to (for listing allowed keys)."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _describe(err: dict) -> str:
    loc = err["loc"]
    if err["type"] == "extra_forbidden":
        model = _model_at(loc)
        allowed = sorted(model.model_fields) if model else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = f"unknown key {loc[-1]!r}"
        if hint:
            msg += f" (did you mean {hint[0]!r}?)"
        return msg + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in {"literal_error", "enum"}:
        return f"{err['input']!r} is not allowed; {msg.replace('Input should be', 'allowed:')}"
    if (
        "input" in err
        and not isinstance(err["input"], dict | list)
        and err["type"] != "missing"
        and str(err["input"]) not in msg
    ):
        return f"{msg} (got {err['input']!r})"
    return msg


def format_validation_error(
    exc: ValidationError, source: str, marks: dict[tuple, yaml.Mark], overrides: dict[str, Any]
) -> str:
    """One line for the root cause (the first error in file order), plus a count of the rest."""
    errors = exc.errors()

    def position(err: dict) -> tuple[int, int, str]:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.endswith("]")))
        dotted = ".".join(str(p) for p in loc)
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
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: pipeline file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read the pipeline file ({e})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
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
    try:
        return PipelineConfig.model_validate(data, context={"base_dir": str(path.parent.resolve())})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, marks, applied)) from None
    except ConfigError as e:
        # a registry miss raised inside a validator that pydantic did not wrap
        raise ConfigError(f"{source}: {e}") from None
