"""The report's view of results.json: the headline, the verdict, and the rows of every table."""

from __future__ import annotations

from typing import Any

import yaml


def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _budget(results: dict[str, Any]) -> float:
    return _get(results, "pipeline", "resolved", "report", "max_accuracy_drop_pp", default=1.0)


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    """The verdict about ship/student.onnx: the headline's (:mod:`kd2deploy.report.verdict`, with intervals), or
    for an older results.json the point-estimate rule it was written with.

    Returns:
        ``{"ship": bool, "decision": str, "title": str, "reasons": [str], "text": str, ...}``.
    """
    h = results.get("headline") or {}
    if h.get("verdict"):
        return h["verdict"]
    budget = _budget(results)
    reasons = []
    delta = h.get("accuracy_delta_pp")
    if delta is None:
        reasons.append("no accuracy comparison")
    elif delta < -budget:
        reasons.append(f"accuracy {delta:+.2f} pp exceeds the allowed drop of {budget:g} pp")
    speed = h.get("speedup_p50_ratio")
    ci = _get(h, "speedup_p50", str(h.get("speedup_p50_batch")), "ci95") or [None, None]
    if speed is None:
        reasons.append("no latency comparison")
    elif ci[0] is not None and ci[0] <= 1.0:
        reasons.append(
            f"the student is not reliably faster (p50 ratio {speed:.2f}x, 95 % CI {ci[0]:.2f}–{ci[1]:.2f})"
        )
    ship = not reasons
    title = "Ship the student" if ship else "Do not ship yet"
    detail = h.get("text", "").removeprefix("student: ") if ship else "; ".join(reasons)
    return {"ship": ship, "decision": "ship" if ship else "do not ship", "title": title, "reasons": reasons,
            "evidence": [], "text": f"{title}: {detail}"}


def _kpi(id_: str, title: str, sub: str, label: str | None = None) -> dict[str, Any]:
    """One headline tile; ``value`` None shows a dash, ``good`` None leaves it uncoloured."""
    return {"id": id_, "title": title, "value": None, "good": None, "label": label, "sub": sub}


def _kpis(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The three numbers a reader should take away: speed-up, energy saving, accuracy cost."""
    h = results.get("headline") or {}
    speed, b = h.get("speedup_p50_ratio"), h.get("speedup_p50_batch")
    ci = _get(h, "speedup_p50", str(b), "ci95") or [None, None]
    speed_kpi = _kpi("speedup", "Speed-up", "no teacher/student latency comparison")
    if speed is not None:
        floor = _get(h, "speedups", "teacher", str(b), "aa_floor") or 1.0
        best = h.get("teacher_best")
        best_row = _get(h, "speedups", "teacher_best", str(b)) if best and best != "teacher" else None
        speed_kpi.update(
            value=f"{speed:.2f}×" + ("" if speed >= 1 else " (slower)"),
            good=(ci[0] if ci[0] is not None else speed) > max(1.0, floor),
            sub=f"{_get(h, 'shipped', 'file', default='the student')} vs the FP32 teacher, p50 at batch {b}"
            + (f"; 95 % CI {ci[0]:.2f}–{ci[1]:.2f}" if ci[0] is not None else "")
            + (f" (A/A floor {floor:.2f})" if floor > 1 else "")
            + (f". vs {best} (best teacher without KD): {best_row['ratio_p50']:.2f}× "
               f"[{best_row['ci95'][0]:.2f}–{best_row['ci95'][1]:.2f}]" if best_row else
               (". No teacher variant beat the FP32 teacher" if best == "teacher" and results.get("variants")
                else "")),
        )
    e_ratio, basis = h.get("energy_ratio"), h.get("energy_basis", "gross")
    energy_kpi = _kpi(
        "energy", "Energy per inference", "not measured (energy.enabled: false)", h.get("energy_label")
    )
    if _get(results, "energy", "enabled", default=True) is not False:
        energy_kpi["sub"] = "teacher/student ratio not resolvable (see warnings)"
    if e_ratio:
        t, s = (
            _energy_mj(_get(results, "energy", "models", n, default={}), basis)
            for n in ("teacher", "student")
        )
        energy_kpi.update(
            value=f"{e_ratio:.2f}× less" if e_ratio >= 1 else f"{1 / e_ratio:.2f}× more",
            # a modelled ratio follows run time by construction: shown, but not coloured as a finding
            good=(e_ratio > 1) if h.get("energy_label") == "measured" else None,
            sub=f"{basis} energy, teacher ÷ student"
            + (f"; {t:.3g} vs {s:.3g} mJ" if t and s else "")
            + (
                "; modelled: it follows run time by construction"
                if h.get("energy_label") == "modelled"
                else ""
            ),
        )
    delta, budget = h.get("accuracy_delta_pp"), _budget(results)
    acc_kpi = _kpi("accuracy", "Accuracy change", "no teacher/student accuracy comparison")
    if delta is not None:
        paired = h.get("paired_vs_teacher")
        acc = h.get("accuracy") or {}

        def ci(rec):
            return f" [{100 * rec['ci95'][0]:.1f}–{100 * rec['ci95'][1]:.1f}]" if rec and rec.get("ci95") else ""

        acc_kpi.update(
            value=f"{delta:+.2f} pp",
            # resolved within (green), resolved beyond (red), or unresolved (uncoloured): as the verdict decides
            good=((True if paired["ci95"][0] > -budget / 100 else (False if paired["ci95"][1] < -budget / 100
                                                                    else None))
                  if paired else delta >= -budget),
            sub=(f"95 % CI {100 * paired['ci95'][0]:+.2f} to {100 * paired['ci95'][1]:+.2f} pp (paired, "
                 f"{paired['n']} test samples, McNemar p = {paired['p_mcnemar']:.2g}); " if paired else "")
            + f"shipped {100 * h['student_accuracy']:.2f} %{ci(acc.get('shipped'))} vs teacher "
            f"{100 * h['teacher_accuracy']:.2f} %{ci(acc.get('teacher'))} (ONNX, test); allowed drop {budget:g} pp",
        )
    return [speed_kpi, energy_kpi, acc_kpi]


def _glance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The first screen's comparison: the FP32 teacher (today), the best teacher build without distillation (the
    guard's pick among the teacher's variants, when one pays) and the file that ships."""
    h = results.get("headline") or {}
    acc = h.get("accuracy") or {}
    b = h.get("speedup_p50_batch") or 1
    lat = {(r["model"], r["batch_size"]): r for r in _get(results, "benchmark", "results", default=[])}
    ship = _get(h, "shipped", "label", default="student")
    best = h.get("teacher_best", "teacher")
    rows = [("teacher", "FP32 teacher (what you run today)", acc.get("teacher"))]
    if best != "teacher":
        rows.append((best, f"{best} (best teacher build without distillation)", acc.get("teacher_best")))
    arm = _get(h, "shipped", "arm", default="kd")
    rows.append((ship, f"{_get(h, 'shipped', 'file', default='shipped')} = {ship}"
                 + ("" if arm == "kd" else f" ({arm} control)"),
                 acc.get("shipped")))
    out = []
    for label, name, a in rows:
        model = label.split(".", 1)[0]
        size = (_get(results, "export", model, "size_bytes") if label == model else next(
            (v.get("size_bytes") for v in _get(results, "variants", model, "variants", default=[])
             if v["label"] == label), None))
        r = lat.get((label, b))
        params = (_get(results, "models", "teacher", "params") if model == "teacher"
                  else _get(results, "distill", "student_params"))
        out.append({"label": label, "name": name, "acc": (a or {}).get("accuracy"), "acc_ci": (a or {}).get("ci95"),
                    "p50": r["p50_us"] if r else None, "p50_ci": r["p50_ci95_us"] if r else None, "batch": b,
                    "params": params, "size_kb": size / 1024 if size else None, "shipped": label == ship})
    return out


def _mib(n: int | None) -> float | None:
    return None if n is None else n / 2**20


def _models_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    bench_models = _get(results, "benchmark", "models", default={})
    energy = _get(results, "energy", "models", default={})
    basis = _get(results, "headline", "energy_basis", default="gross")
    lat = {(r["model"], r["batch_size"]): r for r in _get(results, "benchmark", "results", default=[])}
    for name, exp in results.get("export", {}).items():
        par = exp["parity"]
        bm = bench_models.get(name) or bench_models.get("student" if name.startswith("student") else name, {})
        arch = (
            results["models"]["teacher"]["arch"]
            if name == "teacher"
            else _get(results, "distill", "student_arch")
        )
        # the scratch control has the student's architecture, hence its latency
        bench_name = "student" if name == "student_scratch" else name
        b1 = lat.get((bench_name, 1)) or next(
            (r for (m, _), r in sorted(lat.items()) if m == bench_name), None
        )
        rows.append(
            {
                "name": name,
                "arch": arch,
                "params": bm.get("params"),
                "flops": bm.get("flops_per_sample"),
                "size_kb": exp["size_bytes"] / 1024,
                "acc_torch": par["accuracy_torch"],
                "acc_onnx": par["accuracy_onnx"],
                "max_abs_diff": par["max_abs_diff"],
                "argmax_agreement": par["argmax_agreement"],
                "sha256": exp["sha256"],
                "file": exp["path"],
                "p50": b1["p50_us"] if b1 else None,
                "p50_batch": b1["batch_size"] if b1 else None,
                "floor_us": bm.get("floor_us"),
                "memory_mib": _mib((bm.get("memory") or {}).get("peak_rss_bytes")),
                "session_mib": _mib((bm.get("memory") or {}).get("session_peak_bytes")),
                "energy_mj": _energy_mj(energy.get(name, {}), basis),
            }
        )
    return rows


def _distill_rows(results: dict[str, Any]) -> dict[str, Any]:
    d = results.get("distill") or {}
    if not d:
        return {}
    arms = d.get("arms", [])
    per_seed = [
        {"seed": s["seed"], **{a: s.get(a, {}).get("test_accuracy") for a in arms}} for s in d["per_seed"]
    ]
    summary = [
        {"arm": a, **d["summary"][a]} for a in ("kd", "scratch", "label_smoothing") if a in d["summary"]
    ]
    for row in summary:  # one seed has no spread: show a dash, not 0.00 %
        row["sd"] = row["sd"] if row.get("n", 1) > 1 else None
    s = d["summary"]
    beats = {}
    from kd2deploy.report.verdict import distillation

    paired = distillation(results)["vs"] if _get(results, "headline", "verdict") else None
    for ctrl in ("scratch", "label_smoothing") if paired is not None else ():
        if ctrl in paired:
            p = paired[ctrl]
            beats[ctrl] = {"diff_pp": 100 * p["mean_diff"], "spread_pp": None, "verdict": p["verdict"],
                           "ci_pp": None if p["ci95"] is None else [100 * p["ci95"][0], 100 * p["ci95"][1]],
                           "p_t": p["p_t"], "p_sign": p["p_sign"], "wins": p["wins"], "n": p["n"]}
    for ctrl in ("scratch", "label_smoothing") if paired is None else ():
        if ctrl in s and "kd" in s:
            diff = s["kd"]["mean"] - s[ctrl]["mean"]
            # with one seed there is no spread to judge a difference by: say only which side it falls on
            if min(s["kd"].get("n", 1), s[ctrl].get("n", 1)) < 2:
                beats[ctrl] = {
                    "diff_pp": 100 * diff,
                    "spread_pp": None,
                    "verdict": "is above" if diff > 0 else ("is below" if diff < 0 else "equals"),
                }
                continue
            spread = max(s["kd"]["sd"], s[ctrl]["sd"])
            beats[ctrl] = {
                "diff_pp": 100 * diff,
                "spread_pp": 100 * spread,
                "verdict": "beats" if diff > spread else ("loses to" if -diff > spread else "ties with"),
            }
    times: dict[str, float | None] = {}
    for a in arms:
        ts = [s.get(a, {}).get("train_time_s") for s in d["per_seed"] if s.get(a, {}).get("train_time_s")]
        times[a] = sum(ts) / len(ts) if ts else None
    return {
        "per_seed": per_seed,
        "n_seeds": len(per_seed),
        "summary": summary,
        "arms": arms,
        "gap_closed": d.get("gap_closed"),
        "beats": beats,
        "shipped_seed": d.get("shipped_seed"),
        "selection": d.get("selection"),
        "temperature": d.get("temperature"),
        "alpha": d.get("alpha"),
        "loss": d.get("loss"),
        "train_time_s": times,
        "energy": d.get("energy"),
        "setup": _distill_setup(results),
    }


def _distill_setup(results: dict[str, Any]) -> list[str]:
    """Sentences on what the KD student learnt from: ensemble members, labels seen, loss terms, transfer set."""
    d = results.get("distill") or {}
    teacher = _get(results, "models", "teacher", default={})
    out = []
    members = teacher.get("members") or []
    if members:
        accs = ", ".join(f"{m['arch']} seed {m['seed']} {100 * m['test_accuracy_torch']:.2f} %" for m in members)
        out.append(f"Teacher: an ensemble of {len(members)} ({accs}); the ensemble (mean of the members' "
                   f"probabilities) scores {100 * teacher['test_accuracy_torch']:.2f} % on test and is the exported, "
                   "benchmarked teacher.")
    labels = d.get("labels") or {}
    if labels and labels.get("labelled_fraction", 1.0) < 1:
        seen = (d.get("teacher") or {}).get("labels_seen", "unknown")
        seen_text = {"all": "the teacher was trained on every label (an upper bound, not a few-label setting)",
                     "labelled": "the teacher was trained on the labelled samples only"}.get(seen, f"teacher: {seen}")
        out.append(f"Few labels: {labels['n_labelled']} of {labels['n_train']} training samples keep their labels "
                   f"({100 * labels['labelled_fraction']:g} %); {seen_text}. KD: {labels['kd']}; controls: "
                   f"{labels['controls']}.")
    terms = d.get("terms") or []
    if len(terms) > 1 or any(t["loss"] in ("hint", "ce") for t in terms):
        parts = []
        for t in terms:
            if t["loss"] == "hint":
                parts.append(f"{t['weight']:g} x hint({t['student_layer']} -> {t['teacher_layer']}, via an adapter)")
            elif t["loss"] == "ce":
                parts.append(f"{t['weight']:g} x CE")
            elif "temperature" in t:
                parts.append(f"{t['weight']:g} x {t['loss']}(T={t['temperature']:g}, alpha={t['alpha']:g})")
            else:  # e.g. hidden-state or attention matching
                parts.append(f"{t['weight']:g} x {t['loss']}")
        out.append("KD loss: " + " + ".join(parts) + ".")
    if d.get("options"):
        out.append("KD loss options: " + ", ".join(f"{k} = {v}" for k, v in d["options"].items()) + ".")
    if d.get("teacher_calibration"):
        out.append(f"Teacher calibrated: its logits divided by T = {d['teacher_calibration']['temperature']:.3f} "
                   f"({d['teacher_calibration']['fitted_on']}).")
    if d.get("munge"):
        m = d["munge"]
        out.append(f"Transfer set: MUNGE (Bucilua et al. 2006), {m['passes']} synthetic sample(s) per real one "
                   f"(p = {m['p']:g}, s = {m['s']:g}), {m['n_transfer']} samples labelled by the teacher; controls: "
                   f"{m['controls']}.")
    search = d.get("search")
    if search and search.get("skipped"):
        out.append(f"Settings search (distill.search) not run: {search['skipped']}.")
    elif search:
        parts = []
        for fam, f in search.get("families", {}).items():
            best = f.get("best")
            space = f.get("space") or {}
            tried = ", ".join(f"{k} in {v}" for k, v in space.items() if len(v) > 1)
            chosen = "nothing complete" if not best else (f"val {100 * best['val_accuracy']:.2f} % with "
                                                         + ", ".join(f"{k} = {best['params'][k]}" for k in space
                                                                     if len(space[k]) > 1 and k in best["params"]))
            parts.append(f"{fam} ({tried}): {len(f['trials'])} trials ({f['n_pruned']} pruned) in "
                         f"{f['spent_s']:.0f} s, chose {chosen}")
        if parts:
            out.append("Settings searched on the validation split (Optuna, same budget per arm family; a family "
                       "with nothing to choose trains as written): " + "; ".join(parts)
                       + f". Selection: {search.get('selection')}.")
        else:
            out.append("Settings search (distill.search, on): nothing to choose: the pipeline file sets the "
                       "temperature, alpha and label-smoothing strength, and lists no candidates under "
                       "distill.search, so they train as written.")
    conv = d.get("convergence")
    if conv:
        out.append("Convergence and smoothness (validation curves, mean over seeds): " + "; ".join(conv["sentences"])
                   + ". Energy to a target: the students stage's training energy shared out by training time.")
    le = d.get("label_efficiency")
    if le:
        rows = []
        for r in le["rows"]:
            arms = ", ".join(f"{a} {100 * v['mean']:.2f} %" for a, v in r["arms"].items())
            rows.append(f"{100 * r['fraction']:g} % labels: teacher {100 * r['teacher_test_accuracy']:.2f} %, {arms}")
        out.append("Label efficiency (test accuracy, mean over seeds; each teacher saw only its fraction's labels): "
                   + "; ".join(rows) + ". Plot: label_efficiency/label_efficiency.png.")
    transfer = d.get("transfer") or {}
    if transfer.get("shift_px") or transfer.get("mixup_alpha"):
        out.append(f"Transfer set: random shifts up to {transfer['shift_px']} px, mixup alpha "
                   f"{transfer['mixup_alpha']:g}, for every arm alike; teacher outputs {transfer['teacher_outputs']}.")
    return out


def _energy_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    e = results.get("energy") or {}
    rows = []
    for name, m in (e.get("models") or {}).items():
        act = m.get("j_per_inference_active") or {}
        rows.append(
            {
                "name": name,
                "label": m.get("label"),
                "active_label": m.get("active_label"),
                "batch": m.get("batch_size"),
                "windows": m.get("windows"),
                "window_s": m.get("window_s"),
                "gross_mj": 1e3 * m["j_per_inference_gross"]["mean"],
                "gross_sd_mj": None
                if m["j_per_inference_gross"].get("sd") is None
                else 1e3 * m["j_per_inference_gross"]["sd"],
                "active_mj": None if act.get("mean") is None else 1e3 * act["mean"],
                "active_sd_mj": None if act.get("sd") is None else 1e3 * act["sd"],
                "kwh_per_m": _get(m, "per_million_active", "kwh") or _get(m, "per_million_gross", "kwh"),
                "g_per_m": _get(m, "per_million_active", "g_co2e") or _get(m, "per_million_gross", "g_co2e"),
                "power_w": m.get("mean_power_w"),
            }
        )
    return rows


SHORT_KIND = {"int8-static": "INT8", "int8-dynamic": "INT8-dyn", "fp16": "FP16", "optimized": "opt"}  # plot labels


def _variant_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per FP32 model and each of its variants: accuracy, parity, latency at the guard's batch and its verdict."""
    lat = {(r["model"], r["batch_size"]): r for r in _get(results, "benchmark", "results", default=[])}
    rows = []
    for model, entry in (results.get("variants") or {}).items():
        sel = entry.get("selection") or {}
        b = sel.get("batch_size", 1)
        rejected = {r["name"]: r["reason"] for r in sel.get("rejected", [])}
        ratio = {c["name"]: c.get("ratio_vs_source") for c in entry.get("candidates", [])}
        fp32 = {"label": model, "name": "fp32", "kind": "fp32", "accuracy": entry["accuracy_fp32"],
                "accuracy_drop_pp": 0.0, "size_bytes": _get(results, "export", model, "size_bytes"),
                "parity": {}, "clipping_text": None}
        for v in [fp32, *entry.get("variants", [])]:
            r = lat.get((v["label"], b))
            rows.append({
                "model": model, "label": v["label"], "name": v["name"], "kind": v["kind"],
                "accuracy": v["accuracy"], "drop_pp": v["accuracy_drop_pp"],
                "size_kb": v["size_bytes"] / 1024 if v.get("size_bytes") else None,
                "max_abs_diff": v["parity"].get("max_abs_diff"),
                "argmax_agreement": v["parity"].get("argmax_agreement"),
                "clipping": v.get("clipping_text"),
                "memory_mib": _mib(_get(results, "benchmark", "models", v["label"], "memory", "peak_rss_bytes")),
                "batch": b, "p50": r["p50_us"] if r else None, "p50_ci": r["p50_ci95_us"] if r else None,
                "ratio": ratio.get(v["label"]),
                "shipped": sel.get("shipped") == v["label"],
                "status": ("selected: " + sel["reason"].split(": ", 1)[-1]) if sel.get("shipped") == v["label"]
                else rejected.get(v["label"], "–"),
                "short": "selected" if sel.get("shipped") == v["label"] else (
                    "passes, not fastest" if rejected.get(v["label"], "").startswith("passes") else "rejected"),
            })
        for f in entry.get("failed", []):
            rows.append({"model": model, "label": f"{model}.{f['name']}", "name": f["name"], "kind": f["kind"],
                         "accuracy": None, "drop_pp": None, "size_kb": None, "max_abs_diff": None,
                         "argmax_agreement": None, "clipping": None, "memory_mib": None, "batch": None,
                         "p50": None, "p50_ci": None, "ratio": None,
                         "status": f"not made: {f['reason']}", "short": "not made", "shipped": False})
    return rows


def _policy_text(results: dict[str, Any]) -> str:
    """The shipping policy in words."""
    p = _get(results, "pipeline", "resolved", "ship", default={}) or {}
    rules = []
    if p.get("min_relative_accuracy") is not None:
        rules.append(f"accuracy at least {100 * p['min_relative_accuracy']:g} % of FP32's")
    if p.get("max_accuracy_drop_pp") is not None:
        rules.append(f"accuracy at most {p['max_accuracy_drop_pp']:g} pp below FP32")
    if p.get("require_faster", True):
        rules.append(f"the 95 % CI of its speed-up over FP32 above {p.get('min_speedup', 1.0):g}x (and above the "
                     "A/A control's)")
    split = _get(results, "variants", "student", "selection", "split", default=None)
    return (f"fastest at batch {p.get('batch_size', 1)} among FP32 and the variants with " + " and ".join(rules)
            + ("; accuracy judged on the validation split (the table shows test accuracy, which chooses nothing)"
               if split == "validation" else ""))


def _energy_mj(model: dict[str, Any] | None, basis: str) -> float | None:
    j = ((model or {}).get(f"j_per_inference_{basis}") or {}).get("mean")
    return 1e3 * j if j and j > 0 else None


def _tradeoff_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Accuracy, latency and energy per exported model; energy on the headline's basis (active or gross)."""
    basis = _get(results, "headline", "energy_basis", default="gross")
    lat = {
        (r["model"], r["batch_size"]): r["p50_us"] for r in _get(results, "benchmark", "results", default=[])
    }
    energy = _get(results, "energy", "models", default={})
    b = min((bs for _, bs in lat), default=None)
    pts = []
    for name, exp in results.get("export", {}).items():
        bench_name = "student" if name == "student_scratch" else name
        pts.append(
            {
                "name": name,
                "accuracy": exp["parity"]["accuracy_onnx"],
                "latency_us": lat.get((bench_name, b)),
                "energy_mj": _energy_mj(energy.get(bench_name, {}), basis),
            }
        )
    for entry in (results.get("variants") or {}).values():
        for v in entry.get("variants", []):
            pts.append({"name": f"{v['model']} {SHORT_KIND.get(v['kind'], v['name'])}", "accuracy": v["accuracy"],
                        "latency_us": lat.get((v["label"], b)), "energy_mj": None})
    eager = lat.get(("teacher@torch-eager-cpu", b))
    if eager and "teacher" in results.get("export", {}):
        pts.append(
            {
                "name": "teacher@torch-eager-cpu",
                "accuracy": results["export"]["teacher"]["parity"]["accuracy_torch"],
                "latency_us": eager,
                "energy_mj": None,
            }
        )
    return pts


def _reused_text(results: dict[str, Any]) -> str:
    """Which stages came from the stage cache: ``teacher (entry 91649ebf124c, created ...), students (...)``."""
    reused = _get(results, "run", "reused", default={}) or {}
    return ", ".join(f"{stage} (entry {r['key'][:12]}, created {r['created']}, {r['from']})"
                     for stage, r in reused.items())


def _resumed_text(results: dict[str, Any]) -> str:
    """Which training continued from an earlier, stopped run's per-epoch checkpoints."""
    resumed = _get(results, "run", "resumed", default={}) or {}
    parts = [f"{stage}: " + ", ".join(f"{tag} after epoch {e}" for tag, e in tags.items())
             for stage, tags in resumed.items()]
    if not parts:
        return ""
    return ("; ".join(parts) + " (training times and curves include the earlier run's epochs; training energy "
            "counts only the epochs trained in this run)")


def _training_mode_text(results: dict[str, Any]) -> str:
    """How the training stages ran: one process, or N processes with their backend."""
    d = _get(results, "run", "distributed", default=None)
    if not d:
        return "one process"
    return d.get("how") or f"{d.get('world_size', 1)} process(es), backend {d.get('backend')}"


def _stage_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Wall time and energy per stage. Energy is tracked (CodeCarbon) around the training stages; the energy
    stage's own inference windows are reported above; other stages are timed only."""
    stage_s = _get(results, "run", "stage_wall_s", default={}) or {}
    training = {t.get("label"): t for t in (_get(results, "energy", "training", default=[]) or [])}
    for stage, rec in (("teacher", _get(results, "models", "teacher", default={})),
                       ("students", results.get("distill") or {})):
        if f"train:{stage}" not in training and (rec or {}).get("energy"):
            training[f"train:{stage}"] = rec["energy"]
    rows = []
    for stage, secs in stage_s.items():
        t = training.get(f"train:{stage}") or {}
        if t.get("reused"):
            energy, note = None, "from the stage cache: not trained in this run"
        elif t.get("energy_kwh") is not None:
            energy, note = t["energy_kwh"], t.get("mode") or ""
        else:
            energy, note = None, "timed only" if stage not in ("teacher", "students") or not t else "not measured"
            if stage == "energy":
                note = "timed here; the energy of its inference windows is in the energy table"
        rows.append({"stage": stage, "seconds": secs, "energy_kwh": energy, "note": note})
    return rows


def _target_sections(results: dict[str, Any]) -> list[dict[str, Any]]:
    from kd2deploy.targets.report import sections

    return sections(results)


def build_view(results: dict[str, Any], with_plots: bool) -> dict[str, Any]:
    """Everything the templates show, computed once."""
    from kd2deploy.report import plots

    bench = results.get("benchmark") or {}
    energy = results.get("energy") or {}
    points = _tradeoff_points(results)
    # the A/A controls are the FP32 files timed again: in the tables, not in the plots
    bench_plot = {**bench, "results": [r for r in bench.get("results", []) if not r["model"].endswith("@aa")]}
    b = min((r["batch_size"] for r in bench.get("results", [])), default=1)
    stage_s = _get(results, "run", "stage_wall_s", default={}) or {}
    view = {
        "r": results,
        "headline": results.get("headline", {}),
        "verdict": verdict(results),
        "kpis": _kpis(results),
        "glance": _glance(results) if _get(results, "headline", "accuracy") else [],
        "budget_pp": _budget(results),
        "models": _models_rows(results),
        "latency": bench.get("results", []),
        "ratios": bench.get("ratios", []),
        "bench_settings": bench.get("settings", {}),
        "skipped": bench.get("skipped", []),
        "distill": _distill_rows(results),
        "energy": energy,
        "energy_enabled": energy.get("enabled", True) is not False,
        "energy_rows": _energy_rows(results),
        "training_energy": energy.get("training", []),
        "warnings": results.get("warnings", []),
        "env": results.get("environment", {}),
        "stage_times": " · ".join(f"{k} {t:.1f} s" for k, t in stage_s.items()),
        "reused": _reused_text(results),
        "resumed": _resumed_text(results),
        "stage_total_s": sum(stage_s.values()) if stage_s else None,
        "stage_rows": _stage_rows(results),
        "training_mode": _training_mode_text(results),
        "ship": results.get("ship"),
        "task_sections": results.get("task_sections") or [],
        "variants": _variant_rows(results),
        "devices": results.get("devices") or {},
        "targets": _target_sections(results),
        "ship_policy": _policy_text(results),
        "ship_selection": _get(results, "variants", "student", "selection"),
        "config_yaml": yaml.safe_dump(_get(results, "pipeline", "resolved", default={}), sort_keys=False),
        "plots": {},
    }
    if with_plots:
        view["plots"] = {
            k: v
            for k, v in {
                "tradeoff_latency": plots.tradeoff_plot(
                    points, "latency_us", f"p50 latency at batch {b} (µs, log)", "Accuracy vs latency"
                ),
                "tradeoff_energy": plots.tradeoff_plot(
                    points, "energy_mj", "energy per inference (mJ, log)", "Accuracy vs energy"
                ),
                "latency": plots.latency_plot(bench_plot),
                "throughput": plots.throughput_plot(bench_plot),
                "curves": plots.curves_plot(results),
                "label_efficiency": plots.label_efficiency_plot(results),
                "energy": plots.energy_plot(energy),
            }.items()
            if v
        }
    return view
