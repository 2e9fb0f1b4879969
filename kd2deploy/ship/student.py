"""Which trained student ships: chosen among KD **and** the controls, on the validation split only.

Distillation has to earn its place: if a control (scratch, label smoothing) has the better validation accuracy,
that student ships and the report says plainly that distillation did not pay here. Test accuracy is never read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

ARM_ORDER = ("kd", "scratch", "label_smoothing")  # ties go to the earlier arm


def choose_student(per_seed: Mapping[int, Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """The arm with the highest mean validation accuracy over ``seeds`` (ties: KD first), then that arm's seed
    with the highest validation accuracy (ties: the earlier seed).

    Args:
        per_seed: ``{seed: {arm: {"val_accuracy": float, ...}, ...}}``; other keys (test accuracy) are ignored.
        seeds: the seeds in order.

    Returns:
        ``{"arm", "seed", "val_means": {arm: mean}, "reason"}``.
    """
    arms = [a for a in ARM_ORDER if seeds and all(a in per_seed[s] for s in seeds)]
    if not arms:
        raise ValueError("choose_student: no arm was trained on every seed")
    means = {a: fmean(per_seed[s][a]["val_accuracy"] for s in seeds) for a in arms}
    arm = max(arms, key=lambda a: (means[a], -arms.index(a)))
    seed = max(seeds, key=lambda s: (per_seed[s][arm]["val_accuracy"], -list(seeds).index(s)))
    words = ", ".join(f"{a} {100 * m:.2f} %" for a, m in means.items())
    return {"arm": arm, "seed": seed, "val_means": means,
            "reason": f"highest mean validation accuracy over {len(seeds)} seed(s) ({words}), then its seed with "
                      f"the highest validation accuracy; the test split is not read"}
