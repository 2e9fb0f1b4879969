"""Text for a causal LM: documents from text files, JSONL or prompt/response pairs; seeded document-level
splits; packed token sequences of ``max_seq_len``; held prompts with reference continuations.

Packing: each split's documents are tokenised, joined with the EOS token and cut into sequences of exactly
``max_seq_len`` tokens (the remainder is dropped), so every batch is dense and no padding is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd2deploy.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".md", ".text", "")


@dataclass
class Document:
    """One document: plain text, or a prompt and its response."""

    text: str
    prompt: str | None = None

    @property
    def is_pair(self) -> bool:
        return self.prompt is not None


@dataclass
class LMSplits:
    """Documents per split and where they came from."""

    train: list[Document]
    val: list[Document]
    test: list[Document]
    source: str
    format: str
    info: dict[str, Any] = field(default_factory=dict)


def detect_format(path: Path, fmt: str, prompt_field: str, response_field: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir() or path.suffix.lower() in (".txt", ".md", ".text"):
        return "text"
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        break
                    return "pairs" if isinstance(rec, dict) and prompt_field in rec and response_field in rec \
                        else "jsonl"
        return "jsonl"
    raise ConfigError(f"{path}: causal_lm.data.format 'auto' cannot tell the format from suffix "
                      f"{path.suffix!r}; allowed: a folder, .txt, .jsonl (or set format: text / jsonl / pairs)")


def read_documents(path: Path, fmt: str, text_field: str = "text", prompt_field: str = "prompt",
                   response_field: str = "response") -> tuple[list[Document], str]:
    """Reads the documents and the resolved format; every problem names the file, the line and the field."""
    fmt = detect_format(path, fmt, prompt_field, response_field)
    docs: list[Document] = []
    if fmt == "text":
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
                part.startswith((".", "__")) for part in p.relative_to(path).parts)
                and p.suffix.lower() in TEXT_SUFFIXES)
            docs = [Document(f.read_text(encoding="utf-8", errors="replace").strip()) for f in files]
        else:  # one file: documents are separated by blank lines
            raw = path.read_text(encoding="utf-8", errors="replace")
            docs = [Document(p.strip()) for p in raw.split("\n\n")]
    elif fmt in ("jsonl", "pairs"):
        from kd2deploy.tasks.hf_common import jsonl_records

        for i, rec in jsonl_records(path):
            keys = (text_field,) if fmt == "jsonl" else (prompt_field, response_field)
            for k in keys:
                if k not in rec:
                    which = "text_field" if fmt == "jsonl" else ("prompt_field" if k == prompt_field
                                                                else "response_field")
                    raise ConfigError(f"{path}:{i}: causal_lm.data.{which} {k!r} missing; the line has "
                                      f"{', '.join(rec) or 'no keys'}")
                if not isinstance(rec[k], str):
                    raise ConfigError(f"{path}:{i}: {k!r} must be a string")
            docs.append(Document(rec[text_field]) if fmt == "jsonl"
                        else Document(rec[response_field], prompt=rec[prompt_field]))
    else:  # pragma: no cover - the schema allows no other value
        raise ConfigError(f"{path}: unknown format {fmt!r}; allowed: text, jsonl, pairs")
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ConfigError(f"{path}: no text found (format {fmt})")
    return docs, fmt


def split_documents(docs: list[Document], val_fraction: float, test_fraction: float, seed: int,
                    max_documents: int | None = None) -> tuple[list[Document], list[Document], list[Document]]:
    """Seeded document-level split (a document's tokens never straddle two splits)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs))
    if max_documents is not None:
        order = order[:max_documents]
    n = len(order)
    n_test, n_val = max(1, round(test_fraction * n)), max(1, round(val_fraction * n))
    if n - n_test - n_val < 1:
        raise ConfigError(f"causal_lm.data: {n} documents cannot be split into train/val/test; need at least 3")
    pick = [docs[i] for i in order]
    return pick[n_test + n_val:], pick[n_test: n_test + n_val], pick[:n_test]


def load_splits(cfg, base_dir: str | Path = ".") -> LMSplits:
    """Reads and splits the data of ``cfg`` (an :class:`~kd2deploy.tasks.causal_lm.config.LMDataConfig`)."""
    from kd2deploy.tasks.hf_common import resolve_location

    path = resolve_location(cfg.path, base_dir)
    docs, fmt = read_documents(path, cfg.format, cfg.text_field, cfg.prompt_field, cfg.response_field)
    tr, va, te = split_documents(docs, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.max_documents)
    return LMSplits(tr, va, te, str(path), fmt, {"documents": len(docs), "train_documents": len(tr),
                                                  "val_documents": len(va), "test_documents": len(te)})


def check_chat_template(tokenizer, docs: list[Document], wanted: bool, where: str = "causal_lm.data") -> None:
    """Prompt/response data with ``chat_template: true`` needs a tokenizer that has one."""
    if wanted and any(d.is_pair for d in docs) and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{where}: the prompt file needs a chat template but the teacher's tokenizer has none; "
                          f"set {where}.chat_template: false to use the prompts as plain text")


def prompt_ids(tokenizer, prompt: str, chat_template: bool) -> list[int]:
    """Token ids of a prompt: through the chat template (with the assistant turn opened) or as plain text."""
    if chat_template:
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) else out)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def document_ids(tokenizer, doc: Document, chat_template: bool) -> list[int]:
    """A document's tokens (prompt then response for pairs), ending with EOS."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if doc.is_pair:
        return prompt_ids(tokenizer, doc.prompt, chat_template) + \
            tokenizer(doc.text, add_special_tokens=False)["input_ids"] + eos
    return tokenizer(doc.text, add_special_tokens=False)["input_ids"] + eos


def pack(tokenizer, docs: list[Document], max_seq_len: int, chat_template: bool = True,
         max_sequences: int | None = None):
    """Packed ``(n, max_seq_len)`` int64 tensor of the documents' tokens (joined, cut, remainder dropped)."""
    import torch

    stream: list[int] = []
    need = None if max_sequences is None else max_sequences * max_seq_len
    for d in docs:
        stream.extend(document_ids(tokenizer, d, chat_template))
        if need is not None and len(stream) >= need:
            break
    n = len(stream) // max_seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise ConfigError(f"causal_lm.data: the documents hold {len(stream)} tokens, fewer than one sequence of "
                          f"max_seq_len {max_seq_len}; lower max_seq_len or add text")
    return torch.tensor(stream[: n * max_seq_len], dtype=torch.long).view(n, max_seq_len)


@dataclass
class HeldPrompt:
    """A prompt (token ids) and the reference continuation (text) that ROUGE-L scores against."""

    ids: list[int]
    reference: str


def held_prompts(tokenizer, docs: list[Document], n: int, prompt_tokens: int, new_tokens: int,
                 chat_template: bool = True) -> list[HeldPrompt]:
    """Up to ``n`` prompts from ``docs`` (test split): a pair's prompt and response, or a document's first
    ``prompt_tokens`` tokens and its next ``new_tokens`` tokens as the reference."""
    out: list[HeldPrompt] = []
    for d in docs:
        if len(out) >= n:
            break
        if d.is_pair:
            out.append(HeldPrompt(prompt_ids(tokenizer, d.prompt, chat_template), d.text))
            continue
        ids = tokenizer(d.text, add_special_tokens=False)["input_ids"]
        if len(ids) < prompt_tokens + new_tokens:
            continue
        out.append(HeldPrompt(ids[:prompt_tokens],
                              tokenizer.decode(ids[prompt_tokens: prompt_tokens + new_tokens],
                                               skip_special_tokens=True)))
    if not out:
        raise ConfigError(f"causal_lm.eval: no test document has {prompt_tokens} + {new_tokens} tokens for a "
                          "held prompt; lower eval.prompt_tokens / eval.new_tokens")
    return out


def transfer_prompts(tokenizer, docs: list[Document], prompt_tokens: int, chat_template: bool) -> list[list[int]]:
    """Prompts for sequence-level KD: each pair's prompt, or each document's first ``prompt_tokens`` tokens."""
    out = []
    for d in docs:
        if d.is_pair:
            out.append(prompt_ids(tokenizer, d.prompt, chat_template))
        else:
            ids = tokenizer(d.text, add_special_tokens=False)["input_ids"][:prompt_tokens]
            if ids:
                out.append(ids)
    return out


def teacher_generated(teacher, tokenizer, prompts: list[list[int]], new_tokens: int, cache_dir: Path,
                      key: str) -> tuple[list[Document], dict[str, Any]]:
    """Sequence-level KD transfer set: the teacher's greedy responses to ``prompts``, generated once and stored
    as ``cache_dir/<key>.jsonl`` (written atomically); later calls read the file back."""
    import os
    import time

    from kd2deploy.tasks.causal_lm.evaluate import greedy

    path = Path(cache_dir) / f"seqkd-{key}.jsonl"
    t0 = time.perf_counter()
    if not path.exists():
        rows = []
        for p in prompts:
            new = greedy(teacher, p, new_tokens, eos_token_id=tokenizer.eos_token_id)
            rows.append({"prompt": tokenizer.decode(p, skip_special_tokens=False),
                         "response": tokenizer.decode(new, skip_special_tokens=True)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
        hit = False
    else:
        hit = True
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    # the prompt text already carries any chat markup: joined as plain text
    docs = [Document(r["prompt"] + r["response"]) for r in rows]
    return docs, {"file": str(path), "reused": hit, "responses": len(docs), "new_tokens": new_tokens,
                  "seconds": time.perf_counter() - t0}
