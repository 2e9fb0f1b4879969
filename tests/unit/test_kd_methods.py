"""The distillation plug-ins beyond Hinton KD, against hand computations: DKD, logit standardisation, label
smoothing on the hard term, the MUNGE transfer set and the temperature-calibrated teacher."""

from __future__ import annotations

import logging
import math
import statistics

import pytest
import torch

from kd2deploy.config import DataConfig, TrainConfig
from kd2deploy.data import load_data
from kd2deploy.distill.arms import Arm, train_arms
from kd2deploy.distill.batched import train_arms_batched
from kd2deploy.distill.losses import LOSSES, check_options, loss_options
from kd2deploy.distill.synthetic import Munge, fit_temperature, munge, nearest_neighbours, with_munge
from kd2deploy.distill.train import predict, to_tensors
from kd2deploy.models import build_model
from kd2deploy.models.nets import Standardized

STUDENT = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
TEACHER = [[3.0, 1.0, 0.0], [0.0, 2.0, -2.0]]
TARGETS = [0, 1]


def _softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(q, p):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(q, p, strict=True) if a > 0)


def _z(z):
    m = sum(z) / len(z)
    return [(v - m) / (statistics.stdev(z) + 1e-7) for v in z]


def _call(name, s=STUDENT, t=TEACHER, y=TARGETS, **kw):
    return float(LOSSES.get(name)(torch.tensor(s), torch.tensor(t), torch.tensor(y), **kw))


def _hand_ce(label_smoothing=0.0):
    total = 0.0
    for z, y in zip(STUDENT, TARGETS, strict=True):
        lp = [math.log(p) for p in _softmax(z)]
        total += (1 - label_smoothing) * -lp[y] + label_smoothing * -sum(lp) / len(lp)
    return total / len(STUDENT)


def _hand_dkd(t, y=TARGETS, s=STUDENT, te=TEACHER):
    """(mean TCKD, mean NCKD) worked from the definitions of Zhao et al. 2022."""
    tck, nck = [], []
    for zs, zt, c in zip(s, te, y, strict=True):
        ps, pt = _softmax(zs, t), _softmax(zt, t)
        tck.append(_kl([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]]))
        rs = [p / (1 - ps[c]) for k, p in enumerate(ps) if k != c]
        rt = [p / (1 - pt[c]) for k, p in enumerate(pt) if k != c]
        nck.append(_kl(rt, rs))
    return sum(tck) / len(tck), sum(nck) / len(nck)


# ------------------------------------------------------------------------------------------ losses
def test_hinton_label_smoothing_smooths_only_the_hard_term():
    t, alpha, e = 4.0, 0.7, 0.1
    plain = _call("hinton", temperature=t, alpha=alpha)
    smoothed = _call("hinton", temperature=t, alpha=alpha, label_smoothing=e)
    assert smoothed - plain == pytest.approx((1 - alpha) * (_hand_ce(e) - _hand_ce()), rel=1e-5)
    # by hand: (0.9 * 0.16985 + 0.1 * 1.83652 + 0.9 * 0.46437 + 0.1 * 1.29770) / 2
    assert _hand_ce(0.1) == pytest.approx(0.442107, rel=1e-4)


def test_standardized_logits_match_the_hand_z_scores():
    t = 2.0
    hand = sum(_kl(_softmax(_z(zt), t), _softmax(_z(zs), t)) for zs, zt in zip(STUDENT, TEACHER, strict=True)) / 2
    assert _call("hinton", temperature=t, alpha=1.0, standardize_logits=True) == pytest.approx(t * t * hand, rel=1e-4)
    # invariant to the teacher's scale and offset: only the logits' shape is taught
    scaled = [[3 * v + 5 for v in row] for row in TEACHER]
    assert _call("hinton", t=scaled, temperature=t, alpha=1.0, standardize_logits=True) == pytest.approx(
        t * t * hand, rel=1e-4)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dkd_against_hand_tckd_and_nckd(t):
    tckd, nckd = _hand_dkd(t)
    got = _call("dkd", temperature=t, alpha=0.6, target_weight=1.5, nontarget_weight=8.0)
    assert got == pytest.approx(0.6 * t * t * (1.5 * tckd + 8.0 * nckd) + 0.4 * _hand_ce(), rel=1e-5)


def test_dkd_with_kd_weights_is_hinton_kd():
    """Zhao et al.'s identity: KD = TCKD + (1 - p_target of the teacher) * NCKD, per sample."""
    t = 2.0
    for zs, zt, c in zip(STUDENT, TEACHER, TARGETS, strict=True):
        w = 1 - _softmax(zt, t)[c]
        dkd = _call("dkd", s=[zs], t=[zt], y=[c], temperature=t, alpha=1.0, target_weight=1.0, nontarget_weight=w)
        kd = _call("hinton", s=[zs], t=[zt], y=[c], temperature=t, alpha=1.0)
        assert dkd == pytest.approx(kd, rel=1e-5)


def test_dkd_unlabelled_uses_the_teachers_top_class_and_handles_a_certain_teacher():
    t = 4.0
    top = [max(range(3), key=row.__getitem__) for row in TEACHER]
    tckd, nckd = _hand_dkd(t, y=top)
    got = _call("dkd", y=[-1, -1], temperature=t, alpha=1.0)
    assert got == pytest.approx(t * t * (tckd + 8.0 * nckd), rel=1e-5)
    s = torch.tensor(STUDENT, requires_grad=True)
    loss = LOSSES.get("dkd")(s, torch.tensor([[200.0, 0.0, 0.0], [0.0, 300.0, 0.0]]), torch.tensor(TARGETS),
                             temperature=1.0, alpha=0.9)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_on_stacked_logits_gives_one_value_per_model():
    s = torch.randn(3, 5, 4)
    t = torch.randn(3, 5, 4)
    y = torch.tensor([0, 1, 2, 3, -1]).expand(3, 5)
    stacked = LOSSES.get("dkd")(s, t, y, temperature=2.0, alpha=0.5)
    each = torch.stack([LOSSES.get("dkd")(s[i], t[i], y[i], temperature=2.0, alpha=0.5) for i in range(3)])
    torch.testing.assert_close(stacked, each)


def test_loss_options_are_introspected_and_checked():
    assert loss_options("dkd") == {"target_weight": 1.0, "nontarget_weight": 8.0, "label_smoothing": 0.0,
                                   "standardize_logits": False}
    assert loss_options("mse-logits") == {}
    with pytest.raises(ValueError, match="loss 'hinton' takes no option 'beta'; allowed: label_smoothing, "
                                         "standardize_logits"):
        check_options("hinton", {"beta": 8})


# ------------------------------------------------------------------------------------- batched trainer
@pytest.fixture(scope="module")
def digits():
    d = load_data(DataConfig(), seed=0)
    x_tr, y_tr, x_va, y_va = to_tensors(d.x_train[:192], d.y_train[:192], d.x_val[:96], d.y_val[:96])
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def build(arch="cnn-tiny"):
        return Standardized(build_model(arch, d.input_shape, 10, {}, "student"), mean, std)

    torch.manual_seed(0)
    return build, (x_tr, y_tr, x_va, y_va), predict(build("cnn-small"), x_tr) * 4


def test_new_losses_train_stacked_and_match_sequential(digits, caplog):
    build, tensors, tl = digits
    arms = [Arm("dkd", 0, loss="dkd", temperature=4.0, alpha=0.5, options=(("nontarget_weight", 2.0),)),
            Arm("kd-ls", 0, loss="hinton", temperature=2.0, alpha=0.5, options=(("label_smoothing", 0.1),)),
            Arm("kd-std", 0, loss="hinton", temperature=2.0, alpha=0.9, options=(("standardize_logits", True),)),
            Arm("scratch", 0)]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3)
    ref = train_arms(build, arms, tensors, tl, cfg)
    with caplog.at_level(logging.INFO):
        got = train_arms_batched(build, arms, tensors, tl, cfg, engine="auto")
    assert "as one stacked model (fast engine)" in caplog.text
    for (m0, _), (m1, _) in zip(ref, got, strict=True):
        for k, v in m0.state_dict().items():
            torch.testing.assert_close(m1.state_dict()[k], v, atol=1e-4, rtol=1e-3)
    # the options matter: the smoothed and the plain hard term give different students
    plain = train_arms(build, [Arm("kd", 0, loss="hinton", temperature=2.0, alpha=0.5)], tensors, tl, cfg)
    first = next(k for k in plain[0][0].state_dict() if k.endswith("weight"))
    assert not torch.allclose(plain[0][0].state_dict()[first], ref[1][0].state_dict()[first])


# ------------------------------------------------------------------------------------------- MUNGE
def test_nearest_neighbours_by_hand():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [5.0, 6.5]])
    assert nearest_neighbours(x).tolist() == [1, 0, 3, 2]


def test_munge_extremes_and_spread():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [5.0, 6.5]])
    assert torch.equal(munge(x, Munge(passes=2, p=0.0), 0), torch.cat([x, x]))  # p = 0: copies
    moved = munge(x, Munge(passes=1, p=1.0, s=1e9), 0)  # p = 1, no spread: every sample becomes its neighbour
    torch.testing.assert_close(moved, x[[1, 0, 3, 2]])
    assert len(munge(x, Munge(passes=0), 0)) == 0
    # p = 1, s = 2: sample 2's second attribute ~ N(6.5, |5 - 6.5| / 2 = 0.75)
    big = torch.tensor([[5.0, 5.0], [5.0, 6.5]])
    draws = munge(big, Munge(passes=4000, p=1.0, s=2.0), 1).view(4000, 2, 2)[:, 0, 1]
    assert float(draws.mean()) == pytest.approx(6.5, abs=0.05)
    assert float(draws.std()) == pytest.approx(0.75, abs=0.05)
    assert torch.equal(munge(x, Munge(passes=1), 3), munge(x, Munge(passes=1), 3))  # seeded


def test_with_munge_labels_synthetic_samples_by_the_teacher_only(digits):
    build, (x_tr, y_tr, *_), _ = digits
    teacher = build("cnn-small").eval()
    x, y, t, real = with_munge(x_tr, y_tr, None, teacher, Munge(passes=2), seed=0)
    n = len(x_tr)
    assert x.shape == (3 * n, *x_tr.shape[1:]) and (y[n:] == -1).all() and torch.equal(y[:n], y_tr)
    assert torch.equal(real, torch.arange(n))
    torch.testing.assert_close(t, predict(teacher, x))


# ------------------------------------------------------------------------------------- calibration
def test_fit_temperature_by_hand():
    # logits [2, 0]; 3 of 4 samples are class 0: the NLL is lowest where sigmoid(2 / T) = 3/4, T = 2 / ln 3
    z = torch.tensor([[2.0, 0.0]] * 4)
    y = torch.tensor([0, 0, 0, 1])
    assert fit_temperature(z, y) == pytest.approx(2 / math.log(3), rel=1e-4)
