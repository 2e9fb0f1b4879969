"""Latency of text classifiers with the pipeline's harness, per batch size and sequence length, and the
tokeniser's own time, measured separately (so the report can say whether a speed-up includes it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def fixed_length_inputs(tokenizer, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """Real test texts tokenised to exactly ``seq_len`` tokens (truncated or padded)."""
    enc = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length", return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def latency(files: dict[str, Path], tokenizer, texts: list[str], settings, batch_sizes: list[int],
            seq_lens: list[int], progress: Callable[[str], object] | None = None) -> list[dict]:
    """One :func:`kd2deploy.bench.harness.measure` per sequence length over every model, interleaved.

    Returns the harness's results (with samples), each with ``seq_len`` added.
    """
    from kd2deploy.bench.harness import batch_inputs, create_ort_session, measure, ort_runner
    from kd2deploy.tasks.text.export import onnx_feeds

    out = []
    for s in seq_lens:
        enc = fixed_length_inputs(tokenizer, texts, s)
        runners: dict[str, dict[int, Any]] = {}
        for name, path in files.items():
            session, _ = create_ort_session(path, settings)
            feeds = onnx_feeds(session, enc)

            def make(p=path):
                return create_ort_session(p, settings)[0]

            runners[name] = {b: ort_runner(session, batch_inputs(feeds, b), make) for b in batch_sizes}
        for r in measure(runners, settings, progress=progress, keep_samples=True):
            r["seq_len"] = s
            out.append(r)
    return out


def tokenizer_timing(tokenizer_json: Path, texts: list[str], max_len: int, repeats: int = 3) -> dict[str, Any]:
    """Time to tokenise one text with the shipped ``tokenizer.json`` (Rust ``tokenizers``, one text per call,
    truncation at ``max_len``), best of ``repeats`` passes per text; and the texts' untruncated token counts."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()  # a saved tokenizer.json may carry its own truncation / padding settings
    tok.no_padding()
    full = [len(e.ids) for e in tok.encode_batch(texts)]
    tok.enable_truncation(max_length=max_len)
    for t in texts[:10]:
        tok.encode(t)  # warm-up
    per: list[float] = []
    for t in texts:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            tok.encode(t)
            best = min(best, time.perf_counter_ns() - t0)
        per.append(best / 1e3)
    return {
        "texts": len(texts), "p50_us": statistics.median(per), "mean_us": float(np.mean(per)),
        "p90_us": float(np.percentile(per, 90)),
        "tokens_mean_untruncated": float(np.mean(full)), "tokens_max_untruncated": int(max(full)),
        "share_truncated": float(np.mean([n > max_len for n in full])), "max_seq_len": max_len,
        "method": f"tokenizers.Tokenizer.from_file(tokenizer.json).encode(text), one text per call, truncation "
                  f"at {max_len}, best of {repeats} per text, single thread, test-split texts",
    }
