"""Convergence and smoothness figures against curves worked by hand."""

from __future__ import annotations

import pytest

from kd2deploy.distill.convergence import convergence, curve_figures, sentences, tail_length


def _curve(accs, step_s=2.0):
    return [{"epoch": i + 1, "val_acc": a, "time_s": step_s * (i + 1)} for i, a in enumerate(accs)]


KD = [0.5, 0.9, 0.95, 0.97, 0.98, 0.99, 0.99, 0.98, 0.99, 0.99]
SCRATCH = [0.4, 0.7, 0.85, 0.9, 0.93, 0.95, 0.96, 0.96, 0.97, 0.97]


def test_one_curve_by_hand():
    f = curve_figures(_curve(KD), scratch_final=0.97, energy_kwh=1.0)
    # 99 % of 0.99 is 0.9801: first reached at epoch 6 (0.98 < 0.9801); scratch's 0.97 at epoch 4
    assert f["to_99pct_of_own_final"] == {"epoch": 6, "time_s": 12.0, "energy_share": 0.6, "energy_kwh": 0.6}
    assert f["to_scratch_final"]["epoch"] == 4 and f["to_scratch_final"]["energy_kwh"] == pytest.approx(0.4)
    # the last 5 epochs: 0.99 0.99 0.98 0.99 0.99 -> sd 0.4472 pp, steps 0, 1, 1, 0 pp -> mean 0.5 pp
    assert f["tail_epochs"] == 5
    assert f["tail_sd_pp"] == pytest.approx(0.4472136, rel=1e-5)
    assert f["tail_mean_abs_step_pp"] == pytest.approx(0.5, rel=1e-9)
    never = curve_figures(_curve(SCRATCH), scratch_final=0.99, energy_kwh=None)["to_scratch_final"]
    assert never == {"epoch": None, "time_s": None, "energy_kwh": None, "energy_share": None}


def test_tail_length():
    assert [tail_length(n) for n in (3, 10, 60, 120, 200)] == [3, 5, 6, 12, 20]


def test_over_seeds_with_energy_shared_by_time_and_sentences():
    per_seed = [
        {"seed": 0, "kd": {"curve": _curve(KD), "train_time_s": 20.0},
         "scratch": {"curve": _curve(SCRATCH), "train_time_s": 20.0}},
        {"seed": 1, "kd": {"curve": _curve(SCRATCH), "train_time_s": 20.0},
         "scratch": {"curve": _curve(KD), "train_time_s": 20.0}},
    ]
    rec = convergence(per_seed, energy_kwh=4.0)  # each of the 4 students: 1 kWh
    kd = rec["arms"]["kd"]
    assert kd["seeds"] == 2 and kd["final_val_acc"] == pytest.approx(0.98)
    # seed 0 reaches scratch's 0.97 at epoch 4 (0.4 kWh); seed 1 (the scratch curve) never reaches 0.99
    assert kd["to_scratch_final"] == {"reached_in_seeds": 1, "epoch": 4, "time_s": 8.0,
                                      "energy_kwh": pytest.approx(0.4), "energy_share": pytest.approx(0.4)}
    # 99 % of own final: KD curve epoch 6; scratch curve 0.97 -> 0.9603, not met by 0.96, so epoch 9: mean 7.5
    assert kd["to_99pct_of_own_final"]["epoch"] == 7.5 and kd["to_99pct_of_own_final"]["reached_in_seeds"] == 2
    lines = sentences(rec)
    assert lines[0].startswith("kd: 99 % of its final validation accuracy at epoch 7.5 of 10; reaches scratch's final "
                               "validation accuracy in 4 of its 10 epochs, 40 % of its training energy (1 of 2 seeds)")
    assert lines[1].startswith("scratch: 99 % of its final") and "reaches scratch" not in lines[1]
    assert "Energy is the students stage's CodeCarbon total shared out" in rec["how"]
