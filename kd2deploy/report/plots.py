"""Report figures, rendered with matplotlib (Agg) to PNG bytes for embedding as data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any

COLORS = {
    "teacher": "#4c72b0",
    "student": "#dd8452",
    "kd": "#dd8452",
    "scratch": "#8c8c8c",
    "label_smoothing": "#55a868",
    "teacher@torch-eager-cpu": "#937860",
}


def figure(w: float = 6.4, h: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(w, h), dpi=110)
    return fig, ax


def png_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def latency_plot(bench: dict[str, Any]) -> str | None:
    """p50 bars with p90 / p99 whiskers per model and batch size (log scale)."""
    rows = bench.get("results") or []
    if not rows:
        return None
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch_size"] for r in rows})
    fig, ax = figure()
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        xs, p50, p90, p99 = [], [], [], []
        for j, b in enumerate(batches):
            r = next((r for r in rows if r["model"] == m and r["batch_size"] == b), None)
            if r:
                xs.append(j + (i - (len(models) - 1) / 2) * width)
                p50.append(r["p50_us"])
                p90.append(r["p90_us"])
                p99.append(r["p99_us"])
        ax.bar(xs, p50, width * 0.9, label=m, color=COLORS.get(m))
        ax.errorbar(
            xs,
            p50,
            yerr=[np.zeros(len(p50)), np.array(p99) - np.array(p50)],
            fmt="none",
            ecolor="k",
            capsize=3,
            lw=0.8,
        )
        ax.scatter(xs, p90, marker="_", color="k", s=60, zorder=3)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (µs, log)")
    ax.set_title("Latency: bar p50, tick p90, whisker p99")
    ax.legend(fontsize=8)
    return png_uri(fig)


def throughput_plot(bench: dict[str, Any]) -> str | None:
    rows = bench.get("results") or []
    batches = sorted({r["batch_size"] for r in rows})
    if len(batches) < 2:
        return None
    fig, ax = figure()
    for m in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["batch_size"], r["throughput_sps"]) for r in rows if r["model"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m, color=COLORS.get(m))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s (from mean latency)")
    ax.set_title("Throughput vs batch size")
    ax.legend(fontsize=8)
    return png_uri(fig)


def curve_errors(results: dict[str, Any]) -> dict[str, Any]:
    """Validation error rate (1 - accuracy) per epoch per arm: ``{arm: (epochs, per-seed stack)}``, and the
    teacher's validation error under ``"teacher"`` (None when unknown). Zero errors are floored at half a
    sample, so a log axis can show them."""
    import numpy as np

    per_seed = results.get("distill", {}).get("per_seed") or []
    n_val = (results.get("data") or {}).get("n_val") or 0
    floor = 0.5 / n_val if n_val else 1e-4
    out: dict[str, Any] = {}
    arms = [a for a in ("kd", "scratch", "label_smoothing") if per_seed and a in per_seed[0]]
    for arm in arms:
        curves = [np.array([e["val_acc"] for e in s[arm]["curve"]]) for s in per_seed if s.get(arm, {}).get("curve")]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        out[arm] = (np.arange(1, n + 1), np.maximum(1.0 - np.stack([c[:n] for c in curves]), floor))
    t = results.get("models", {}).get("teacher", {}).get("val_accuracy_torch")
    out["teacher"] = None if t is None else max(1.0 - t, floor)
    return out


def curves_plot(results: dict[str, Any]) -> str | None:
    """Validation error rate per epoch on a log axis (where the arms differ: the last percent), every seed thin,
    each arm's mean thick, the teacher's validation error dashed."""
    data = curve_errors(results)
    if len(data) < 2:
        return None
    fig, ax = figure()
    for arm, (epochs, stack) in ((a, v) for a, v in data.items() if a != "teacher"):
        for c in stack:
            ax.plot(epochs, c, color=COLORS.get(arm), alpha=0.2, lw=0.7)
        ax.plot(epochs, stack.mean(0), color=COLORS.get(arm), lw=2, label=f"{arm} (mean of {len(stack)})")
    if data["teacher"] is not None:
        ax.axhline(data["teacher"], color=COLORS["teacher"], ls="--", lw=1, label="teacher (val)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error rate (log scale)")
    ax.set_title("Training curves: KD vs controls (lower is better)")
    ax.legend(fontsize=8, loc="upper right")
    return png_uri(fig)


def label_efficiency_plot(results: dict[str, Any]) -> str | None:
    """Test accuracy against the fraction of labels (``distill.label_efficiency``), as an inline PNG."""
    rec = (results.get("distill") or {}).get("label_efficiency")
    if not rec or not rec.get("rows"):
        return None
    fig, ax = figure()
    xs = [100 * r["fraction"] for r in rec["rows"]]
    ax.plot(xs, [r["teacher_test_accuracy"] for r in rec["rows"]], "--", color=COLORS.get("teacher"), marker="s",
            label="teacher")
    for arm in rec["rows"][0]["arms"]:
        ax.errorbar(xs, [r["arms"][arm]["mean"] for r in rec["rows"]], yerr=[r["arms"][arm]["sd"] for r in rec["rows"]],
                    marker="o", capsize=3, color=COLORS.get(arm), label=arm)
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g} %" for x in xs])
    ax.set_xlabel("labelled training samples")
    ax.set_ylabel("test accuracy")
    ax.set_title("Label efficiency: KD vs controls")
    ax.legend(fontsize=8, loc="lower right")
    return png_uri(fig)


def _percent_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda y, _: f"{100 * y:g} %")


def tradeoff_plot(points: list[dict[str, Any]], x_key: str, x_label: str, title: str) -> str | None:
    """Accuracy vs cost scatter; the Pareto front (lower cost, higher accuracy) is joined by a line."""
    pts = [p for p in points if p.get(x_key) and p.get("accuracy") is not None]
    if len(pts) < 2:
        return None
    fig, ax = figure()
    for p in pts:
        ax.scatter(
            p[x_key], 100 * p["accuracy"], s=50, color=COLORS.get(p["name"].split("@")[0], "#333"), zorder=3
        )
        ax.annotate(
            p["name"], (p[x_key], 100 * p["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    front, best = [], -1.0
    for p in sorted(pts, key=lambda p: (p[x_key], -p["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    ax.plot(
        [p[x_key] for p in front], [100 * p["accuracy"] for p in front], "k--", lw=0.8, label="Pareto front"
    )
    xs = [p[x_key] for p in pts]
    if max(xs) / min(xs) >= 10:  # a log axis only where the costs span a decade; else its ticks say little
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        x_label = x_label.replace(", log)", ")")
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return png_uri(fig)


def energy_plot(energy: dict[str, Any]) -> str | None:
    models = energy.get("models") or {}
    if not models:
        return None
    fig, ax = figure()
    names = list(models)
    gross = [1e3 * models[n]["j_per_inference_gross"]["mean"] for n in names]
    active = [1e3 * ((models[n].get("j_per_inference_active") or {}).get("mean") or 0.0) for n in names]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], gross, 0.4, label="gross", color="#bbbbbb")
    ax.bar(
        [x + 0.2 for x in xs],
        active,
        0.4,
        label="active (idle subtracted)",
        color=[COLORS.get(n) for n in names],
    )
    ax.set_xticks(list(xs), names)
    ax.set_yscale("log")
    ax.set_ylabel("mJ per inference (log)")
    ax.set_title(
        f"Energy per inference — {energy.get('label', '?')} (batch {models[names[0]]['batch_size']})"
    )
    ax.legend(fontsize=8)
    return png_uri(fig)
