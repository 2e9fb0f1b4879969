"""Uncertainty of the report's accuracy numbers: intervals and paired tests a verdict can rest on.

- :func:`accuracy_interval`: a Wilson 95 % interval for an accuracy of k correct out of n (scipy's
  ``binomtest(...).proportion_ci(method="wilson")``), sound near 100 % where the normal interval is not.
- :func:`paired_seeds`: KD vs a control over the same seeds (same initial weights and batches per seed): the
  mean paired difference with its t interval, the paired t-test (``scipy.stats.ttest_rel``) and the sign test
  (``scipy.stats.binomtest`` on wins vs losses).
- :func:`paired_samples`: two models on the same test samples (student vs teacher): McNemar's exact test on the
  discordant samples and the accuracy difference with an Agresti–Min interval (Wald with 0.5 added to every cell
  of the 2x2 table, good coverage with few discordant samples).
- :func:`samples_to_resolve`: how many test samples would resolve a drop of a given size (two-sided 5 %, 80 %
  power, the observed discordance rate).

scipy is imported inside the functions (``kd2deploy validate`` stays fast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054
Z80 = 0.8416212335729143


def accuracy_interval(correct: int, n: int) -> tuple[float, float]:
    """Wilson 95 % interval of the accuracy ``correct / n``.

    Raises:
        ValueError: ``n`` < 1 or ``correct`` outside 0..n.
    """
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"accuracy_interval: need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_record(accuracy: float, n: int) -> dict[str, Any]:
    """``{"accuracy", "n", "correct", "ci95"}`` for an accuracy measured on ``n`` samples."""
    correct = round(accuracy * n)
    return {"accuracy": accuracy, "n": n, "correct": correct, "ci95": list(accuracy_interval(correct, n))}


def paired_seeds(a: Sequence[float], b: Sequence[float], name_a: str = "kd", name_b: str = "control") -> dict:
    """``a`` vs ``b`` paired by seed (index i of both is seed i): is the difference resolvable?

    Returns:
        ``n``, ``mean_diff`` (a - b), ``ci95`` (t interval of the mean paired difference; None with one seed),
        ``p_t`` (paired t-test), ``p_sign`` (exact sign test), ``wins``/``losses``/``ties`` of ``a``, and
        ``verdict``: "beats", "loses to", "no resolvable difference from", or "one seed: no test against".
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_seeds: need equally long, non-empty lists, got {len(a)} and {len(b)}")
    from scipy.stats import binomtest, t, ttest_rel

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    out: dict[str, Any] = {"n": n, "mean_diff": mean, "wins": wins, "losses": losses, "ties": n - wins - losses,
                           "ci95": None, "p_t": None, "p_sign": None}
    if wins + losses:
        out["p_sign"] = float(binomtest(wins, wins + losses, 0.5).pvalue)
    if n < 2:
        out["verdict"] = "one seed: no test against"
        return out
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out["ci95"] = [mean - half, mean + half]
    out["p_t"] = 1.0 if sd == 0 and mean == 0 else (0.0 if sd == 0 else float(ttest_rel(a, b).pvalue))
    lo, hi = out["ci95"]
    out["verdict"] = "beats" if lo > 0 else ("loses to" if hi < 0 else "no resolvable difference from")
    out["method"] = (f"paired over {n} seeds ({name_a} - {name_b}): t interval of the mean difference, "
                     "paired t-test (scipy ttest_rel), exact sign test")
    return out


def paired_samples(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Model a vs model b on the same samples (per-sample correctness): McNemar and the accuracy difference.

    Returns:
        ``n``, ``a_only`` (a right, b wrong), ``b_only``, ``diff`` (acc a - acc b), ``ci95`` (Agresti–Min),
        ``p_mcnemar`` (exact: binomial test of a_only vs b_only; 1.0 without discordant samples),
        ``discordance`` ((a_only + b_only) / n).
    """
    if len(correct_a) != len(correct_b) or not len(correct_a):
        raise ValueError(f"paired_samples: need equally long, non-empty arrays, got {len(correct_a)} and "
                         f"{len(correct_b)}")
    from scipy.stats import binomtest

    n = len(correct_a)
    a_only = sum(bool(x) and not bool(y) for x, y in zip(correct_a, correct_b, strict=True))
    b_only = sum(bool(y) and not bool(x) for x, y in zip(correct_a, correct_b, strict=True))
    diff = (a_only - b_only) / n
    b_, c_, n_ = a_only + 0.5, b_only + 0.5, n + 2  # Agresti & Min (2005): 0.5 added to each of the 4 cells
    d_ = (b_ - c_) / n_
    se = math.sqrt(max((b_ + c_) - (b_ - c_) ** 2 / n_, 0.0)) / n_
    p = float(binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return {"n": n, "a_only": a_only, "b_only": b_only, "diff": diff,
            "ci95": [max(d_ - Z95 * se, -1.0), min(d_ + Z95 * se, 1.0)], "p_mcnemar": p,
            "discordance": (a_only + b_only) / n,
            "method": "McNemar's exact test on the discordant samples; Agresti-Min interval of the paired "
                      "accuracy difference"}


def samples_to_resolve(drop: float, discordance: float, n_now: int | None = None) -> int:
    """Test samples needed to tell a paired accuracy difference of 0 from one of ``drop`` (a fraction, e.g.
    0.01) with a two-sided 5 % test at 80 % power, given the rate of samples the two models disagree on.

    ``n = (z_0.975 + z_0.8)^2 * discordance / drop^2``; a discordance below 1 / ``n_now`` (none seen yet) is
    taken as 1 / ``n_now``.
    """
    if drop <= 0:
        raise ValueError(f"samples_to_resolve: drop must be > 0, got {drop}")
    rate = discordance
    if n_now:
        rate = max(rate, 1.0 / n_now)
    return max(1, math.ceil((Z95 + Z80) ** 2 * rate / drop**2))
