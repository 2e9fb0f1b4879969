"""The latency intervals hold their coverage when sessions differ (simulated, known truth).

Each simulated benchmark has 3 rounds of 300 calls (edge.yaml's default shape), every round in its own session:
call latencies are lognormal around a session median, and session medians spread lognormally around the true
p50 by 0, 1 or 3 %. The harness's 95 % interval of the p50 (and of a ratio of two models' p50s) must contain
the truth at least 93 % of the time, and at 0 % spread must stay a few percent wide, not absurdly wide.

The two-level bootstrap alone (the harness before the t interval over rounds), in this simulation (400 runs,
200 resamples): 15 % call noise 98 / 93 / 79 % coverage at 0 / 1 / 3 % spread; 5 % call noise 98 / 79 / 72 %.
"""

from __future__ import annotations

import numpy as np
import pytest

from kd2deploy.bench import harness

TRUE_P50 = 50.0
N_SIM = 400


def _bench(rng, spread: float, call_sigma: float, rounds: int = 3, calls: int = 300) -> list[np.ndarray]:
    return [TRUE_P50 * np.exp(rng.normal(0, spread)) * np.exp(rng.normal(0, call_sigma, calls))
            for _ in range(rounds)]


@pytest.mark.parametrize("call_sigma", [0.05, 0.15])
@pytest.mark.parametrize("spread", [0.0, 0.01, 0.03])
def test_p50_interval_covers_at_nominal_95(spread, call_sigma):
    rng = np.random.default_rng(round(1000 * spread + 100 * call_sigma))
    hits, widths = 0, []
    for i in range(N_SIM):
        lo, hi = harness.median_ci(_bench(rng, spread, call_sigma), 200, i)
        hits += lo <= TRUE_P50 <= hi
        widths.append((hi - lo) / 2 / TRUE_P50)
    coverage = hits / N_SIM
    assert coverage >= 0.93, f"coverage {coverage:.3f} at spread {spread}, call noise {call_sigma}"
    if spread == 0:  # calibrated, not merely wide: a few percent at 15 % call noise over 900 calls
        assert np.median(widths) < 0.035


@pytest.mark.parametrize("spread", [0.0, 0.01, 0.03])
def test_ratio_interval_covers_at_nominal_95(spread):
    """Teacher and student sessions each spread independently; the true ratio is 2."""
    rng = np.random.default_rng(7 + round(1000 * spread))
    hits = 0
    for i in range(N_SIM):
        a = [2 * r for r in _bench(rng, spread, 0.1)]
        b = _bench(rng, spread, 0.1)
        _, lo, hi = harness.ratio_ci(a, b, 200, i)
        hits += lo <= 2.0 <= hi
    assert hits / N_SIM >= 0.93


def test_t_quantiles_match_scipy():
    from scipy.stats import t

    for df in (1, 2, 4, 10, 30, 31, 60, 500):
        assert harness.t975(df) == pytest.approx(t.ppf(0.975, df), abs=2e-3)
    with pytest.raises(ValueError, match="df must be >= 1"):
        harness.t975(0)


def test_one_round_keeps_the_bootstrap_interval():
    rng = np.random.default_rng(3)
    x = rng.lognormal(np.log(50), 0.1, 500)
    assert harness.median_ci([x], 500, 0) == harness.median_ci(x, 500, 0)
