"""Pieces the Hugging Face tasks (text, causal-lm) share: model and data locations, JSONL records, the student's
shape settings and a student made of teacher layers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo

from kd2deploy.errors import ConfigError, StageError
from kd2deploy.strict import PositiveFloat, PositiveInt, Strict

PACKAGE_PREFIX = "package:"


def resolve_location(value: str, base_dir: str | Path = ".") -> Path:
    """A path, or ``package:NAME/relative/path`` inside an installed package, as an existing absolute path.

    Raises:
        ValueError: naming what was looked for and where.
    """
    if value.startswith(PACKAGE_PREFIX):
        import importlib.util

        spec = value[len(PACKAGE_PREFIX):].strip("/")
        name, _, rel = spec.partition("/")
        if not name:
            raise ValueError(f"{value!r}: expected package:NAME/relative/path")
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            raise ValueError(f"{value!r}: package {name!r} is not installed (pip install it, or give a path)")
        root = Path(next(iter(found.submodule_search_locations)))
        path = root / rel if rel else root
        if not path.exists():
            raise ValueError(f"{value!r}: {rel!r} not found inside package {name!r} ({root})")
        return path.resolve()
    path = Path(value)
    path = path if path.is_absolute() else Path(base_dir) / path
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    return path.resolve()


def check_location(v: str, info: ValidationInfo) -> str:
    """Checks that a location exists; a path becomes absolute, ``package:`` stays as written (portable)."""
    path = resolve_location(v, (info.context or {}).get("base_dir", "."))
    return v if v.startswith(PACKAGE_PREFIX) else str(path)


class Schedule(Strict):
    """A training schedule: AdamW, linear warm-up then linear decay, gradient clipping."""

    epochs: PositiveInt = 3
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 5e-5
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    max_grad_norm: PositiveFloat = 1.0


class StudentShape(Strict):
    """The student's shape: the teacher's family with fewer (optionally narrower) layers."""

    num_layers: PositiveInt = 2
    hidden_size: PositiveInt | None = Field(None, description="default: the teacher's width")
    intermediate_size: PositiveInt | None = Field(None, description="default: 4 x hidden_size, or the teacher's")
    num_attention_heads: PositiveInt | None = Field(None, description="default: the teacher's")
    init: Literal["teacher-layers", "random"] = Field(
        "teacher-layers", description="teacher-layers: a uniform subset of the teacher's layers (needs the "
        "teacher's widths); random: fresh weights")


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; one clear line for a bad one."""
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ConfigError(f"{path}:{i}: each line must be a JSON object")
            yield i, rec


def layer_subset_state(state: dict[str, Any], prefix: str, mapping: list[int]) -> dict[str, Any]:
    """The teacher's ``state`` with only the layers in ``mapping`` under ``prefix`` (``prefix.<i>.``), renumbered
    0..n-1 in that order; everything outside the layers (embeddings, norms, head) is kept (DistilBERT style)."""
    new = {}
    for k, v in state.items():
        if k.startswith(prefix + "."):
            idx, rest = k[len(prefix) + 1:].split(".", 1)
            if int(idx) in mapping:
                new[f"{prefix}.{mapping.index(int(idx))}.{rest}"] = v.clone()
        else:
            new[k] = v.clone()
    return new


def init_from_teacher_layers(student, teacher_state: dict[str, Any], prefix: str, mapping: list[int],
                             ignore_missing: tuple[str, ...] = ()) -> None:
    """Loads :func:`layer_subset_state` of the teacher into ``student``; any key left over on either side (other
    than names ending in ``ignore_missing``, e.g. rotary buffers) is an error."""
    missing, unexpected = student.load_state_dict(layer_subset_state(teacher_state, prefix, mapping), strict=False)
    missing = [m for m in missing if not m.endswith(ignore_missing)] if ignore_missing else list(missing)
    if missing or unexpected:
        raise StageError(f"student init from teacher layers: missing {missing[:3]}, unexpected {unexpected[:3]}")


def find_layers(root, paths: tuple[str, ...]) -> tuple[str, Any] | None:
    """(dotted path, module) of the first of ``paths`` that exists below ``root``; None when none does."""
    for path in paths:
        obj = root
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return path, obj
    return None


def fewer_layers(config, key: str, num_layers: int, section: str):
    """A copy of the teacher's ``config`` with ``num_layers`` in its layer-count field ``key``; more layers than
    the teacher's is an error naming ``section`` (e.g. ``text.student``) and what is allowed."""
    import copy

    t_layers = getattr(config, key)
    if num_layers > t_layers:
        raise ConfigError(f"{section}.num_layers {num_layers} exceeds the teacher's {t_layers} layers; "
                          f"allowed: 1..{t_layers}")
    small = copy.deepcopy(config)
    setattr(small, key, num_layers)
    return small


def tree_sha256(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder (relative names): what a folder-valued input is."""
    from kd2deploy.cache import file_sha256

    path = Path(path)
    if path.is_file():
        return {path.name: file_sha256(path)}
    return {str(p.relative_to(path)): file_sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}
