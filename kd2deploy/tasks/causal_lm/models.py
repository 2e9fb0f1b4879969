"""Teacher from a local Hugging Face causal-LM folder or a GGUF file; student as a shallower (optionally narrower)
model of the teacher's family, initialised from a uniform subset of the teacher's layers or at random."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError, StageError

# (layer-count, width, ffn width, heads, kv heads) field names per config family; the first that fits is used.
_FIELDS = (
    ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"),
    ("n_layer", "n_embd", "n_inner", "n_head", None),
)
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def lm_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers copied into the student: evenly spaced, always the first and the last (for a causal LM the
    first layer turns embeddings into features the rest rely on). ``lm_layer_map(30, 8) == [0, 4, 8, 12, 17, 21,
    25, 29]``; ``lm_layer_map(4, 1) == [3]``."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError("layer counts must be >= 1")
    if student_layers > teacher_layers:
        raise ValueError(f"student has {student_layers} layers, more than the teacher's {teacher_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [round(j * step) for j in range(student_layers)]


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def source_of(path: Path) -> tuple[str, str | None]:
    """(folder, gguf file name or None) for a teacher location."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ConfigError(f"{path}: causal_lm.teacher.model must be a Hugging Face folder or a .gguf file")
        return str(path.parent), path.name
    return str(path), None


def _need_gguf(path: Path) -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{path}: reading a GGUF file needs the {' and '.join(missing)} package(s): "
                          "pip install 'kd2deploy[lm]' (gguf, accelerate)")


def check_causal_lm_folder(folder: str) -> Any:
    """The folder's config, or a one-line error when it is not a Hugging Face causal-LM folder."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (Path(folder) / "config.json").is_file():
        raise ConfigError(f"{folder}: causal_lm.teacher.model is not a Hugging Face model folder (no config.json) "
                          "and not a .gguf file")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - many causes inside transformers
        raise ConfigError(f"{folder}: config.json unreadable ({type(e).__name__}: {str(e)[:200]})") from e
    archs = [a for a in (getattr(config, "architectures", None) or [])]
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
            archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)):
        raise ConfigError(f"{folder}: not a causal language model (model_type {config.model_type!r}, "
                          f"architectures {archs or 'none'}); causal-lm needs e.g. LlamaForCausalLM or "
                          "GPT2LMHeadModel")
    return config


def load_tokenizer(location: Path):
    """The teacher's fast tokenizer (from the folder or the GGUF file), with a pad token set."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    folder, gguf = source_of(location)
    if gguf:
        _need_gguf(location)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, local_files_only=True) if gguf else \
            AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{location}: cannot load a tokenizer ({type(e).__name__}: {str(e)[:200]})") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_teacher(location: Path) -> tuple[Any, dict[str, Any]]:
    """The teacher in float32 eval mode, and facts about it."""
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    folder, gguf = source_of(location)
    if gguf:
        _need_gguf(location)
        import io
        from contextlib import redirect_stderr

        try:
            with redirect_stderr(io.StringIO()):  # the GGUF reader's own tqdm bar (272 lines in a log)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32,
                                                             local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{location}: the installed transformers / gguf cannot read this GGUF file "
                              f"({type(e).__name__}: {str(e)[:200]}); try a newer gguf "
                              "(pip install -U gguf) or convert it to a Hugging Face folder") from e
    else:
        check_causal_lm_folder(folder)
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{folder}: cannot load as a causal LM ({type(e).__name__}: {str(e)[:200]})") from e
    model.eval()
    return model, facts(model)


def context_length(config) -> int | None:
    for k in ("max_position_embeddings", "n_positions", "n_ctx"):
        if getattr(config, k, None):
            return int(getattr(config, k))
    return None


def check_context(config, max_seq_len: int, where: str = "causal_lm.data.max_seq_len") -> None:
    ctx = context_length(config)
    if ctx is not None and max_seq_len > ctx:
        raise ConfigError(f"{where} {max_seq_len} exceeds the model's context of {ctx} tokens; allowed: up to {ctx}")


def _fields(config) -> tuple[str, ...]:
    for f in _FIELDS:
        if all(hasattr(config, k) for k in f[:4]):  # GPT-2 maps num_hidden_layers/hidden_size, not the FFN width
            return f
    raise StageError(f"{type(config).__name__}: no known layer-count / width fields (Llama or GPT-2 style)")


def decoder_layers(model) -> tuple[str, Any]:
    """The dotted name and ModuleList of a causal LM's transformer blocks."""
    from kd2deploy.tasks.hf_common import find_layers

    found = find_layers(model, _LAYER_PATHS)
    if found is not None:
        return found
    raise StageError(f"{type(model).__name__}: cannot find its transformer blocks; supported: "
                     + ", ".join(_LAYER_PATHS))


def facts(model) -> dict[str, Any]:
    c = model.config
    f = _fields(c)
    return {"architecture": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "layers": getattr(c, f[0]), "hidden_size": getattr(c, f[1]), "vocab_size": c.vocab_size,
            "context": context_length(c)}


def build_student(teacher, cfg, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A smaller model of the teacher's family (``cfg``: LMStudentConfig) and how it was made.

    ``teacher-layers`` copies the embeddings, the final norm, the LM head and the teacher layers of
    :func:`lm_layer_map`; ``random`` draws fresh weights with ``seed``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from kd2deploy.tasks.hf_common import fewer_layers

    tc = teacher.config
    n_key, w_key, ffn_key, h_key, kv_key = _fields(tc)
    t_layers = getattr(tc, n_key)
    sc = fewer_layers(tc, n_key, cfg.num_layers, "causal_lm.student")
    changed = []
    for want, key in ((cfg.hidden_size, w_key), (cfg.intermediate_size, ffn_key), (cfg.num_attention_heads, h_key),
                      (cfg.num_key_value_heads, kv_key)):
        if want is not None and key is not None and want != getattr(tc, key, None):
            setattr(sc, key, want)
            changed.append(key)
    if cfg.hidden_size is not None and cfg.intermediate_size is None and ffn_key in ("intermediate_size",) \
            and cfg.hidden_size != getattr(tc, w_key):
        setattr(sc, ffn_key, 4 * cfg.hidden_size if kv_key is None else
                int(getattr(tc, ffn_key) * cfg.hidden_size / getattr(tc, w_key)))
        changed.append(ffn_key)
    width, heads = getattr(sc, w_key), getattr(sc, h_key)
    if width % heads:
        raise ConfigError(f"causal_lm.student: hidden_size {width} is not divisible by num_attention_heads {heads}")
    if kv_key and getattr(sc, kv_key, None) and heads % getattr(sc, kv_key):
        raise ConfigError(f"causal_lm.student: num_attention_heads {heads} is not a multiple of "
                          f"num_key_value_heads {getattr(sc, kv_key)}")
    if (w_key in changed or h_key in changed) and getattr(sc, "head_dim", None):
        sc.head_dim = width // heads
    if cfg.init == "teacher-layers" and changed:
        raise ConfigError("causal_lm.student.init 'teacher-layers' copies teacher weights, so the student needs "
                          f"the teacher's widths ({', '.join(changed)} differ); allowed: init: random")
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(sc, dtype=torch.float32)
    mapping = lm_layer_map(t_layers, cfg.num_layers)
    info: dict[str, Any] = {"num_layers": cfg.num_layers, "hidden_size": width, "init": cfg.init,
                            "teacher_layers": t_layers, "changed": changed}
    if cfg.init == "teacher-layers":
        from kd2deploy.tasks.hf_common import init_from_teacher_layers

        init_from_teacher_layers(student, teacher.state_dict(), decoder_layers(teacher)[0], mapping,
                                 ignore_missing=("rotary_emb.inv_freq",))
        student.tie_weights()
        info["init_from_teacher_layers"] = mapping
    info.update(facts(student))
    return student, info
