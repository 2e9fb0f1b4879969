"""The causal-LM task end to end, as one call the engine (or a script) can wire: ``run_causal_lm_stages``.

Stages, in order: data (read, split by document, pack) -> teacher (load, evaluate) -> transfer set (the data, or
teacher-generated responses stored once) -> teacher-output store (top-k) -> arms (KD and the CE control, same
student initialisation per seed, every seed) -> export of the shipped student (and the teacher) with the KV cache
-> parity -> int8-dynamic variant -> benchmark (interleaved; teacher also in PyTorch eager) -> guard -> shipped
folder checked through ``ORTModelForCausalLM``. Each stage is a function of this module, so an engine adapter can
call them one at a time; results go to ``results.json`` and ``report.md`` in ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError

log = logging.getLogger("kd2deploy")


def _mean_sd(xs: list[float]) -> dict[str, float | None]:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else None,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def prepare(cfg, base_dir: str | Path = ".") -> dict[str, Any]:
    """Data and teacher: tokenizer, packed splits, held prompts, the teacher and its facts."""
    from kd2deploy.tasks.causal_lm import data as D
    from kd2deploy.tasks.causal_lm import models as M
    from kd2deploy.tasks.hf_common import resolve_location

    loc = resolve_location(cfg.teacher.model, base_dir)
    tok = M.load_tokenizer(loc)
    splits = D.load_splits(cfg.data, base_dir)
    D.check_chat_template(tok, splits.train + splits.test, cfg.data.chat_template)
    teacher, facts = M.load_teacher(loc)
    M.check_context(teacher.config, cfg.data.max_seq_len)
    dc = cfg.data
    ids = {
        "train": D.pack(tok, splits.train, dc.max_seq_len, dc.chat_template, dc.max_train_sequences),
        "val": D.pack(tok, splits.val, dc.max_seq_len, dc.chat_template, dc.max_eval_sequences),
        "test": D.pack(tok, splits.test, dc.max_seq_len, dc.chat_template, dc.max_eval_sequences),
    }
    prompts = D.held_prompts(tok, splits.test, cfg.eval.prompts, cfg.eval.prompt_tokens, cfg.eval.new_tokens,
                             dc.chat_template)
    return {"tokenizer": tok, "splits": splits, "teacher": teacher, "teacher_facts": facts, "ids": ids,
            "prompts": prompts, "teacher_location": str(loc)}


def transfer_set(cfg, ctx: dict[str, Any], cache_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The packed transfer set: the training data, or teacher-generated responses (sequence-level KD)."""
    from kd2deploy.cache import _key_of
    from kd2deploy.distill.store import tensor_digest
    from kd2deploy.tasks.causal_lm import data as D

    if cfg.data.transfer == "data":
        return ctx["ids"]["train"], {"transfer": "data"}
    tok, dc = ctx["tokenizer"], cfg.data
    prompts = D.transfer_prompts(tok, ctx["splits"].train, dc.transfer_prompt_tokens, dc.chat_template)
    key = _key_of({"teacher": tensor_digest(ctx["teacher"].state_dict()), "prompts": prompts,
                   "new_tokens": dc.transfer_new_tokens})
    docs, rec = D.teacher_generated(ctx["teacher"], tok, prompts, dc.transfer_new_tokens, cache_dir, key)
    ids = D.pack(tok, docs, dc.max_seq_len, False, dc.max_train_sequences)
    rec.update(transfer="teacher-generated", sequences=int(ids.shape[0]))
    return ids, rec


def train_arms(cfg, ctx: dict[str, Any], transfer_ids, stores: dict[str, Any],
               progress: Callable[[str], object] | None = None) -> dict[str, Any]:
    """Every seed's KD student and (with ``distill.control``) its CE control from the same initialisation;
    each evaluated on validation and test. Returns per-run records and the students (kept in memory)."""
    import torch

    from kd2deploy.tasks.causal_lm import evaluate as E
    from kd2deploy.tasks.causal_lm import models as M
    from kd2deploy.tasks.causal_lm.train import train_arm

    torch.set_num_threads(cfg.distill.train.threads)
    arms = ["kd"] + (["ce"] if cfg.distill.control else [])
    runs, students = [], {}
    for seed in cfg.distill.seeds:
        for arm in arms:
            student, info = M.build_student(ctx["teacher"], cfg.student, seed=seed)
            rec = train_arm(student, transfer_ids, cfg.distill, seed=seed, arm=arm, teacher_outputs=stores["train"],
                            teacher=ctx["teacher"], progress=progress)
            rec["val"] = {"perplexity": E.perplexity(student, ctx["ids"]["val"])["perplexity"]}
            rec["test"] = E.evaluate(student, ctx["tokenizer"], ctx["ids"]["test"], ctx["prompts"],
                                     cfg.eval.new_tokens, stores["test"])
            rec["student"] = info
            runs.append(rec)
            students[(arm, seed)] = student
            if progress:
                progress(f"{arm} seed {seed}: test perplexity {rec['test']['perplexity']['perplexity']:.2f}")
    return {"runs": runs, "students": students}


def summarize_arms(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd, min, max per arm of test perplexity, ROUGE-L, agreement; and whether KD beats the control by
    more than the seed spread (every KD seed's perplexity below every control seed's)."""
    out: dict[str, Any] = {}
    for arm in sorted({r["arm"] for r in runs}):
        rs = [r for r in runs if r["arm"] == arm]
        out[arm] = {
            "test_perplexity": _mean_sd([r["test"]["perplexity"]["perplexity"] for r in rs]),
            "val_perplexity": _mean_sd([r["val"]["perplexity"] for r in rs]),
            "rougeL_f": _mean_sd([r["test"]["rouge"]["rougeL_f"] for r in rs]),
        }
        if all("teacher_agreement" in r["test"] for r in rs):
            out[arm]["top1_agreement"] = _mean_sd([r["test"]["teacher_agreement"]["top1_agreement"] for r in rs])
            out[arm]["mean_kl"] = _mean_sd([r["test"]["teacher_agreement"]["mean_kl"] for r in rs])
    if "kd" in out and "ce" in out:
        kd, ce = out["kd"]["test_perplexity"], out["ce"]["test_perplexity"]
        spread = max((kd["sd"] or 0.0), (ce["sd"] or 0.0))
        out["kd_vs_control"] = {
            "perplexity_gap": ce["mean"] - kd["mean"], "seed_spread_sd": spread,
            "beats_beyond_spread": kd["max"] < ce["min"] and ce["mean"] - kd["mean"] > spread,
            "rule": "every KD seed's test perplexity below every control seed's, and the mean gap above the larger "
                    "per-arm sd",
        }
    return out


def ship_choice(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The KD seed with the lowest validation perplexity (never chosen on test)."""
    kd = [r for r in runs if r["arm"] == "kd"] or runs
    best = min(kd, key=lambda r: r["val"]["perplexity"])
    return {"arm": best["arm"], "seed": best["seed"], "rule": "lowest validation perplexity among KD seeds"}


@__import__("torch").inference_mode()
def onnx_perplexity(folder: Path, ids) -> float:
    """Test perplexity of an exported folder through ORTModelForCausalLM (full forward per sequence)."""
    import math

    import torch
    import torch.nn.functional as F

    from kd2deploy.tasks.causal_lm.export import load_shipped

    model, _ = load_shipped(folder)
    total, count = 0.0, 0
    for row in ids:
        x = row.unsqueeze(0)
        lg = torch.as_tensor(model(input_ids=x, attention_mask=torch.ones_like(x)).logits)[:, :-1].float()
        total += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"))
        count += x.shape[1] - 1
    return math.exp(total / count)


def export_and_check(cfg, ctx: dict[str, Any], student, out_dir: Path) -> dict[str, Any]:
    """Exports the student (and teacher) with the KV cache, parity on test sequences, the int8-dynamic variant
    and its test perplexity."""
    from kd2deploy.tasks.causal_lm import export as X

    tok, test = ctx["tokenizer"], ctx["ids"]["test"]
    rec: dict[str, Any] = {}
    work = out_dir / "work"
    X.save_hf(student, tok, work / "student-hf")
    rec["student_export"] = X.export_with_past(work / "student-hf", out_dir / "onnx" / "student")
    n = min(cfg.export.parity_sequences, len(test))
    rec["student_parity"] = X.parity(student, out_dir / "onnx" / "student", test[:n], cfg.export.parity_new_tokens,
                                     cfg.export.atol, tok.pad_token_id or 0)
    if not rec["student_parity"]["within_atol"]:
        log.warning("student parity: max |delta logit| %.2e above atol %.0e",
                    rec["student_parity"]["max_abs_logit_diff"], cfg.export.atol)
    rec["student_onnx_test_perplexity"] = onnx_perplexity(out_dir / "onnx" / "student", test)
    if cfg.export.teacher:
        X.save_hf(ctx["teacher"], tok, work / "teacher-hf")
        rec["teacher_export"] = X.export_with_past(work / "teacher-hf", out_dir / "onnx" / "teacher")
        shutil.rmtree(work / "teacher-hf", ignore_errors=True)
    if cfg.export.int8_dynamic:
        rec["int8_dynamic"] = X.int8_dynamic(out_dir / "onnx" / "student", out_dir / "onnx" / "student-int8")
        rec["int8_dynamic"]["test_perplexity"] = onnx_perplexity(out_dir / "onnx" / "student-int8", test)
        rec["int8_dynamic"]["parity"] = X.parity(student, out_dir / "onnx" / "student-int8", test[:n],
                                                 cfg.export.parity_new_tokens, float("inf"), tok.pad_token_id or 0)
    return rec


def benchmark(cfg, ctx: dict[str, Any], out_dir: Path, progress=None) -> dict[str, Any]:
    """Interleaved generation timing of every exported model (and the teacher in PyTorch eager); ratios."""
    import numpy as np

    from kd2deploy.tasks.causal_lm import bench as B

    bc = cfg.bench
    test = ctx["ids"]["test"]
    if bc.prompt_tokens + bc.decode_tokens + 1 > cfg.data.max_seq_len and bc.prompt_tokens > test.shape[1]:
        raise ConfigError(f"causal_lm.bench.prompt_tokens {bc.prompt_tokens} exceeds data.max_seq_len "
                          f"{cfg.data.max_seq_len}")
    prompts = test[:, : bc.prompt_tokens].numpy().astype(np.int64)
    models: dict[str, Any] = {}
    for name in ("teacher", "student", "student-int8"):
        folder = out_dir / "onnx" / name
        if (folder / "model.onnx").is_file():
            models[f"{name}-onnx"] = B.OrtLM(folder, bc.threads)
    if bc.teacher_eager:
        models["teacher-eager"] = B.TorchLM(ctx["teacher"], bc.threads)
    t0 = time.perf_counter()
    results = B.measure(models, prompts, bc, progress)
    rec: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 2)}
    rat = []
    for num in ("teacher-onnx", "teacher-eager"):
        if num in models:
            rat += B.ratios(results, num, "student-onnx", bc.bootstrap)
    if "student-int8-onnx" in models:
        rat += B.ratios(results, "student-onnx", "student-int8-onnx", bc.bootstrap)
    rec["ratios"] = rat
    rec["results"] = B.strip_rounds(results)
    rec["method"] = (f"{bc.rounds} interleaved rounds (+{bc.warmup_rounds} warm-up) of one greedy generation per "
                     f"model and batch size: TTFT = prefill of {bc.prompt_tokens} real test tokens + first argmax; "
                     f"then {bc.decode_tokens} single-token decode steps through the KV cache, each timed; "
                     f"{bc.threads} thread(s); onnxruntime CPU provider, graph optimisation all; ratios: bootstrap "
                     f"95 % intervals over rounds resampled as pairs ({bc.bootstrap} resamples)")
    if bc.memory:
        rec["memory"] = {name: B.memory(out_dir / "onnx" / name, bc.prompt_tokens, bc.decode_tokens, bc.threads)
                         for name in ("teacher", "student", "student-int8")
                         if (out_dir / "onnx" / name / "model.onnx").is_file()}
    return rec


def guard(cfg, exp: dict[str, Any], bench: dict[str, Any]) -> dict[str, Any]:
    """int8-dynamic ships when its test perplexity stays within ``export.max_perplexity_increase`` of FP32's and
    the lower end of its decode speed-up interval exceeds ``export.min_speedup``; otherwise FP32 ships."""
    q = exp.get("int8_dynamic")
    if not q:
        return {"ships": "student", "reason": "no variant made"}
    base = exp["student_onnx_test_perplexity"]
    ceiling = base * (1 + cfg.export.max_perplexity_increase)
    r = next((x for x in bench.get("ratios", []) if x["numerator"] == "student-onnx"
              and x["denominator"] == "student-int8-onnx" and x["batch_size"] == 1), None)
    faster = r is not None and r["decode_ci95"][0] > cfg.export.min_speedup
    keeps = q["test_perplexity"] <= ceiling
    ships = "student-int8" if faster and keeps else "student"
    reason = (f"int8-dynamic test perplexity {q['test_perplexity']:.3f} vs FP32 {base:.3f} (ceiling {ceiling:.3f}: "
              f"{'kept' if keeps else 'exceeded'}); decode speed-up "
              + (f"{r['decode_ratio']:.2f}x, 95 % CI [{r['decode_ci95'][0]:.2f}, {r['decode_ci95'][1]:.2f}] vs "
                 f"min {cfg.export.min_speedup}" if r else "not measured"))
    return {"ships": ships, "reason": reason, "faster": faster, "keeps_quality": keeps}


def ship(out_dir: Path, which: str, tokenizer, prompt_ids: list[int], new_tokens: int = 8) -> dict[str, Any]:
    """Copies the chosen folder to ``out_dir/shipped`` and proves it loads with ORTModelForCausalLM and
    generates with the tokenizer beside it."""
    import torch

    from kd2deploy.tasks.causal_lm.export import load_shipped

    dst = out_dir / "shipped"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(out_dir / "onnx" / which, dst)
    model, tok = load_shipped(dst)
    x = torch.tensor([prompt_ids])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id or 0)
    return {"folder": str(dst), "from": which, "loads_with": "optimum.onnxruntime.ORTModelForCausalLM",
            "generated_tokens": int(out.shape[1] - x.shape[1]),
            "sample": tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)}


# ----------------------------------------------------------------------------------------------- the steps
# Each step reads the config, the run's working context ``ctx`` (tokenizer, splits, teacher, stores, students)
# and writes its part of ``res`` (the future results.json). The engine adapter runs them as its stages.


def step_data(cfg, ctx: dict[str, Any], res: dict[str, Any], base_dir: str | Path = ".") -> None:
    ctx.update(prepare(cfg, base_dir))
    res["data"] = {**ctx["splits"].info, "source": ctx["splits"].source, "format": ctx["splits"].format,
                   "sequences": {k: list(v.shape) for k, v in ctx["ids"].items()}}


def step_teacher(cfg, ctx: dict[str, Any], res: dict[str, Any], out: Path, say=None) -> None:
    from kd2deploy.tasks.causal_lm import evaluate as E
    from kd2deploy.tasks.causal_lm.train import teacher_store

    res["teacher"] = {**ctx["teacher_facts"], "location": ctx["teacher_location"]}
    res["teacher"]["test"] = E.evaluate(ctx["teacher"], ctx["tokenizer"], ctx["ids"]["test"], ctx["prompts"],
                                        cfg.eval.new_tokens)
    cache = out / ".cache"
    ctx["transfer_ids"], res["transfer"] = transfer_set(cfg, ctx, cache / "transfer")
    stores, res["teacher_store"] = {}, {}
    for split, ids in (("train", ctx["transfer_ids"]), ("test", ctx["ids"]["test"])):
        stores[split], res["teacher_store"][split] = teacher_store(ctx["teacher"], ids, cache / "teacher_outputs",
                                                                   cfg.distill.top_k, progress=say)
    ctx["stores"] = stores


def step_students(cfg, ctx: dict[str, Any], res: dict[str, Any], say=None) -> None:
    arms = train_arms(cfg, ctx, ctx["transfer_ids"], ctx["stores"], say)
    res["runs"] = arms["runs"]
    res["summary"] = summarize_arms(arms["runs"])
    res["ship_choice"] = ship_choice(arms["runs"])
    ctx["student"] = arms["students"][(res["ship_choice"]["arm"], res["ship_choice"]["seed"])]


def step_export(cfg, ctx: dict[str, Any], res: dict[str, Any], out: Path) -> None:
    res["export"] = export_and_check(cfg, ctx, ctx["student"], out)
    shutil.rmtree(out / "work", ignore_errors=True)


def step_benchmark(cfg, ctx: dict[str, Any], res: dict[str, Any], out: Path, say=None) -> None:
    res["benchmark"] = benchmark(cfg, ctx, out, say)


def step_energy(cfg, ctx: dict[str, Any], res: dict[str, Any], out: Path, meter, energy_cfg) -> None:
    """Energy per 1 M generated tokens of the ONNX teacher and student (``kd2deploy.energy.meter``'s interleaved
    windows with an idle baseline); one call = one greedy generation of P + D tokens at batch 1, counted as
    D + 1 generated tokens. The label (measured / modelled) is CodeCarbon's, from what it detected."""
    from kd2deploy.energy.meter import measure_inference_energy
    from kd2deploy.tasks.causal_lm import bench as B

    if meter is None or not getattr(meter, "enabled", False):
        res["energy"] = {"note": "energy not tracked (energy.enabled: false)"}
        return
    bc = cfg.bench
    prompt = ctx["ids"]["test"][:1, : bc.prompt_tokens].numpy()
    runners = {}
    for name in ("teacher", "student"):
        folder = out / "onnx" / name
        if (folder / "model.onnx").is_file():
            lm = B.OrtLM(folder, bc.threads)
            runners[f"{name}-onnx"] = ((lambda lm=lm: B.generate_timed(lm, prompt, bc.decode_tokens)),
                                       bc.decode_tokens + 1)
    e = measure_inference_energy(meter, runners, energy_cfg.window_s, energy_cfg.repeats, energy_cfg.idle_baseline)
    per = {name: m.get("per_million_gross", {}).get("kwh") for name, m in e["models"].items()}
    ratio = (per["teacher-onnx"] / per["student-onnx"]) if per.get("teacher-onnx") and per.get("student-onnx") \
        else None
    res["energy"] = {"kwh_per_million_tokens_gross": per, "teacher_over_student": ratio,
                     "label": e.get("label"), "explanation": e.get("explanation"), "window_s": e.get("window_s"),
                     "repeats": e.get("repeats"),
                     "method": "kd2deploy.energy.meter.measure_inference_energy: interleaved windows per model and "
                               "an idle window; one call = one greedy generation, D + 1 tokens"}


def step_ship(cfg, ctx: dict[str, Any], res: dict[str, Any], out: Path) -> None:
    res["guard"] = guard(cfg, res["export"], res["benchmark"])
    res["shipped"] = ship(out, res["guard"]["ships"], ctx["tokenizer"], ctx["prompts"][0].ids)


def step_report(res: dict[str, Any], out: Path) -> str:
    from kd2deploy.tasks.causal_lm.report import headline, render

    res["headline"] = headline(res)
    (out / "report.md").write_text(render(res))
    return res["headline"]


def run_causal_lm_stages(cfg, out_dir: str | Path, base_dir: str | Path = ".",
                         progress: Callable[[str], object] | None = None) -> dict[str, Any]:
    """Runs the whole task (``cfg``: a CausalLMConfig) into ``out_dir`` without the engine; returns and writes
    ``results.json`` and ``report.md``. The teacher-output store and a sequence-level transfer set are reused
    across runs from ``out_dir/.cache``."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda m: log.info(m))
    torch.set_num_threads(cfg.distill.train.threads)
    ctx: dict[str, Any] = {}
    res: dict[str, Any] = {"task": "causal-lm", "config": cfg.model_dump(mode="json")}
    timings: dict[str, float] = {}
    steps = (("data", lambda: step_data(cfg, ctx, res, base_dir)),
             ("teacher", lambda: step_teacher(cfg, ctx, res, out, say)),
             ("students", lambda: step_students(cfg, ctx, res, say)),
             ("export", lambda: step_export(cfg, ctx, res, out)),
             ("benchmark", lambda: step_benchmark(cfg, ctx, res, out, say)),
             ("ship", lambda: step_ship(cfg, ctx, res, out)))
    for name, fn in steps:
        t = time.perf_counter()
        fn()
        timings[f"{name}_s"] = round(time.perf_counter() - t, 1)
        say(f"step {name} done in {timings[f'{name}_s']} s")
    res["timings"] = timings
    step_report(res, out)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    say(res["headline"])
    return res
