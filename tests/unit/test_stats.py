"""kd2deploy.stats: intervals and paired tests, checked against known values and by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from kd2deploy import stats


def test_wilson_interval_known_values_and_bad_input():
    lo, hi = stats.accuracy_interval(355, 360)
    assert lo == pytest.approx(0.96790, abs=1e-5) and hi == pytest.approx(0.99405, abs=1e-5)
    lo, hi = stats.accuracy_interval(360, 360)  # 100 %: still an interval below 1
    assert hi == pytest.approx(1.0) and 0.985 < lo < 0.995
    rec = stats.accuracy_record(0.9861, 360)
    assert rec["correct"] == 355 and rec["ci95"][0] < 0.9861 < rec["ci95"][1]
    with pytest.raises(ValueError, match="need 0 <= correct <= n"):
        stats.accuracy_interval(5, 3)


def test_wilson_coverage_near_one():
    rng = np.random.default_rng(0)
    p, n = 0.99, 360
    hits = 0
    for k in rng.binomial(n, p, size=2000):
        lo, hi = stats.accuracy_interval(int(k), n)
        hits += lo <= p <= hi
    assert hits / 2000 >= 0.93


def test_paired_seeds_decides_by_the_paired_difference_not_the_spread():
    # Both arms vary a lot across seeds, but KD is above the control on every seed by ~0.5 pp:
    # the old "difference vs the larger sd" rule called this a tie; the paired test resolves it.
    control = [0.960, 0.975, 0.985, 0.970, 0.990]
    kd = [c + d for c, d in zip(control, [0.004, 0.006, 0.005, 0.005, 0.006], strict=True)]
    res = stats.paired_seeds(kd, control)
    assert res["verdict"] == "beats" and res["wins"] == 5 and res["ci95"][0] > 0
    assert res["p_t"] < 0.001 and res["p_sign"] == pytest.approx(0.0625)
    mixed = stats.paired_seeds([0.97, 0.98, 0.96], [0.975, 0.97, 0.965])
    assert mixed["verdict"] == "no resolvable difference from" and mixed["ci95"][0] < 0 < mixed["ci95"][1]
    assert stats.paired_seeds([0.9], [0.8])["verdict"] == "one seed: no test against"
    with pytest.raises(ValueError, match="equally long"):
        stats.paired_seeds([0.9, 0.8], [0.8])


def test_mcnemar_counts_and_exact_p():
    from scipy.stats import binomtest

    a = np.array([1] * 350 + [1] * 2 + [0] * 7 + [0], bool)  # a wrong on 8
    b = np.array([1] * 350 + [0] * 2 + [1] * 7 + [0], bool)  # b wrong on 3
    res = stats.paired_samples(a, b)
    assert (res["a_only"], res["b_only"], res["n"]) == (2, 7, 360)
    assert res["diff"] == pytest.approx(-5 / 360)
    assert res["p_mcnemar"] == pytest.approx(binomtest(2, 9, 0.5).pvalue)
    assert res["ci95"][0] < res["diff"] < res["ci95"][1]
    same = stats.paired_samples(a, a)
    assert same["p_mcnemar"] == 1.0 and same["diff"] == 0


def test_paired_difference_interval_covers_by_simulation():
    """2x2 tables with few discordant samples (the digits case): the Agresti–Min interval covers >= 93 %."""
    rng = np.random.default_rng(1)
    n, p_a_only, p_b_only = 360, 0.005, 0.015
    truth = p_a_only - p_b_only
    hits = 0
    for _ in range(1000):
        u = rng.random(n)
        a = np.ones(n, bool)
        b = np.ones(n, bool)
        b[u < p_a_only] = False
        a[(u >= p_a_only) & (u < p_a_only + p_b_only)] = False
        lo, hi = stats.paired_samples(a, b)["ci95"]
        hits += lo <= truth <= hi
    assert hits / 1000 >= 0.93


def test_samples_to_resolve_gives_the_power_it_promises():
    """At the returned n, a drop of 1 pp with 2 % discordance is detected about 80 % of the time."""
    n = stats.samples_to_resolve(0.01, 0.02)
    assert n == pytest.approx(7.849 * 0.02 / 1e-4, rel=0.01)
    rng = np.random.default_rng(2)
    b_only_p, a_only_p = 0.015, 0.005  # discordance 2 %, difference 1 pp
    detected = 0
    for _ in range(400):
        u = rng.random(n)
        a_only = int((u < a_only_p).sum())
        b_only = int(((u >= a_only_p) & (u < a_only_p + b_only_p)).sum())
        a = np.ones(n, bool)
        b = np.ones(n, bool)
        a[:b_only] = False
        b[b_only:b_only + a_only] = False
        detected += stats.paired_samples(a, b)["ci95"][1] < 0
    assert 0.7 <= detected / 400 <= 0.9
    assert stats.samples_to_resolve(0.01, 0.0, n_now=360) > 100  # no disagreement seen yet: not "1 sample"
    with pytest.raises(ValueError, match="drop must be > 0"):
        stats.samples_to_resolve(0, 0.1)
