"""The causal-LM run's headline sentence and Markdown report, from ``results.json``'s content."""

from __future__ import annotations

from typing import Any


def _ms(x: dict[str, Any] | None, fmt: str = ".2f") -> str:
    if not x:
        return "n/a"
    sd = f" ± {x['sd']:{fmt}}" if x.get("sd") is not None else ""
    return f"{x['mean']:{fmt}}{sd}"


def _ratio(res: dict[str, Any], num: str, den: str = "student-onnx", b: int = 1) -> dict[str, Any] | None:
    return next((r for r in res.get("benchmark", {}).get("ratios", []) if r["numerator"] == num
                 and r["denominator"] == den and r["batch_size"] == b), None)


def headline(res: dict[str, Any]) -> str:
    """"student: N x cheaper per token, delta perplexity, ROUGE-L a -> b" with this run's numbers."""
    s = res.get("summary", {})
    kd = s.get("kd", {})
    t_ppl = res["teacher"]["test"]["perplexity"]["perplexity"]
    t_rouge = res["teacher"]["test"]["rouge"]["rougeL_f"]
    r = _ratio(res, "teacher-onnx")
    speed = (f"{r['decode_ratio']:.2f}x faster per decoded token (95 % CI {r['decode_ci95'][0]:.2f}-"
             f"{r['decode_ci95'][1]:.2f}), TTFT {r['ttft_ratio']:.2f}x" if r else "speed not measured")
    en = (res.get("energy") or {}).get("teacher_over_student")
    if en:
        speed += f", {en:.2f}x less energy per token ({res['energy'].get('label')})"
    verdict = ""
    if "kd_vs_control" in s:
        v = s["kd_vs_control"]
        verdict = (f"; KD {'beats' if v['beats_beyond_spread'] else 'does not beat'} the CE control beyond the "
                   f"seed spread (perplexity {_ms(s['ce']['test_perplexity'])} -> {_ms(kd['test_perplexity'])})")
    return (f"student (ONNX, KV cache): {speed} than the ONNX teacher; test perplexity {t_ppl:.2f} -> "
            f"{_ms(kd.get('test_perplexity'))}; ROUGE-L {t_rouge:.3f} -> {_ms(kd.get('rougeL_f'), '.3f')}{verdict}; "
            f"ships {res.get('guard', {}).get('ships', 'student')}")


def render(res: dict[str, Any]) -> str:
    """A Markdown report: headline, KD vs control, per-seed table, export and parity, latency, guard."""
    L = [f"# causal-lm run\n\n**{res['headline']}**\n"]
    t = res["teacher"]
    L.append(f"Teacher: {t['architecture']} {t['params'] / 1e6:.1f} M params, {t['layers']} layers "
             f"({t['location']}). Data: {res['data']['source']} ({res['data']['format']}), sequences "
             f"{res['data']['sequences']}. Transfer: {res['transfer'].get('transfer')}.\n")
    s = res["summary"]
    L.append("## KD vs the cross-entropy control (test split, mean ± sd over seeds)\n")
    L.append("| arm | perplexity | ROUGE-L F | top-1 agreement | mean KL(teacher‖student) | val perplexity |")
    L.append("|---|---|---|---|---|---|")
    L.append(f"| teacher | {t['test']['perplexity']['perplexity']:.2f} | {t['test']['rouge']['rougeL_f']:.3f} "
             "| 1 | 0 | |")
    for arm in ("kd", "ce"):
        if arm in s:
            a = s[arm]
            L.append(f"| {arm} | {_ms(a['test_perplexity'])} | {_ms(a['rougeL_f'], '.3f')} | "
                     f"{_ms(a.get('top1_agreement'), '.3f')} | {_ms(a.get('mean_kl'), '.3f')} | "
                     f"{_ms(a['val_perplexity'])} |")
    if "kd_vs_control" in s:
        v = s["kd_vs_control"]
        L.append(f"\nGap (control - KD) {v['perplexity_gap']:.2f}, larger per-arm sd {v['seed_spread_sd']:.2f}: "
                 + ("**KD beats the control beyond the seed spread** " if v["beats_beyond_spread"]
                    else "**no win beyond the seed spread** ")
                 + f"({v['rule']}).\n")
    L.append("### Per seed\n\n| arm | seed | steps | on-policy steps | train s | val ppl | test ppl | ROUGE-L |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in res["runs"]:
        L.append(f"| {r['arm']} | {r['seed']} | {r['steps']} | {r['on_policy_steps']} | {r['seconds']:.0f} | "
                 f"{r['val']['perplexity']:.2f} | {r['test']['perplexity']['perplexity']:.2f} | "
                 f"{r['test']['rouge']['rougeL_f']:.3f} |")
    e = res["export"]
    p = e["student_parity"]
    L.append(f"\n## Export and parity\n\nStudent ({res['ship_choice']['rule']}: {res['ship_choice']['arm']} seed "
             f"{res['ship_choice']['seed']}) exported by {e['student_export']['exporter']} "
             f"(task {e['student_export']['task']}). Parity on {p['sequences']} test sequences: max |Δ logit| "
             f"{p['max_abs_logit_diff']:.2e} (atol {p['atol']}), greedy agreement {p['greedy_agreement']:.3f} over "
             f"{p['new_tokens']} tokens. ONNX test perplexity {e['student_onnx_test_perplexity']:.3f}.")
    if "int8_dynamic" in e:
        q = e["int8_dynamic"]
        L.append(f"int8-dynamic: test perplexity {q['test_perplexity']:.3f}, greedy agreement with PyTorch "
                 f"{q['parity']['greedy_agreement']:.3f}, {q['onnx_bytes'] / 1e6:.1f} MB.")
    b = res["benchmark"]
    L.append(f"\n## Latency\n\n{b['method']}.\n")
    L.append("| model | batch | TTFT p50 ms | decode p50 ms | p90 | p99 | tokens/s |")
    L.append("|---|---|---|---|---|---|---|")
    for r in b["results"]:
        L.append(f"| {r['model']} | {r['batch_size']} | {r['ttft_p50_us'] / 1e3:.2f} | {r['decode_p50_us'] / 1e3:.2f} "
                 f"| {r['decode_p90_us'] / 1e3:.2f} | {r['decode_p99_us'] / 1e3:.2f} | {r['tokens_per_s']:.1f} |")
    L.append("\n| ratio | batch | TTFT | 95 % CI | decode p50 | 95 % CI |\n|---|---|---|---|---|---|")
    for r in b["ratios"]:
        L.append(f"| {r['numerator']} / {r['denominator']} | {r['batch_size']} | {r['ttft_ratio']:.2f} | "
                 f"{r['ttft_ci95']} | {r['decode_ratio']:.2f} | {r['decode_ci95']} |")
    if b.get("memory"):
        L.append("\nPeak memory (" + next(iter(b["memory"].values())).get("method", "") + "): " + ", ".join(
            f"{k} {v['model_peak_bytes'] / 2**20:.0f} MiB" if "model_peak_bytes" in v else f"{k} {v.get('error')}"
            for k, v in b["memory"].items()))
    en = res.get("energy") or {}
    if en.get("kwh_per_million_tokens_gross"):
        per = en["kwh_per_million_tokens_gross"]
        L.append("\nEnergy per 1 M generated tokens (" + str(en.get("label")) + "): " + ", ".join(
            f"{k} {v:.4f} kWh" for k, v in per.items() if v is not None)
            + (f"; teacher / student {en['teacher_over_student']:.2f}x" if en.get("teacher_over_student") else "")
            + f". {en.get('explanation') or ''} ({en['method']})")
    else:
        L.append("\nEnergy per 1 M generated tokens: " + en.get("note", "not measured") + ".")
    g = res["guard"]
    L.append(f"\n## Guard\n\nShips **{g['ships']}**: {g['reason']}.\n\nShipped folder {res['shipped']['folder']} "
             f"loads with {res['shipped']['loads_with']} and generated {res['shipped']['generated_tokens']} tokens: "
             f"{res['shipped']['sample']!r}.\n")
    timings = res.get("timings") or res.get("run", {}).get("stage_wall_s") or {}
    L.append("## Timings (s)\n\n" + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + "\n")
    return "\n".join(L)
