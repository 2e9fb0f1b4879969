"""Targets in the report: the headline that names the target, and one section per target for the templates."""

from __future__ import annotations

from typing import Any


def _speedup(entry: dict[str, Any], num: str = "teacher", den: str = "student") -> dict[str, Any] | None:
    rows = next((r["per_batch"] for r in entry.get("ratios") or []
                 if r["numerator"] == num and r["denominator"] == den), [])
    return min(rows, key=lambda r: r["batch_size"], default=None)


def target_headline(entry: dict[str, Any], accuracy_delta_pp: float | None = None) -> dict[str, Any]:
    """The headline numbers of one target: the student's speed-up at its smallest batch and energy ratio."""
    sp = _speedup(entry)
    energy = entry.get("energy") or {}
    ratio = (energy.get("ratios") or {}).get("teacher/student") or {}
    basis = "active" if ratio.get("active") else "gross"
    out = {"name": entry["name"], "speedup_p50": sp, "energy_ratio": ratio.get(basis), "energy_basis": basis,
           "energy_label": energy.get("label"), "energy_label_text": energy.get("label_text")}
    parts = []
    if sp:
        parts.append(f"student {sp['ratio_p50']:.1f}x faster p50 at batch {sp['batch_size']} "
                     f"(95 % CI {sp['ci95'][0]:.1f}-{sp['ci95'][1]:.1f})")
    if out["energy_ratio"]:
        parts.append(f"{out['energy_ratio']:.1f}x less energy per inference ({energy.get('label')}, {basis})")
    if accuracy_delta_pp is not None:
        parts.append(f"accuracy {accuracy_delta_pp:+.2f} pp")
    out["text"] = f"on {entry['name']}: " + (", ".join(parts) if parts else "no teacher/student comparison")
    return out


def apply_headline(results: dict[str, Any]) -> None:
    """Names the first target that answered in ``results["headline"]``; this machine's text stays as ``local_text``.

    A target that is missing is said in the headline too, so a reader never takes local numbers for the target's.
    """
    h = results.setdefault("headline", {})
    targets = results.get("targets") or {}
    if not targets:
        return
    local = h.get("local_text") or h.get("text") or "no comparison available"
    h["local_text"] = local
    ok = [e for e in targets.values() if e.get("status") == "ok"]
    missing = [e for e in targets.values() if e.get("status") != "ok"]
    h["targets"] = {e["name"]: target_headline(e, h.get("accuracy_delta_pp")) for e in ok}
    text = h["targets"][ok[0]["name"]]["text"] if ok else ""
    if missing:
        text += ("; " if text else "") + "; ".join(f"target {e['name']} missing ({e.get('reason')})" for e in missing)
    h["target"] = ok[0]["name"] if ok else None
    h["text"] = f"{text}; on this machine: {local.removeprefix('student: ')}"


def _mj(x: dict[str, Any] | None) -> tuple[float | None, float | None]:
    if not x or x.get("mean") is None:
        return None, None
    return x["mean"] * 1e3, None if x.get("sd") is None else x["sd"] * 1e3


def sections(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per target for the templates: facts line, latency rows, ratios, memory, energy rows."""
    out = []
    for name, e in (results.get("targets") or {}).items():
        if e.get("status") != "ok":
            out.append({"name": name, "ssh": e.get("ssh"), "ok": False, "reason": e.get("reason")})
            continue
        f = e.get("facts") or {}
        s = e.get("settings") or {}
        mem = (f.get("memory") or {}).get("total_bytes")
        providers = ", ".join(f.get("onnxruntime_providers") or [])
        facts = (f"{f.get('cpu_model')} ({f.get('machine')}), {f.get('usable_cpus')} usable cores"
                 + (f", {mem / 2**30:.1f} GiB memory" if mem else "") + f"; {f.get('os')}; Python {f.get('python')}, "
                 f"numpy {f.get('numpy')}, onnxruntime {f.get('onnxruntime')} ({providers})")
        energy = e.get("energy") or {}
        erows = []
        for model, m in (energy.get("models") or {}).items():
            g, gsd = _mj(m.get("j_per_inference_gross"))
            a, asd = _mj(m.get("j_per_inference_active"))
            erows.append({"model": model, "gross_mj": g, "gross_sd_mj": gsd, "active_mj": a, "active_sd_mj": asd,
                          "power_w": m.get("mean_power_w"), "windows": len(m.get("windows") or [])})
        memory = [{"model": k, "peak_mib": (v.get("peak_rss_bytes") or 0) / 2**20 if "error" not in v else None,
                   "session_mib": (v.get("session_peak_bytes") or 0) / 2**20 if "error" not in v else None,
                   "error": v.get("error")} for k, v in (e.get("memory") or {}).items()]
        files = {m["name"]: m for m in e.get("models") or []}
        out.append({
            "name": name, "ssh": e.get("ssh"), "ok": True, "facts": facts,
            "settings": (f"onnxruntime {s.get('provider')}, {s.get('intra_op_threads')} intra-op thread(s), "
                         f"{s.get('rounds')} interleaved rounds, {s.get('inputs')}"),
            "method": e.get("method"),
            "latency": e.get("results") or [], "ratios": [
                {"numerator": q["numerator"], "denominator": q["denominator"], **b}
                for q in e.get("ratios") or [] for b in q["per_batch"]],
            "files": [{"name": k, "sha256": v["sha256"][:12], "size_kb": v["size_bytes"] / 1024,
                       "match": v.get("sha256_match")} for k, v in files.items()],
            "memory": memory,
            "energy": {"label": energy.get("label"), "label_text": energy.get("label_text"),
                       "method": energy.get("method"), "reason": energy.get("reason"),
                       "batch_size": energy.get("batch_size"), "window_s": energy.get("window_s"),
                       "repeats": energy.get("repeats"), "ratios": energy.get("ratios") or {},
                       "idle_power_w": (energy.get("idle_power_w") or {}).get("mean")} if energy else None,
            "energy_rows": erows,
            "wall_s": e.get("wall_s"),
        })
    return out
