"""Teacher from a local Hugging Face folder; student as a smaller configuration of the same family."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError, StageError

log = logging.getLogger("kd2deploy")


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer (0-based) matched to each student layer: every (L/n)-th, ending at the last (TinyBERT's
    g(m) = m * L / n). Used both to initialise the student from teacher layers and for the hidden/attention
    losses. ``uniform_layer_map(6, 2) == [2, 5]``, ``uniform_layer_map(6, 3) == [1, 3, 5]``."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError("layer counts must be >= 1")
    if student_layers > teacher_layers:
        raise ValueError(f"student has {student_layers} layers, more than the teacher's {teacher_layers}")
    return [(j + 1) * teacher_layers // student_layers - 1 for j in range(student_layers)]


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except Exception as e:  # noqa: BLE001 - many possible causes inside transformers
        raise ConfigError(f"{folder}: text.teacher.model: cannot load a tokenizer ({type(e).__name__}: {e})") from e
    if not tok.is_fast:
        raise ConfigError(f"{folder}: text.teacher.model needs a fast tokenizer (tokenizer.json) for export")
    return tok


def load_teacher(folder: Path, labels: list[str], fine_tune: str) -> tuple[Any, bool, str]:
    """Loads a sequence classifier from ``folder``; returns (model, needs fine-tuning, why).

    An encoder-only folder (no classification head in the weights) gets a fresh head for ``labels``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{folder}: text.teacher.model is not a Hugging Face model folder "
                          f"(config.json: {type(e).__name__}: {e})") from e
    id2label = dict(enumerate(labels))
    has_labels = getattr(config, "id2label", None) and [config.id2label[i] for i in sorted(config.id2label)] == labels
    kwargs = dict(num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
                  attn_implementation="eager", local_files_only=True)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(folder), output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{folder}: text.teacher.model: cannot load as a sequence classifier "
                          f"({type(e).__name__}: {e})") from e
    new_head = bool(info.get("missing_keys")) or bool(info.get("mismatched_keys"))
    if fine_tune == "always":
        return model, True, "text.teacher.fine_tune: always"
    if fine_tune == "never":
        if new_head:
            raise ConfigError(f"{folder}: text.teacher.fine_tune is 'never' but the folder has no classification "
                              f"head for these {len(labels)} labels ({', '.join(labels)}); allowed: auto, always")
        return model, False, "the folder holds a classification head"
    if new_head:
        return model, True, "the folder holds only an encoder: a classification head is fine-tuned first"
    if not has_labels:
        log.info("teacher head labels differ in names from the data's; using the data's sorted labels")
    return model, False, "the folder holds a classification head for these labels"


def encoder_layers(model) -> tuple[str, Any]:
    """The dotted name and ModuleList of a model's transformer layers (BERT-like or DistilBERT-like)."""
    from kd2deploy.tasks.hf_common import find_layers

    found = find_layers(model.base_model, ("encoder.layer", "transformer.layer", "encoder.layers"))
    if found is not None:
        return f"{model.base_model_prefix}.{found[0]}", found[1]
    raise StageError(f"{type(model).__name__}: cannot find its transformer layers; supported: BERT-like "
                     "(encoder.layer) and DistilBERT-like (transformer.layer) models")


def _layers_key(config) -> str:
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(config, key):
            return key
    raise StageError(f"{type(config).__name__}: no layer-count field (num_hidden_layers / n_layers)")


def build_student(teacher, cfg) -> tuple[Any, dict[str, Any]]:
    """A smaller configuration of the teacher's family (``cfg``: TextStudentConfig) and how it was made."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from kd2deploy.tasks.hf_common import fewer_layers

    tc = teacher.config
    key = _layers_key(tc)
    t_layers = getattr(tc, key)
    sc = fewer_layers(tc, key, cfg.num_layers, "text.student")
    t_width = getattr(tc, "hidden_size", None)
    width = cfg.hidden_size or t_width
    heads = cfg.num_attention_heads or getattr(tc, "num_attention_heads", None)
    if width != t_width:
        sc.hidden_size = width
        sc.intermediate_size = cfg.intermediate_size or 4 * width
    elif cfg.intermediate_size:
        sc.intermediate_size = cfg.intermediate_size
    if heads is not None:
        if width % heads:
            raise ConfigError(f"text.student: hidden_size {width} is not divisible by num_attention_heads {heads}")
        sc.num_attention_heads = heads
    narrower = width != t_width or sc.intermediate_size != tc.intermediate_size or heads != tc.num_attention_heads
    if cfg.init == "teacher-layers" and narrower:
        raise ConfigError("text.student.init 'teacher-layers' copies teacher weights, so the student needs the "
                          f"teacher's widths (hidden {t_width}, intermediate {tc.intermediate_size}, heads "
                          f"{tc.num_attention_heads}); allowed: init: random for a narrower student")
    sc._attn_implementation = "eager"
    student = AutoModelForSequenceClassification.from_config(sc, attn_implementation="eager")
    mapping = uniform_layer_map(t_layers, cfg.num_layers)
    info: dict[str, Any] = {"num_layers": cfg.num_layers, "hidden_size": width, "init": cfg.init,
                            "layer_map": mapping, "teacher_layers": t_layers}
    if cfg.init == "teacher-layers":
        from kd2deploy.tasks.hf_common import init_from_teacher_layers

        init_from_teacher_layers(student, teacher.state_dict(), encoder_layers(teacher)[0], mapping)
        info["init_from_teacher_layers"] = mapping
    with torch.no_grad():
        info["params"] = sum(p.numel() for p in student.parameters())
    return student, info
