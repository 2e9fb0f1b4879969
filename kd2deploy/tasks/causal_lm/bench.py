"""Generation latency of causal LMs: time to first token (TTFT) for a P-token prompt and per-token decode latency
through the KV cache, for onnxruntime models (raw sessions) and PyTorch eager, in interleaved rounds.

One *generation* = a prefill of the prompt (timed: TTFT, including the argmax of the first token) then
``decode_tokens`` single-token steps feeding the cache back (each step timed). Every round runs one generation
per model and batch size; the model order rotates each round (:func:`kd2deploy.bench.harness.schedule`), so
drift of a shared machine hits every model alike; ratios resample rounds as pairs
(:func:`kd2deploy.bench.harness.ratio_ci`). Peak memory is measured in a fresh process per model
(``python -m kd2deploy.tasks.causal_lm.bench FOLDER``): the maximum RSS while generating, minus before loading.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


class OrtLM:
    """An exported ``text-generation-with-past`` model driven directly through an onnxruntime session."""

    kind = "onnxruntime"

    def __init__(self, folder: Path, threads: int = 1):
        import onnxruntime as ort

        folder = Path(folder)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values")]
        self.out_names = [o.name for o in self.session.get_outputs()]
        cfg = json.loads((folder / "config.json").read_text())
        heads = cfg.get("num_key_value_heads") or cfg.get("num_attention_heads") or cfg.get("n_head")
        width = cfg.get("hidden_size") or cfg.get("n_embd")
        self.kv_heads = int(heads)
        self.head_dim = int(cfg.get("head_dim") or width // (cfg.get("num_attention_heads") or cfg.get("n_head")))
        spec = next((i for i in self.session.get_inputs() if i.name in self.past_names), None)
        if spec is not None:  # static dims in the graph win over the config
            if isinstance(spec.shape[1], int):
                self.kv_heads = spec.shape[1]
            if isinstance(spec.shape[3], int):
                self.head_dim = spec.shape[3]

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray] | None, past_len: int):
        """Runs ``ids`` ``(batch, n)`` after ``past_len`` cached tokens; returns (last logits, new cache)."""
        b, n = ids.shape
        feeds: dict[str, np.ndarray] = {"input_ids": ids.astype(np.int64)}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((b, past_len + n), np.int64)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + n, dtype=np.int64), (b, n)).copy()
        feeds.update(past if past is not None else self.empty(b))
        outs = self.session.run(None, feeds)
        new = {name.replace("present", "past_key_values"): o for name, o in zip(self.out_names[1:], outs[1:],
                                                                                 strict=True)}
        return outs[0][:, -1], new


class TorchLM:
    """A PyTorch model (eager) with its own KV cache."""

    kind = "torch-eager"

    def __init__(self, model, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.model = model.eval()

    def step(self, ids: np.ndarray, past, past_len: int):
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(ids.astype(np.int64)), past_key_values=past, use_cache=True)
        return out.logits[:, -1].float().numpy(), out.past_key_values


def generate_timed(lm, prompt: np.ndarray, decode_tokens: int) -> tuple[int, list[int], list[int]]:
    """One timed greedy generation: (TTFT ns, per-step ns, generated ids of row 0)."""
    clock = time.perf_counter_ns
    t0 = clock()
    logits, past = lm.step(prompt, None, 0)
    tok = logits.argmax(-1)[:, None]
    ttft = clock() - t0
    steps, ids = [], [int(tok[0, 0])]
    pos = prompt.shape[1]
    for _ in range(decode_tokens):
        t0 = clock()
        logits, past = lm.step(tok, past, pos)
        tok = logits.argmax(-1)[:, None]
        steps.append(clock() - t0)
        ids.append(int(tok[0, 0]))
        pos += 1
    return ttft, steps, ids


def measure(models: dict[str, Any], prompts: np.ndarray, cfg, progress=None) -> list[dict[str, Any]]:
    """Interleaved rounds over ``models`` (name -> OrtLM / TorchLM) and ``cfg.batch_sizes`` (``cfg``:
    LMBenchConfig); ``prompts`` ``(n, P)`` real token ids (rows reused cyclically to fill a batch)."""
    from kd2deploy.bench.harness import schedule

    names = list(models)
    raw: dict[tuple[str, int], dict[str, list]] = {(m, b): {"ttft": [], "rounds": []}
                                                    for m in names for b in cfg.batch_sizes}
    total = cfg.warmup_rounds + cfg.rounds
    for r, order in enumerate(schedule(names, total)):
        for name in order:
            for b in cfg.batch_sizes:
                rows = np.take(prompts, np.arange(r * b, r * b + b) % len(prompts), axis=0)
                ttft, steps, _ = generate_timed(models[name], rows, cfg.decode_tokens)
                if r >= cfg.warmup_rounds:
                    raw[(name, b)]["ttft"].append(ttft / 1e3)
                    raw[(name, b)]["rounds"].append(np.asarray(steps) / 1e3)
        if progress:
            progress(f"benchmark round {r + 1}/{total}")
    out = []
    for (name, b), d in raw.items():
        dec = np.concatenate(d["rounds"])
        out.append({"model": name, "backend": models[name].kind, "batch_size": b,
                    "prompt_tokens": int(prompts.shape[1]), "decode_tokens": cfg.decode_tokens, "rounds": cfg.rounds,
                    "ttft_p50_us": float(np.median(d["ttft"])),
                    "decode_p50_us": float(np.percentile(dec, 50)), "decode_p90_us": float(np.percentile(dec, 90)),
                    "decode_p99_us": float(np.percentile(dec, 99)), "decode_mean_us": float(dec.mean()),
                    "tokens_per_s": float(b * 1e6 / dec.mean()),
                    "ttft_us_rounds": [float(x) for x in d["ttft"]],
                    "decode_us_rounds": [x.tolist() for x in d["rounds"]]})
    return out


def ratios(results: list[dict], numerator: str, denominator: str, bootstrap: int = 1000) -> list[dict[str, Any]]:
    """numerator / denominator per batch size for TTFT and decode p50, with bootstrap 95 % intervals (rounds
    resampled as pairs)."""
    from kd2deploy.bench.harness import ratio_ci

    by = {(r["model"], r["batch_size"]): r for r in results}
    out = []
    for (m, b), a in by.items():
        if m != numerator or (denominator, b) not in by:
            continue
        c = by[(denominator, b)]
        ttft = ratio_ci([np.array([x]) for x in a["ttft_us_rounds"]], [np.array([x]) for x in c["ttft_us_rounds"]],
                        bootstrap)
        dec = ratio_ci([np.asarray(x) for x in a["decode_us_rounds"]], [np.asarray(x) for x in c["decode_us_rounds"]],
                       bootstrap)
        out.append({"numerator": numerator, "denominator": denominator, "batch_size": b,
                    "ttft_ratio": round(ttft[0], 3), "ttft_ci95": [round(ttft[1], 3), round(ttft[2], 3)],
                    "decode_ratio": round(dec[0], 3), "decode_ci95": [round(dec[1], 3), round(dec[2], 3)]})
    return out


def strip_rounds(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_rounds")} for r in results]


def _rss_peak() -> int:
    from kd2deploy.bench.memory import peak_bytes  # VmHWM: ru_maxrss would report a big parent's size

    return peak_bytes()


def memory(folder: Path, prompt_tokens: int, decode_tokens: int, threads: int = 1, timeout_s: float = 300) -> dict:
    """Peak RSS of a fresh process that loads ``folder/model.onnx`` and generates once (prompt of zeros)."""
    cmd = [sys.executable, "-m", "kd2deploy.tasks.causal_lm.bench", str(folder), str(prompt_tokens),
           str(decode_tokens), str(threads)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True)
        rec = json.loads(p.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    rec["method"] = ("fresh process: peak resident set (Linux VmHWM) after one generation minus the peak after "
                     "importing numpy and onnxruntime")
    return rec


def _main(argv: list[str]) -> int:
    import onnxruntime  # noqa: F401 - in the baseline, as in any inference process

    folder, p, d, threads = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    base = _rss_peak()
    lm = OrtLM(folder, threads)
    generate_timed(lm, np.zeros((1, p), np.int64), d)
    peak = _rss_peak()
    print(json.dumps({"peak_rss_bytes": peak, "baseline_rss_bytes": base, "model_peak_bytes": peak - base}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
