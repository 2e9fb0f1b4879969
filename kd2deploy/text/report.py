"""The text pipeline's report: Markdown (and the same content as HTML) from its results.

The tensor report's templates read fields the text task does not have (controls, FLOP floors, resume), so the
text task renders its own short report with the same headline-first order.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from kd2deploy.rundir import write_atomic


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def _ms(us: float | None) -> str:
    return "–" if us is None else f"{us / 1e3:.2f}"


def render_markdown(res: dict[str, Any]) -> str:
    h = res.get("headline", {})
    data, bench = res.get("data", {}), res.get("benchmark", {})
    teacher = res.get("models", {}).get("teacher", {})
    distill = res.get("distill", {})
    st = bench.get("settings", {})
    tok = bench.get("tokenizer", {})
    lines = [f"# kd2deploy text report: {res['pipeline']['name']}", "", f"**{h.get('text', '')}**", ""]
    ship = res.get("ship", {})
    if ship:
        sel = ship.get("selection") or {}
        lines += [f"Shipped: `{ship['folder']}/` ← **{ship['source']}** (test accuracy {_pct(ship['accuracy'])}). "
                  + (sel.get("reason", "") + "." if sel else ""), ""]
    lines += ["## Data", "",
              f"- source: `{data.get('path_as_given')}` ({data.get('source')})",
              f"- labels (sorted, saved as config.id2label): {', '.join(data.get('labels', []))}",
              f"- train / val / test: {data.get('train')} / {data.get('val')} / {data.get('test')} "
              f"({data.get('split')}, seed {data.get('split_seed')})",
              f"- max_seq_len {data.get('max_seq_len')} tokens: the test texts average "
              f"{tok.get('tokens_mean_untruncated', 0):.0f} tokens untruncated (max "
              f"{tok.get('tokens_max_untruncated', '–')}); {tok.get('share_truncated', 0):.0%} of them are "
              "truncated in training, evaluation and benchmark", ""]
    lines += ["## Models", "", "| model | layers | params | test acc (PyTorch) | test acc (ONNX) | max abs Δ logit |",
              "|---|---|---|---|---|---|"]
    for name in ("teacher", "student"):
        e = res.get("export", {}).get(name, {})
        p = e.get("parity", {})
        m = bench.get("models", {}).get(name, {})
        lines.append(f"| {name} | {m.get('layers', '–')} | {m.get('params', 0):,} | {_pct(p.get('accuracy_torch'))} "
                     f"| {_pct(p.get('accuracy_onnx'))} | {p.get('max_abs_diff', 0):.2g} |")
    first = (distill.get("students") or [{}])[0]
    shape = ", ".join(f"{k} {first[k]}" for k in ("num_layers", "hidden_size", "init", "layer_map") if k in first)
    terms = ", ".join(f"{t['loss']} x{t['weight']:g}" for t in distill.get("terms", []))
    emb = {n: bench.get("models", {}).get(n, {}).get("embedding_params") for n in ("teacher", "student")}
    if all(emb.values()):
        lines += ["", f"Embeddings hold {emb['teacher']:,} of the teacher's and {emb['student']:,} of the student's "
                  "parameters: removing layers shrinks the rest, and the latency, far more than the file."]
    lines += ["", f"- teacher: `{teacher.get('as_given')}` ({teacher.get('architecture')}); {teacher.get('why')}.",
              f"- student: {shape}; losses {terms} (T {distill.get('temperature')}, alpha {distill.get('alpha')}); "
              f"seeds {distill.get('seeds')}, test acc mean {_pct(distill.get('test_accuracy_mean'))} "
              f"± {distill.get('test_accuracy_sd', 0):.2%}",
              f"- export: {res.get('export', {}).get('student', {}).get('exporter')}; dynamic batch and sequence "
              "axes; tokenizer.json beside model.onnx", ""]
    lines += ["## Latency (onnxruntime, model only)", "",
              f"{st.get('provider')}, {st.get('intra_op_threads')} intra-op / {st.get('inter_op_threads')} inter-op "
              f"thread(s), graph optimisation {st.get('graph_optimization')}, {st.get('rounds')} interleaved rounds; "
              f"{st.get('inputs')}. Times in ms.", "",
              "| model | batch | tokens | p50 | p90 | p99 | p50 95 % CI |", "|---|---|---|---|---|---|---|"]
    for r in bench.get("results_all", []):
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['seq_len']} | {_ms(r['p50_us'])} | {_ms(r['p90_us'])} "
                     f"| {_ms(r['p99_us'])} | {_ms(r['p50_ci95_us'][0])}–{_ms(r['p50_ci95_us'][1])} |")
    lines += ["", "| speed-up (p50 ratio) | batch | tokens | ratio | 95 % CI |", "|---|---|---|---|---|"]
    for r in bench.get("ratios_all", []):
        lines.append(f"| {r['numerator']} / {r['denominator']} | {r['batch_size']} | {r['seq_len']} | "
                     f"{r['ratio_p50']:.2f}x | {r['ci95'][0]:.2f}–{r['ci95'][1]:.2f} |")
    if tok:
        p50 = {(r["model"], r["batch_size"]): r["p50_us"] for r in bench.get("results", [])}
        b1 = [b for b in st.get("batch_sizes", []) if b == 1]
        lines += ["", "## Tokenisation (measured separately)", "",
                  f"{tok['method']}: p50 {_ms(tok['p50_us'])} ms, mean {_ms(tok['mean_us'])} ms per text.", ""]
        if b1 and ("teacher", 1) in p50:
            t_e2e = p50[("teacher", 1)] + tok["p50_us"]
            s_e2e = p50[("student", 1)] + tok["p50_us"]
            lines.append(f"The speed-ups above are **model only; tokenisation is not included**. Including it "
                         f"(tokenise + infer, batch 1, p50 sums): teacher {_ms(t_e2e)} ms, student {_ms(s_e2e)} ms, "
                         f"{t_e2e / s_e2e:.2f}x.")
            shipped = ship.get("source")
            if shipped and (shipped, 1) in p50 and shipped != "student":
                lines.append(f"Shipped {shipped}: {_ms(p50[(shipped, 1)])} ms model, "
                             f"{_ms(p50[(shipped, 1)] + tok['p50_us'])} ms with tokenisation.")
    variants = res.get("variants", {})
    if variants:
        lines += ["", "## Variants and the shipping guard", ""]
        for model, e in variants.items():
            sel = e.get("selection") or {}
            lines.append(f"- {model}: judged at batch {e.get('judged_at', {}).get('batch_size')}, "
                         f"{e.get('judged_at', {}).get('seq_len')} tokens; ships **{sel.get('shipped')}**")
            for v in e.get("variants", []):
                lines.append(f"  - {v['label']} ({v['kind']}): accuracy {_pct(v['accuracy'])}, "
                             f"{v['size_bytes'] / 1e6:.1f} MB, argmax agreement with FP32 "
                             f"{v['parity']['argmax_agreement']:.2%}")
            for r in sel.get("rejected", []):
                lines.append(f"  - not shipped: {r['name']}: {r['reason']}")
    energy = res.get("energy", {})
    if energy.get("models"):
        lines += ["", "## Energy", "",
                  f"CodeCarbon, {energy.get('label')} ({energy.get('explanation', '')}); batch "
                  f"{next(iter(energy['models'].values())).get('batch_size')}, {energy.get('seq_len')} tokens, "
                  f"windows of {energy.get('window_s')} s x {energy.get('repeats')}.", ""]
        for name, m in energy["models"].items():
            j = (m.get("j_per_inference_active") or {}).get("mean") or (m.get("j_per_inference_gross") or {}).get(
                "mean")
            lines.append(f"- {name}: {j * 1e3:.3f} mJ per inference" if j else f"- {name}: not resolved")
        for t in energy.get("training", []):
            if t.get("energy_kwh") is not None:
                lines.append(f"- {t['label']}: {t['energy_kwh'] * 3.6e6 / 1e3:.2f} kJ over {t['duration_s']:.0f} s")
    check = ship.get("load_check", {})
    if check:
        lines += ["", "## The shipped folder", "",
                  f"Files: {', '.join(ship.get('files', []))}. One test text predicted through plain onnxruntime + "
                  f"tokenizers: `{check.get('plain_onnxruntime')}`; through optimum "
                  f"ORTModelForSequenceClassification: `{check.get('optimum', check.get('optimum_error'))}`."]
    if res.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in res["warnings"]]
    run = res.get("run", {})
    env = res.get("environment", {})
    lines += ["", "## Run", "",
              f"- wall time {run.get('wall_s', 0):.0f} s; stages "
              + ", ".join(f"{k} {v:.0f} s" for k, v in run.get("stage_wall_s", {}).items()),
              f"- {env.get('cpu')}, {env.get('logical_cores')} logical cores, Python {env.get('python')}; "
              + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v),
              f"- config hash {res['pipeline']['config_hash'][:12]}; not built for text: stage cache / resume, "
              "controls, sweep / compare", ""]
    return "\n".join(lines)


def write_text_reports(res: dict[str, Any], run_dir: Path, formats: list[str]) -> list[Path]:
    md = render_markdown(res)
    out = []
    if "md" in formats:
        out.append(write_atomic(Path(run_dir) / "report.md", md))
    if "html" in formats:
        body = html.escape(md)
        out.append(write_atomic(Path(run_dir) / "report.html",
                                "<!doctype html><meta charset='utf-8'><title>kd2deploy text report</title>"
                                f"<pre style='white-space:pre-wrap;font-family:sans-serif'>{body}</pre>\n"))
    return out
