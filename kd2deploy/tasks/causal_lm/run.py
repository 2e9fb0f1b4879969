"""The causal-LM task's steps as library functions (its stages in :mod:`kd2deploy.tasks.causal_lm.stages` call
them): the transfer set, the arms' summary and the shipped seed, export with the KV cache and its checks, the
compressed variants, the generation benchmark, the guard, the shipped folder and the quality interval.

Exported folders live under the run folder's ``models/<name>/`` (``model.onnx`` + config + tokenizer files); the
shipped one is copied to ``ship/student/``.
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from kd2deploy.errors import ConfigError

log = logging.getLogger("kd2deploy")

VARIANTS = ("int8", "int4")  # folder suffixes: models/student-int8, models/student-int4


def mean_sd(xs: list[float]) -> dict[str, float | None]:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else None,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def transfer_set(c, tokenizer, splits, train_ids, teacher, cache_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The packed transfer set: the packed training split ``train_ids``, or teacher-generated responses to its
    documents (sequence-level KD), generated once and stored under ``cache_dir``."""
    from kd2deploy.cache import stage_key
    from kd2deploy.distill.store import tensor_digest
    from kd2deploy.tasks.causal_lm import data as D

    dc = c.data
    if dc.transfer == "data":
        return train_ids, {"transfer": "data", "sequences": int(train_ids.shape[0])}
    prompts = D.transfer_prompts(tokenizer, splits.train, dc.transfer_prompt_tokens, dc.chat_template)
    key = stage_key({"teacher": tensor_digest(teacher.state_dict()), "prompts": prompts,
                  "new_tokens": dc.transfer_new_tokens})
    docs, rec = D.teacher_generated(teacher, tokenizer, prompts, dc.transfer_new_tokens, cache_dir, key)
    ids = D.pack(tokenizer, docs, dc.max_seq_len, False, dc.max_train_sequences)
    rec.update(transfer="teacher-generated", sequences=int(ids.shape[0]))
    return ids, rec


def summarize_arms(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd, min, max per arm of test perplexity, ROUGE-L, agreement; and whether KD beats the control by
    more than the seed spread (every KD seed's perplexity below every control seed's)."""
    out: dict[str, Any] = {}
    for arm in sorted({r["arm"] for r in runs}):
        rs = [r for r in runs if r["arm"] == arm]
        out[arm] = {
            "test_perplexity": mean_sd([r["test"]["perplexity"]["perplexity"] for r in rs]),
            "val_perplexity": mean_sd([r["val"]["perplexity"] for r in rs]),
            "rougeL_f": mean_sd([r["test"]["rouge"]["rougeL_f"] for r in rs]),
        }
        if all("teacher_agreement" in r["test"] for r in rs):
            out[arm]["top1_agreement"] = mean_sd([r["test"]["teacher_agreement"]["top1_agreement"] for r in rs])
            out[arm]["mean_kl"] = mean_sd([r["test"]["teacher_agreement"]["mean_kl"] for r in rs])
    if "kd" in out and "ce" in out:
        from kd2deploy.stats import paired_seeds

        kd, ce = out["kd"]["test_perplexity"], out["ce"]["test_perplexity"]
        spread = max((kd["sd"] or 0.0), (ce["sd"] or 0.0))
        nll = {(r["arm"], r["seed"]): r["test"]["perplexity"]["nll"] for r in runs}
        seeds = sorted({s for a, s in nll if a == "kd"} & {s for a, s in nll if a == "ce"})
        out["kd_vs_control"] = {
            "perplexity_gap": ce["mean"] - kd["mean"], "seed_spread_sd": spread,
            "beats_beyond_spread": kd["max"] < ce["min"] and ce["mean"] - kd["mean"] > spread,
            "rule": "every KD seed's test perplexity below every control seed's, and the mean gap above the larger "
                    "per-arm sd",
            # higher is better for paired_seeds: the negated test NLL (log perplexity), paired by seed
            "paired": paired_seeds([-nll[("kd", s)] for s in seeds], [-nll[("ce", s)] for s in seeds], "kd", "ce"),
        }
    return out


def ship_choice(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The KD seed with the lowest validation perplexity (never chosen on test)."""
    kd = [r for r in runs if r["arm"] == "kd"] or runs
    best = min(kd, key=lambda r: r["val"]["perplexity"])
    return {"arm": best["arm"], "seed": best["seed"], "rule": "lowest validation perplexity among KD seeds"}


def onnx_nll(folder: Path, splits: dict[str, Any]) -> dict[str, list[float]]:
    """Mean next-token NLL of every sequence of each split (name -> packed ids) through the exported folder
    (ORTModelForCausalLM loaded once, one full forward per sequence); perplexity = exp(mean of a split's values),
    every sequence having the same length."""
    import torch
    import torch.nn.functional as F

    from kd2deploy.tasks.causal_lm.export import load_shipped

    model, _ = load_shipped(folder)
    out: dict[str, list[float]] = {}
    with torch.inference_mode():
        for split, ids in splits.items():
            out[split] = []
            for row in ids:
                x = row.unsqueeze(0)
                lg = torch.as_tensor(model(input_ids=x, attention_mask=torch.ones_like(x)).logits)[:, :-1].float()
                out[split].append(float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1))))
    return out


def perplexity_of(nll: list[float]) -> float:
    return math.exp(statistics.fmean(nll))


def export_and_check(c, tokenizer, ids: dict[str, Any], teacher, student, models: Path) -> dict[str, Any]:
    """Exports the student (and teacher) with the KV cache into ``models/<name>/``; parity on test sequences;
    the ONNX student's validation and test perplexity; the variants (int8-dynamic, int4 weight-only), each with
    its own perplexities and parity."""
    from kd2deploy.tasks.causal_lm import export as X

    test = ids["test"]
    rec: dict[str, Any] = {}
    work = models / ".work"
    X.save_hf(student, tokenizer, work / "student-hf")
    rec["student_export"] = X.export_with_past(work / "student-hf", models / "student")
    n = min(c.export.parity_sequences, len(test))
    pad = tokenizer.pad_token_id or 0
    rec["student_parity"] = X.parity(student, models / "student", test[:n], c.export.parity_new_tokens,
                                     c.export.atol, pad)
    if not rec["student_parity"]["within_atol"]:
        log.warning("student parity: max |delta logit| %.2e above atol %.0e",
                    rec["student_parity"]["max_abs_logit_diff"], c.export.atol)
    scored = {split: ids[split] for split in ("val", "test")}
    rec["student_nll"] = onnx_nll(models / "student", scored)
    rec["student_onnx_val_perplexity"] = perplexity_of(rec["student_nll"]["val"])
    rec["student_onnx_test_perplexity"] = perplexity_of(rec["student_nll"]["test"])
    if c.export.teacher:
        X.save_hf(teacher, tokenizer, work / "teacher-hf")
        rec["teacher_export"] = X.export_with_past(work / "teacher-hf", models / "teacher")
    shutil.rmtree(work, ignore_errors=True)
    makers = {"int8": (c.export.int8_dynamic, X.int8_dynamic), "int4": (c.export.int4_weight_only, X.int4_weight_only)}
    rec["variants"] = {}
    for suffix, (wanted, make) in makers.items():
        if not wanted:
            continue
        folder = models / f"student-{suffix}"
        try:
            v = make(models / "student", folder, c.export)
        except Exception as e:  # noqa: BLE001 - a variant that cannot be made is reported, FP32 still ships
            rec["variants"][f"student-{suffix}"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            shutil.rmtree(folder, ignore_errors=True)
            continue
        v["nll"] = onnx_nll(folder, scored)
        v["val_perplexity"] = perplexity_of(v["nll"]["val"])
        v["test_perplexity"] = perplexity_of(v["nll"]["test"])
        v["parity"] = X.parity(student, folder, test[:n], c.export.parity_new_tokens, float("inf"), pad)
        rec["variants"][f"student-{suffix}"] = v
    return rec


def benchmark(c, ids: dict[str, Any], teacher, models: Path, progress=None) -> dict[str, Any]:
    """Interleaved generation timing of every exported model (and the teacher in PyTorch eager); ratios of the
    teacher over each student file and of the FP32 student over each variant, with intervals."""
    import numpy as np

    from kd2deploy.tasks.causal_lm import bench as B

    bc = c.bench
    test = ids["test"]
    if bc.prompt_tokens > test.shape[1]:
        raise ConfigError(f"causal_lm.bench.prompt_tokens {bc.prompt_tokens} exceeds data.max_seq_len "
                          f"{c.data.max_seq_len}; allowed: up to {c.data.max_seq_len}")
    prompts = test[:, : bc.prompt_tokens].numpy().astype(np.int64)
    runners: dict[str, Any] = {}
    for folder in sorted(models.iterdir()):
        if (folder / "model.onnx").is_file():
            runners[f"{folder.name}-onnx"] = B.OrtLM(folder, bc.threads)
    if bc.teacher_eager:
        runners["teacher-eager"] = B.TorchLM(teacher, bc.threads)
    t0 = time.perf_counter()
    results = B.measure(runners, prompts, bc, progress)
    rec: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 2)}
    students = [n for n in runners if n.startswith("student")]
    rat = []
    for num in ("teacher-onnx", "teacher-eager"):
        if num in runners:
            for den in students:
                rat += B.ratios(results, num, den, bc.bootstrap)
    for den in students:
        if den != "student-onnx":
            rat += B.ratios(results, "student-onnx", den, bc.bootstrap)
    rec["ratios"] = rat
    rec["results"] = B.strip_rounds(results)
    rec["method"] = (f"{bc.rounds} interleaved rounds (+{bc.warmup_rounds} warm-up) of one greedy generation per "
                     f"model and batch size: TTFT = prefill of {bc.prompt_tokens} real test tokens + first argmax; "
                     f"then {bc.decode_tokens} single-token decode steps through the KV cache, each timed; "
                     f"{bc.threads} thread(s); onnxruntime CPU provider, graph optimisation all; ratios: bootstrap "
                     f"95 % intervals over rounds resampled as pairs ({bc.bootstrap} resamples)")
    if bc.memory:
        rec["memory"] = {f.name: B.memory(f, bc.prompt_tokens, bc.decode_tokens, bc.threads)
                         for f in sorted(models.iterdir()) if (f / "model.onnx").is_file()}
    return rec


def ratio_of(bench: dict[str, Any], num: str, den: str, batch: int = 1) -> dict[str, Any] | None:
    return next((r for r in bench.get("ratios", []) if r["numerator"] == num and r["denominator"] == den
                 and r["batch_size"] == batch), None)


def guard(c, exp: dict[str, Any], bench: dict[str, Any]) -> dict[str, Any]:
    """The file that ships, judged on the **validation** split: a variant ships when its validation perplexity
    stays within ``export.max_perplexity_increase`` of the FP32 student's and the lower end of its per-token
    decode speed-up interval (batch 1) exceeds ``export.min_speedup``; the fastest such variant wins, else FP32."""
    base = exp["student_onnx_val_perplexity"]
    ceiling = base * (1 + c.export.max_perplexity_increase)
    judged, reasons, judgements = [], [], {}
    for name, v in exp.get("variants", {}).items():
        if "error" in v:
            reasons.append(f"{name} not made ({v['error'][:80]})")
            continue
        r = ratio_of(bench, "student-onnx", f"{name}-onnx")
        keeps = v["val_perplexity"] <= ceiling
        faster = r is not None and r["decode_ci95"][0] > c.export.min_speedup
        judgements[name] = {"keeps_quality": keeps, "faster": faster}
        reasons.append(f"{name}: validation perplexity {v['val_perplexity']:.3f} vs FP32 {base:.3f} (ceiling "
                       f"{ceiling:.3f}: {'kept' if keeps else 'exceeded'}); decode speed-up "
                       + (f"{r['decode_ratio']:.2f}x, 95 % CI [{r['decode_ci95'][0]:.2f}, "
                          f"{r['decode_ci95'][1]:.2f}] vs min {c.export.min_speedup}" if r else "not measured"))
        if keeps and faster:
            judged.append((r["decode_ratio"], name))
    ships = max(judged)[1] if judged else "student"
    return {"ships": ships, "reason": "; ".join(reasons) or "no variant made", "variants": judgements,
            "rule": "fastest variant whose validation perplexity stays within export.max_perplexity_increase of "
                    "FP32's and whose decode speed-up CI lies above export.min_speedup; else FP32"}


def ship_folder(src: Path, dst: Path, prompt_ids: list[int], new_tokens: int = 8) -> dict[str, Any]:
    """Copies the chosen folder to ``dst`` and proves it loads with ORTModelForCausalLM and generates with the
    tokenizer beside it."""
    import torch

    from kd2deploy.tasks.causal_lm.export import load_shipped

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    model, tok = load_shipped(dst)
    x = torch.tensor([prompt_ids])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id or 0)
    return {"folder": str(dst), "from": src.name, "loads_with": "optimum.onnxruntime.ORTModelForCausalLM",
            "generated_tokens": int(out.shape[1] - x.shape[1]),
            "sample": tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)}


def perplexity_ratio(teacher_nll: list[float], student_nll: list[float], resamples: int = 2000) -> dict[str, Any]:
    """Student / teacher test perplexity with a paired bootstrap 95 % interval over test sequences
    (``scipy.stats.bootstrap``, percentile method): how much worse the shipped file predicts the same text."""
    from scipy.stats import bootstrap

    t, s = np.asarray(teacher_nll), np.asarray(student_nll)

    def stat(a, b, axis=-1):
        return np.exp(np.mean(b, axis=axis) - np.mean(a, axis=axis))

    ci = bootstrap((t, s), stat, paired=True, vectorized=True, n_resamples=resamples, method="percentile",
                   random_state=0).confidence_interval
    return {"ratio": float(stat(t, s)), "ci95": [float(ci.low), float(ci.high)], "sequences": len(t),
            "method": f"paired bootstrap over {len(t)} test sequences (scipy.stats.bootstrap, percentile, "
                      f"{resamples} resamples) of exp(mean NLL student - mean NLL teacher)"}
