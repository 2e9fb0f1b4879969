"""The numbers a report leads with: the student's speed-up, energy ratio and accuracy cost against the teacher."""

from __future__ import annotations

from typing import Any


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Speed-up (p50, first batch size and shape), energy ratio and accuracy delta of the student, and one line."""
    exp = results.get("export", {})
    t_acc = exp.get("teacher", {}).get("parity", {}).get("accuracy_onnx")
    s_acc = exp.get("student", {}).get("parity", {}).get("accuracy_onnx")
    out: dict[str, Any] = {
        "teacher_accuracy": t_acc, "student_accuracy": s_acc,
        "accuracy_delta_pp": None if t_acc is None or s_acc is None else 100.0 * (s_acc - t_acc),
    }
    bench = results.get("benchmark", {})
    for r in bench.get("ratios", []):
        if r.get("numerator") == "teacher" and r.get("denominator") == "student":
            out.setdefault("speedup_p50", {})[str(r["batch_size"])] = r
    b1 = out.get("speedup_p50", {}).get("1") or next(iter(out.get("speedup_p50", {}).values()), None)
    out["speedup_p50_batch"] = b1["batch_size"] if b1 else None
    out["speedup_p50_ratio"] = b1["ratio_p50"] if b1 else None
    out["speedup_p50_seq_len"] = b1.get("seq_len") if b1 else None
    energy = results.get("energy", {})
    out["energy_basis"] = "active" if energy.get("ratio_active") else "gross"
    out["energy_ratio"] = energy.get("ratio_active") or energy.get("ratio_gross")
    out["energy_label"] = energy.get("label")
    parts = []
    models = bench.get("models", {})
    layers = [models.get(m, {}).get("layers") for m in ("student", "teacher")]
    if all(layers):
        parts.append(f"{layers[0]} of {layers[1]} layers")
    if out["speedup_p50_ratio"]:
        shape = f", {out['speedup_p50_seq_len']} tokens" if out["speedup_p50_seq_len"] else ""
        parts.append(f"{out['speedup_p50_ratio']:.1f}x faster p50 at batch {out['speedup_p50_batch']}{shape}")
    if out["energy_ratio"]:
        parts.append(f"{out['energy_ratio']:.1f}x less energy per inference "
                     f"({out['energy_label']}, {out['energy_basis']})")
    if out["accuracy_delta_pp"] is not None:
        parts.append(f"accuracy {out['accuracy_delta_pp']:+.2f} pp")
    out["text"] = "student: " + ", ".join(parts) if parts else "no comparison available"
    return out
