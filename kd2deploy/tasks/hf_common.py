"""Pieces the Hugging Face tasks (text, causal-lm) share: JSONL records and a student made of teacher layers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError


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
