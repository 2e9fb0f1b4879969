"""The lecture's claims about soft targets, measured on every run: do they train faster and more smoothly?

From the per-epoch validation curves the students stage records (``History.epochs``: ``val_acc``, ``time_s``
cumulative), per arm and seed:

* **Convergence**: the first epoch whose validation accuracy reaches 99 % of the arm's own final one, and the
  first that reaches the scratch control's final validation accuracy (same seed); with the wall time and the
  training energy spent up to there. Energy is the students stage's CodeCarbon total shared out by each arm's
  training time (the batched trainer gives every arm of a stack an equal share of the wall time), so it is
  modelled wherever CodeCarbon models it.
* **Smoothness**: over the last ``max(5, 10 %)`` epochs, the standard deviation of the validation accuracy and
  its mean absolute change from epoch to epoch (both in percentage points).

Figures are means over seeds; an arm that never reaches a target in some seed says in how many it did.
"""

from __future__ import annotations

import statistics
from typing import Any


def tail_length(epochs: int) -> int:
    """How many final epochs the smoothness figures cover: 10 % of the run, at least 5 (all if fewer)."""
    return min(epochs, max(5, round(0.1 * epochs)))


def first_reaching(curve: list[float], target: float) -> int | None:
    """1-based index of the first value >= target (with a 1e-9 tolerance), or None."""
    for i, v in enumerate(curve, start=1):
        if v >= target - 1e-9:
            return i
    return None


def curve_figures(epochs: list[dict[str, float]], scratch_final: float | None, energy_kwh: float | None
                  ) -> dict[str, Any]:
    """One seed's figures for one arm (see the module docstring). ``energy_kwh``: the arm's training energy."""
    acc = [e["val_acc"] for e in epochs]
    times = [e["time_s"] for e in epochs]
    final = acc[-1]
    total_t = times[-1] or 1e-12

    def at(epoch: int | None) -> dict[str, Any]:
        if epoch is None:
            return {"epoch": None, "time_s": None, "energy_kwh": None, "energy_share": None}
        share = times[epoch - 1] / total_t
        return {"epoch": epoch, "time_s": times[epoch - 1], "energy_share": share,
                "energy_kwh": None if energy_kwh is None else energy_kwh * share}

    tail = acc[-tail_length(len(acc)):]
    steps = [abs(b - a) for a, b in zip(tail, tail[1:], strict=False)]
    return {
        "epochs": len(acc), "final_val_acc": final,
        "to_99pct_of_own_final": at(first_reaching(acc, 0.99 * final)),
        "to_scratch_final": at(None if scratch_final is None else first_reaching(acc, scratch_final)),
        "tail_epochs": len(tail),
        "tail_sd_pp": 100 * (statistics.stdev(tail) if len(tail) > 1 else 0.0),
        "tail_mean_abs_step_pp": 100 * (statistics.fmean(steps) if steps else 0.0),
    }


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.fmean(got) if got else None


def convergence(per_seed: list[dict[str, Any]], energy_kwh: float | None = None) -> dict[str, Any]:
    """Per arm, the convergence and smoothness figures averaged over seeds.

    Args:
        per_seed: as in ``results["distill"]["per_seed"]``: ``{"seed", <arm>: {"curve": [...], "train_time_s"}}``.
        energy_kwh: the students stage's training energy (all arms), shared out by training time; None: no energy.
    """
    arms = [k for k in per_seed[0] if k != "seed"]
    total_time = sum(rec[a]["train_time_s"] for rec in per_seed for a in arms if a in rec) or 1e-12
    out: dict[str, Any] = {}
    for arm in arms:
        rows = []
        for rec in per_seed:
            if arm not in rec or not rec[arm].get("curve"):
                continue
            scratch = rec.get("scratch", {}).get("curve")
            e = None if energy_kwh is None else energy_kwh * rec[arm]["train_time_s"] / total_time
            rows.append(curve_figures(rec[arm]["curve"], scratch[-1]["val_acc"] if scratch else None, e))
        if not rows:
            continue
        summary: dict[str, Any] = {"seeds": len(rows), "epochs": rows[0]["epochs"],
                                   "final_val_acc": _mean([r["final_val_acc"] for r in rows])}
        for target in ("to_99pct_of_own_final", "to_scratch_final"):
            reached = [r[target] for r in rows if r[target]["epoch"] is not None]
            summary[target] = {
                "reached_in_seeds": len(reached),
                **{k: _mean([r[k] for r in reached]) for k in ("epoch", "time_s", "energy_kwh", "energy_share")},
            }
        for k in ("tail_sd_pp", "tail_mean_abs_step_pp"):
            summary[k] = _mean([r[k] for r in rows])
        summary["tail_epochs"] = rows[0]["tail_epochs"]
        out[arm] = summary
    return {"arms": out, "how": __doc__.split("\n\n", 1)[1].strip()}


def _n(x: float) -> str:
    """A seed-mean epoch: ``4`` or ``7.5``."""
    return f"{x:.1f}".removesuffix(".0")


def sentences(record: dict[str, Any]) -> list[str]:
    """Plain-language lines for the report: each arm against scratch's final accuracy, and its smoothness."""
    lines = []
    for arm, s in record["arms"].items():
        m = s["epochs"]
        own = s["to_99pct_of_own_final"]
        text = f"{arm}: 99 % of its final validation accuracy at epoch {_n(own['epoch'])} of {m}" if own[
            "epoch"] is not None else f"{arm}: never within 99 % of its final validation accuracy"
        sc = s["to_scratch_final"]
        if arm != "scratch":
            if sc["epoch"] is None:
                text += "; never reaches scratch's final validation accuracy"
            else:
                energy = f", {100 * sc['energy_share']:.0f} % of its training energy" if sc[
                    "energy_share"] is not None else ""
                text += (f"; reaches scratch's final validation accuracy in {_n(sc['epoch'])} of its {m} epochs"
                         f"{energy} ({sc['reached_in_seeds']} of {s['seeds']} seeds)")
        text += (f"; last {s['tail_epochs']} epochs: val accuracy sd {s['tail_sd_pp']:.2f} pp, mean step "
                 f"{s['tail_mean_abs_step_pp']:.2f} pp")
        lines.append(text)
    return lines
