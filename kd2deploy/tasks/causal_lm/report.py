"""The causal-LM run's headline and verdict, its report (Markdown; HTML with plots) and the terminal summary,
all from ``results.json``'s content (``kd2deploy report`` re-renders them)."""

from __future__ import annotations

import html
from typing import Any


def _ms(x: dict[str, Any] | None, fmt: str = ".2f") -> str:
    if not x:
        return "n/a"
    sd = f" ± {x['sd']:{fmt}}" if x.get("sd") is not None else ""
    return f"{x['mean']:{fmt}}{sd}"


def _ci(lo_hi: list[float] | None) -> str:
    return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else ""


def shipped_perplexity(res: dict[str, Any]) -> float:
    e, ships = res["export"], res["guard"]["ships"]
    return e["student_onnx_test_perplexity"] if ships == "student" else e["variants"][ships]["test_perplexity"]


def build_headline(res: dict[str, Any], max_perplexity_ratio: float) -> dict[str, Any]:
    """The verdict about the file that ships, and the sentence answering "how much cheaper per token, at what
    quality cost, on this hardware", with this run's numbers and their intervals."""
    from kd2deploy.tasks.causal_lm.run import ratio_of

    ships = res["guard"]["ships"]
    r = ratio_of(res["benchmark"], "teacher-onnx", f"{ships}-onnx")
    q = res["quality"]
    en = res.get("energy") or {}
    s = res["distill"]["summary"]
    t = res["models"]["teacher"]["test"]
    t_ppl, s_ppl = t["perplexity"]["perplexity"], shipped_perplexity(res)
    faster = r is not None and r["decode_ci95"][0] > 1
    replaces = q["ci95"][1] <= max_perplexity_ratio
    quality = (f"test perplexity {q['ratio']:.2f}x the teacher's (95 % CI {q['ci95'][0]:.2f}-{q['ci95'][1]:.2f}; "
               f"budget {max_perplexity_ratio:g}x)")
    if r is None:
        verdict = "No verdict: the ONNX teacher was not timed (causal_lm.export.teacher: false)"
    elif not faster:
        verdict = f"Do not ship: {ships} is not faster per token than the ONNX teacher beyond noise"
    elif replaces:
        verdict = f"Ship {ships}: {r['decode_ratio']:.2f}x cheaper per token, {quality}"
    else:
        verdict = (f"Not a replacement yet: {ships} is {r['decode_ratio']:.2f}x cheaper per token, but its "
                   f"{quality}")
    parts = [verdict + "."]
    if r is not None:
        parts.append(f"Shipped {ships} (ONNX, KV cache, batch 1): {r['decode_ratio']:.2f}x faster per decoded token "
                     f"(95 % CI {r['decode_ci95'][0]:.2f}-{r['decode_ci95'][1]:.2f}), time to first token "
                     f"{r['ttft_ratio']:.2f}x ({r['ttft_ci95'][0]:.2f}-{r['ttft_ci95'][1]:.2f}) vs the ONNX teacher")
    if en.get("teacher_over_shipped"):
        parts.append(f"{en['teacher_over_shipped']:.2f}x less energy per generated token ({en.get('label')})")
    kd = s.get("kd", {})
    parts.append(f"test perplexity {t_ppl:.2f} -> {s_ppl:.2f}; ROUGE-L {t['rouge']['rougeL_f']:.3f} -> "
                 f"{_ms(kd.get('rougeL_f'), '.3f')} (KD students)")
    v = s.get("kd_vs_control")
    if v:
        parts.append(f"KD {'beats' if v['beats_beyond_spread'] else 'does not beat'} the cross-entropy control "
                     f"beyond the seed spread (test perplexity {_ms(s['ce']['test_perplexity'])} -> "
                     f"{_ms(kd['test_perplexity'])}, {len(res['distill']['seeds'])} seeds)")
    return {"text": " ".join([parts[0], "; ".join(parts[1:]) + "."]), "verdict": verdict, "ships": ships,
            "replaces_teacher": bool(faster and replaces), "faster": faster,
            "decode_ratio": r and r["decode_ratio"], "decode_ci95": r and r["decode_ci95"],
            "ttft_ratio": r and r["ttft_ratio"], "ttft_ci95": r and r["ttft_ci95"],
            "energy_ratio": en.get("teacher_over_shipped"), "energy_label": en.get("label"),
            "teacher_perplexity": t_ppl, "student_perplexity": s_ppl, "perplexity_ratio": q,
            "max_perplexity_ratio": max_perplexity_ratio, "kd_beats_control": v and v["beats_beyond_spread"]}


def render_markdown(res: dict[str, Any]) -> str:
    """Headline, KD vs control, per-seed table, export and parity, variants, latency, memory, energy, guard."""
    h = res["headline"]
    t = res["models"]["teacher"]
    d = res["distill"]
    L = [f"# {res['pipeline']['name']}: causal-lm run\n", f"**{h['text']}**\n",
         f"Verdict rule: the shipped file replaces the teacher when it is faster per token beyond noise and the upper "
         "end of the 95 % interval of its test perplexity over the teacher's is at most "
         f"{h['max_perplexity_ratio']:g}x "
         f"({res['quality']['method']}).\n",
         f"Teacher: {t['architecture']} {t['params'] / 1e6:.1f} M params, {t['layers']} layers ({t['as_given']}). "
         f"Data: {res['data']['source']} ({res['data']['format']}), packed sequences {res['data']['sequences']}. "
         f"Transfer set: {t['transfer'].get('transfer')}; teacher outputs: top-{t['store']['train']['top_k']} "
         f"logits per token.\n"]
    s = d["summary"]
    L.append(f"## KD vs the cross-entropy control (test split, mean ± sd over {len(d['seeds'])} seeds)\n")
    L.append(f"Loss {d['loss']} at T = {d['temperature']:g}, alpha = {d['alpha']:g} (alpha x divergence + (1 - alpha) "
             "x next-token CE); the control trains the same student from the same initialisation on the same batches "
             "with next-token CE only.\n")
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
                    else "**no win beyond the seed spread** ") + f"({v['rule']}).\n")
        pt = v.get("paired")
        if pt and pt.get("ci95"):
            L.append(f"Paired by seed on test log-perplexity (NLL per token): KD {pt['verdict']} the control, mean "
                     f"gap {pt['mean_diff']:.3f} nats (95 % CI {pt['ci95'][0]:.3f} to {pt['ci95'][1]:.3f}), KD lower "
                     f"on {pt['wins']}/{pt['n']} seeds, paired t-test p = {pt['p_t']:.3g}.\n")
    L.append("### Per seed\n\n| arm | seed | steps | on-policy steps | train s | val ppl | test ppl | ROUGE-L |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in d["runs"]:
        L.append(f"| {r['arm']} | {r['seed']} | {r['steps']} | {r['on_policy_steps']} | {r['seconds']:.0f} | "
                 f"{r['val']['perplexity']:.2f} | {r['test']['perplexity']['perplexity']:.2f} | "
                 f"{r['test']['rouge']['rougeL_f']:.3f} |")
    e = res["export"]
    p = e["student_parity"]
    c = d["ship_choice"]
    L.append(f"\n## Export and parity\n\nStudent ({c['rule']}: {c['arm']} seed {c['seed']}) exported by "
             f"{e['student_export']['exporter']} (task {e['student_export']['task']}). Parity on {p['sequences']} "
             f"test sequences: max |Δ logit| {p['max_abs_logit_diff']:.2e} (atol {p['atol']}), greedy agreement "
             f"{p['greedy_agreement']:.3f} over {p['new_tokens']} tokens. ONNX perplexity: validation "
             f"{e['student_onnx_val_perplexity']:.3f}, test {e['student_onnx_test_perplexity']:.3f}.\n")
    if e.get("variants"):
        L.append("| variant | made by | MB | val perplexity | test perplexity | greedy agreement with PyTorch |")
        L.append("|---|---|---|---|---|---|")
        for name, v in e["variants"].items():
            if "error" in v:
                L.append(f"| {name} | not made: {v['error']} | | | | |")
                continue
            L.append(f"| {name} | {v['maker']} | {v['onnx_bytes'] / 1e6:.1f} | {v['val_perplexity']:.3f} | "
                     f"{v['test_perplexity']:.3f} | {v['parity']['greedy_agreement']:.3f} |")
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
                 f"{_ci(r['ttft_ci95'])} | {r['decode_ratio']:.2f} | {_ci(r['decode_ci95'])} |")
    if b.get("memory"):
        L.append("\nPeak memory (" + next(iter(b["memory"].values())).get("method", "") + "): " + ", ".join(
            f"{k} {v['model_peak_bytes'] / 2**20:.0f} MiB" if "model_peak_bytes" in v else f"{k} {v.get('error')}"
            for k, v in b["memory"].items()) + ".")
    en = res.get("energy") or {}
    if en.get("kwh_per_million_tokens_gross"):
        L.append("\n## Energy per 1 M generated tokens\n\n" + ", ".join(
            f"{k} {v:.4f} kWh" for k, v in en["kwh_per_million_tokens_gross"].items() if v is not None)
            + f" (**{en.get('label')}**)"
            + (f"; teacher / shipped {en['teacher_over_shipped']:.2f}x" if en.get("teacher_over_shipped") else "")
            + f". {en.get('explanation') or ''} Method: {en['method']}.")
    else:
        L.append("\n## Energy per 1 M generated tokens\n\n" + en.get("note", "not measured") + ".")
    g = res["guard"]
    sh = res["shipped"]
    L.append(f"\n## Guard and the shipped folder\n\nShips **{g['ships']}** ({g['rule']}): {g['reason']}.\n\n"
             f"`{res['ship']['path']}/` (model.onnx sha256 {res['ship']['sha256'][:16]}…) loads with "
             f"{sh['loads_with']} and generated {sh['generated_tokens']} tokens: {sh['sample']!r}.\n")
    timings = res.get("run", {}).get("stage_wall_s") or {}
    if timings:
        L.append("## Stage wall times (s)\n\n" + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + "\n")
    if res.get("run", {}).get("reused"):
        L.append("Reused from the stage cache: " + ", ".join(res["run"]["reused"]) + ".\n")
    return "\n".join(L)


def perplexity_plot(res: dict[str, Any]) -> str | None:
    """Test perplexity of every seed per arm (log scale), the teacher as a line."""
    from kd2deploy.report.plots import COLORS, figure, png_uri

    runs = res["distill"]["runs"]
    arms = sorted({r["arm"] for r in runs})
    fig, ax = figure(5.6, 3.2)
    for i, arm in enumerate(arms):
        ys = [r["test"]["perplexity"]["perplexity"] for r in runs if r["arm"] == arm]
        ax.scatter([i] * len(ys), ys, color=COLORS.get(arm, "#8c8c8c"), zorder=3, label=f"{arm} ({len(ys)} seeds)")
    ax.axhline(res["models"]["teacher"]["test"]["perplexity"]["perplexity"], color=COLORS["teacher"], ls="--",
               label="teacher")
    ax.set_xticks(range(len(arms)), arms)
    ax.set_yscale("log")
    ax.set_ylabel("test perplexity (log)")
    ax.set_title("KD vs the cross-entropy control, every seed")
    ax.legend(fontsize=8)
    return png_uri(fig)


def decode_plot(res: dict[str, Any]) -> str | None:
    """Per-token decode latency p50 with p90 / p99 marks per model at batch 1."""
    from kd2deploy.report.plots import figure, png_uri

    rows = [r for r in res["benchmark"]["results"] if r["batch_size"] == 1]
    if not rows:
        return None
    fig, ax = figure(5.6, 3.2)
    names = [r["model"] for r in rows]
    ax.bar(names, [r["decode_p50_us"] / 1e3 for r in rows], color="#dd8452", label="p50")
    ax.scatter(names, [r["decode_p90_us"] / 1e3 for r in rows], marker="_", s=300, color="k", label="p90")
    ax.scatter(names, [r["decode_p99_us"] / 1e3 for r in rows], marker="x", color="k", label="p99")
    ax.set_ylabel("ms per decoded token")
    ax.set_title("decode latency through the KV cache, batch 1")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.legend(fontsize=8)
    return png_uri(fig)


def markdown_to_html(markdown: str, title: str, extra: str = "") -> str:
    """A standalone HTML page of ``markdown`` (markdown-it, CommonMark with tables) and ``extra`` HTML after it."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>body{{"
            "font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}</style></head><body>"
            f"{body}{extra}</body></html>")


def render_html(res: dict[str, Any]) -> str:
    """The Markdown report as HTML, with the plots."""
    plots = "".join(f'<figure><img alt="{alt}" src="{uri}"></figure>'
                    for alt, uri in (("test perplexity per seed", perplexity_plot(res)),
                                     ("decode latency", decode_plot(res))) if uri)
    return markdown_to_html(render_markdown(res), res["pipeline"]["name"], f"<h2>Plots</h2>{plots}")


def summary_table(res: dict[str, Any]) -> tuple[str, list[str], list[tuple[str, ...]]]:
    """The terminal summary: per exported model, test perplexity, TTFT and decode p50 at batch 1, energy."""
    e, b = res["export"], res["benchmark"]
    ppl = {"teacher": res["models"]["teacher"]["test"]["perplexity"]["perplexity"],
           "student": e["student_onnx_test_perplexity"],
           **{k: v["test_perplexity"] for k, v in e.get("variants", {}).items() if "error" not in v}}
    energy = (res.get("energy") or {}).get("kwh_per_million_tokens_gross") or {}
    rows = []
    for r in b["results"]:
        if r["batch_size"] != 1:
            continue
        name = r["model"].removesuffix("-onnx").removesuffix("-eager")
        kwh = energy.get(r["model"])
        rows.append((r["model"], f"{ppl[name]:.2f}" if name in ppl else "–", f"{r['ttft_p50_us'] / 1e3:.1f}",
                     f"{r['decode_p50_us'] / 1e3:.2f}", f"{kwh:.4f}" if kwh else "–"))
    return ("kd2deploy summary (causal-lm, batch 1)",
            ["model", "test perplexity", "TTFT p50 ms", "decode p50 ms/token", "kWh / 1 M tokens"], rows)


def compare_markdown(ra: dict[str, Any], rb: dict[str, Any], fa: Any = None, fb: Any = None) -> str:
    """Two causal-lm runs side by side (e.g. the same pipeline on a laptop and on an edge board): the verdicts,
    per-token latency per model with B / A, the teacher / student ratios with whether their intervals overlap,
    quality, energy and what differs in the environment."""

    def lat(r: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
        return {(x["model"], x["batch_size"]): x for x in r["benchmark"]["results"]}

    def rat(r: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
        return {(x["numerator"], x["denominator"], x["batch_size"]): x for x in r["benchmark"]["ratios"]}

    def env(r: dict[str, Any]) -> dict[str, Any]:
        e = r.get("environment", {})
        return {"CPU": e.get("cpu"), "logical cores": e.get("logical_cores"), "platform": e.get("platform"),
                "generation threads": r["pipeline"]["resolved"]["causal_lm"]["bench"]["threads"],
                "energy label": (r.get("energy") or {}).get("label"),
                **{k: v for k, v in (e.get("packages") or {}).items() if k in ("onnxruntime", "torch", "optimum")}}

    ha, hb = ra["headline"], rb["headline"]
    same = ra["pipeline"]["config_hash"] == rb["pipeline"]["config_hash"]
    L = [f"# kd2deploy comparison (causal-lm) — A: {ra['pipeline']['name']} vs B: {rb['pipeline']['name']}\n",
         f"- **A**: `{fa or ra['run']['dir']}`, {ra['environment'].get('cpu')}",
         f"- **B**: `{fb or rb['run']['dir']}`, {rb['environment'].get('cpu')}\n",
         "**" + ("The same pipeline configuration (config hash equal)." if same else
                 "Different pipeline configurations: the numbers compare different runs, not only machines.") + "**\n",
         "## Headline\n", "| | A | B |", "|---|---|---|",
         f"| verdict | {ha['verdict']} | {hb['verdict']} |",
         f"| ships | {ha['ships']} | {hb['ships']} |"]
    for key, label in (("decode_ratio", "faster per decoded token (teacher ÷ shipped)"),
                       ("ttft_ratio", "time to first token (teacher ÷ shipped)")):
        ci = key.replace("ratio", "ci95")
        L.append(f"| {label} | " + " | ".join(f"{h[key]:.2f}x {_ci(h[ci])}" if h[key] else "–" for h in (ha, hb))
                 + " |")
    L.append("| energy per token (teacher ÷ shipped) | " + " | ".join(
        f"{h['energy_ratio']:.2f}x ({h['energy_label']})" if h["energy_ratio"] else "–" for h in (ha, hb)) + " |")
    L.append("| test perplexity, teacher -> shipped | " + " | ".join(
        f"{h['teacher_perplexity']:.2f} -> {h['student_perplexity']:.2f}" for h in (ha, hb)) + " |")
    L += ["\n## Per-token decode latency, p50 ms\n", "| model | batch | A | B | B ÷ A |", "|---|---:|---:|---:|---:|"]
    la, lb = lat(ra), lat(rb)
    for key in sorted(set(la) | set(lb)):
        a, b = la.get(key), lb.get(key)
        ratio = f"{b['decode_p50_us'] / a['decode_p50_us']:.2f}x" if a and b else "–"
        L.append(f"| {key[0]} | {key[1]} | " + " | ".join(f"{x['decode_p50_us'] / 1e3:.2f}" if x else "–"
                                                           for x in (a, b)) + f" | {ratio} |")
    L += ["\n| decode ratio | batch | A [95 % CI] | B [95 % CI] | CIs overlap |", "|---|---:|---:|---:|---|"]
    qa, qb = rat(ra), rat(rb)
    for key in sorted(set(qa) & set(qb)):
        a, b = qa[key], qb[key]
        overlap = a["decode_ci95"][0] <= b["decode_ci95"][1] and b["decode_ci95"][0] <= a["decode_ci95"][1]
        L.append(f"| {key[0]} / {key[1]} | {key[2]} | {a['decode_ratio']:.2f} {_ci(a['decode_ci95'])} | "
                 f"{b['decode_ratio']:.2f} {_ci(b['decode_ci95'])} | {'yes' if overlap else 'no'} |")
    L += ["\n## Environment\n", "| | A | B | same |", "|---|---|---|---|"]
    ea, eb = env(ra), env(rb)
    for k in dict.fromkeys([*ea, *eb]):
        L.append(f"| {k} | {ea.get(k)} | {eb.get(k)} | {'yes' if ea.get(k) == eb.get(k) else 'no'} |")
    return "\n".join(L) + "\n"
