"""The ``causal_lm`` section of a pipeline file (``task: causal-lm``): distil a causal language model token by token.

Every default of the task lives here (unknown keys are errors). Paths are a normal path (relative to the
pipeline file) or ``package:NAME/relative/path`` inside an installed package (see
:func:`kd2deploy.tasks.hf_common.resolve_location`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from kd2deploy.strict import Fraction, PositiveFloat, PositiveInt, Strict
from kd2deploy.tasks.hf_common import Schedule, StudentShape, check_location


class LMTrainConfig(Schedule):
    """A training schedule (AdamW, linear warm-up then linear decay) over packed sequences."""

    epochs: PositiveInt = 2
    batch_size: PositiveInt = 8
    lr: PositiveFloat = 3e-4
    threads: PositiveInt = Field(1, description="torch threads while training (1: fastest under CPU contention)")


class LMDataConfig(Strict):
    """Text to train on: plain text file(s), JSONL with a text field, or JSONL prompt/response pairs."""

    path: str = Field(..., description=".txt file, folder of text files (recursive), or .jsonl; "
                      "a path or package:NAME/relative/path")
    format: Literal["auto", "text", "jsonl", "pairs"] = Field(
        "auto", description="auto: folder or .txt -> text; .jsonl with prompt+response fields -> pairs, else jsonl")
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    chat_template: bool = Field(True, description="pairs: wrap prompts in the tokenizer's chat template")
    max_seq_len: Annotated[int, Field(ge=8, le=8192)] = Field(128, description="tokens per packed sequence")
    max_documents: PositiveInt | None = Field(None, description="use at most this many documents (seeded choice)")
    max_train_sequences: PositiveInt | None = Field(None, description="cap on packed training sequences")
    max_eval_sequences: PositiveInt = Field(64, description="cap on packed validation and test sequences each")
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    split_seed: int = Field(0, description="documents are split train/val/test by this seed")
    transfer: Literal["data", "teacher-generated"] = Field(
        "data", description="data: train on the text as given; teacher-generated: sequence-level KD, the "
        "teacher's greedy responses to the prompts (or document openings), generated once and stored")
    transfer_prompt_tokens: PositiveInt = Field(32, description="teacher-generated on plain text: opening length")
    transfer_new_tokens: PositiveInt = Field(64, description="teacher-generated: new tokens per response")

    _check_path = field_validator("path")(check_location)


class LMTeacherConfig(Strict):
    """A local Hugging Face causal-LM folder, or a GGUF file (loaded by transformers with ``gguf_file=``)."""

    model: str = Field(..., description="HF folder or .gguf file; a path or package:NAME/relative/path")

    _check_model = field_validator("model")(check_location)


class LMStudentConfig(StudentShape):
    """The teacher's family with fewer (optionally narrower) layers."""

    num_layers: PositiveInt = 4
    intermediate_size: PositiveInt | None = Field(None, description="default: the teacher's (or 4 x hidden)")
    num_key_value_heads: PositiveInt | None = Field(None, description="default: the teacher's (Llama family)")
    init: Literal["teacher-layers", "random"] = Field(
        "teacher-layers", description="teacher-layers: embeddings, final norm and a uniform subset of the "
        "teacher's layers (DistilGPT-2 / Minitron style; needs the teacher's widths); random: fresh weights")


class LMDistillConfig(Strict):
    """Token-level distillation and the cross-entropy control."""

    loss: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"] = "forward_kl"
    temperature: PositiveFloat = 1.0
    beta: Annotated[float, Field(gt=0, lt=1)] = Field(0.5, description="jsd: generalised JSD's beta")
    skew: Annotated[float, Field(gt=0, lt=1)] = Field(0.1, description="skew_kl: DistiLLM's skew alpha")
    alpha: Fraction = Field(0.5, description="weight of the distillation term; 1 - alpha weighs next-token CE")
    on_policy_fraction: Fraction = Field(
        0.0, description="lambda: share of steps where the student generates the continuation and the teacher "
        "scores it (GKD); those steps run the teacher live")
    on_policy_new_tokens: PositiveInt = 16
    top_k: PositiveInt | None = Field(64, description="teacher-output store keeps the top-k logits per token "
                                      "(null: full vocabulary; large)")
    seeds: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [0, 1, 2])
    freeze_embeddings: bool = Field(
        False, description="keep the token embeddings and LM head (tied in most small LMs) at their initial "
        "weights: a sixth less compute per step and fewer weights to overfit a small transfer set")
    control: bool = Field(True, description="train the same student on plain next-token CE, same seeds")
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)


class LMEvalConfig(Strict):
    """Perplexity, agreement with the teacher, and ROUGE-L of greedy continuations of held prompts."""

    prompts: PositiveInt = Field(16, description="held test prompts (document openings) continued greedily")
    prompt_tokens: PositiveInt = 32
    new_tokens: PositiveInt = 32
    max_perplexity_ratio: Annotated[float, Field(ge=1)] = Field(
        1.1, description="verdict: the shipped student replaces the teacher when the upper end of the 95 % interval "
        "of its test perplexity over the teacher's is at most this ratio")


class LMExportConfig(Strict):
    """ONNX with the KV cache (optimum ``text-generation-with-past``) and the parity check."""

    parity_sequences: PositiveInt = Field(4, description="real test sequences compared PyTorch vs ONNX")
    parity_new_tokens: PositiveInt = Field(16, description="greedy tokens compared per sequence")
    atol: PositiveFloat = Field(1e-3, description="max |delta logit| allowed, PyTorch vs onnxruntime")
    teacher: bool = Field(True, description="export the teacher too (the ONNX teacher is the benchmark baseline)")
    int8_dynamic: bool = Field(True, description="make an int8-dynamic student (onnxruntime.quantization)")
    int4_weight_only: bool = Field(True, description="make a weight-only int4 student (onnxruntime MatMulNBits, "
                                   "4-bit weight blocks, float activations; runs on the CPU provider)")
    int4_block_size: Annotated[int, Field(ge=16)] = Field(32, description="int4: weights per quantisation block "
                                                          "(a power of two)")
    max_perplexity_increase: Annotated[float, Field(ge=0)] = Field(
        0.02, description="guard: a variant ships if its validation perplexity is within this fraction of "
        "FP32's and it is faster beyond noise")
    min_speedup: Annotated[float, Field(ge=1)] = Field(1.05, description="guard: lower CI end of the speed-up")

    @field_validator("int4_block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"{v} is not a power of two; allowed: 16, 32, 64, 128, 256")
        return v


class LMBenchConfig(Strict):
    """Generation latency: time to first token, per-token decode latency, interleaved rounds."""

    prompt_tokens: PositiveInt = Field(32, description="P: prompt length for time to first token")
    decode_tokens: PositiveInt = Field(32, description="decode steps timed per round")
    rounds: PositiveInt = Field(6, description="interleaved rounds (model order rotates each round)")
    warmup_rounds: Annotated[int, Field(ge=0)] = 1
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = Field(default_factory=lambda: [1])
    threads: PositiveInt = 1
    teacher_eager: bool = Field(True, description="time the teacher in PyTorch eager too")
    memory: bool = Field(True, description="peak RSS of each ONNX model generating, in a fresh process")
    bootstrap: PositiveInt = 1000


class CausalLMConfig(Strict):
    """``task: causal-lm``: distil a causal LM, ship it as ONNX with a KV cache and its tokenizer."""

    data: LMDataConfig
    teacher: LMTeacherConfig
    student: LMStudentConfig = Field(default_factory=LMStudentConfig)
    distill: LMDistillConfig = Field(default_factory=LMDistillConfig)
    eval: LMEvalConfig = Field(default_factory=LMEvalConfig)
    export: LMExportConfig = Field(default_factory=LMExportConfig)
    bench: LMBenchConfig = Field(default_factory=LMBenchConfig)

    @model_validator(mode="after")
    def _lengths(self) -> CausalLMConfig:
        if self.eval.prompt_tokens + self.eval.new_tokens > self.data.max_seq_len:
            raise ValueError(f"eval.prompt_tokens + eval.new_tokens ({self.eval.prompt_tokens} + "
                             f"{self.eval.new_tokens}) exceed data.max_seq_len {self.data.max_seq_len}; "
                             "allowed: a sum up to max_seq_len")
        return self
