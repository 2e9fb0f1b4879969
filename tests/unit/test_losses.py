"""Distillation losses against hand computations: the T^2 factor, the alpha mix, the registry."""

from __future__ import annotations

import math

import pytest
import torch

from kd2deploy.distill.losses import LOSSES
from kd2deploy.errors import ConfigError

STUDENT = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
TEACHER = [[3.0, 1.0, 0.0], [0.0, 2.0, -2.0]]
TARGETS = [0, 1]


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _hand_kl(t):
    """KL(teacher || student) at temperature t, averaged over the two samples (batchmean)."""
    total = 0.0
    for zs, zt in zip(STUDENT, TEACHER, strict=True):
        ps, pt = _softmax(zs, t), _softmax(zt, t)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True))
    return total / len(STUDENT)


def _hand_ce():
    return sum(-math.log(_softmax(z, 1.0)[y]) for z, y in zip(STUDENT, TARGETS, strict=True)) / len(STUDENT)


def _loss(name, t, alpha):
    fn = LOSSES.get(name)
    s, z, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS)
    return float(fn(s, z, y, temperature=t, alpha=alpha))


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_hinton_is_t_squared_kl_plus_hard_ce(t, alpha):
    expected = alpha * t * t * _hand_kl(t) + (1 - alpha) * _hand_ce()
    assert _loss("hinton", t, alpha) == pytest.approx(expected, rel=1e-5)


def test_hinton_numbers():
    # worked by hand: sample 1 has teacher = student + 1 (same softmax, KL 0); sample 2 gives KL 0.02911
    assert _hand_kl(4.0) == pytest.approx(0.0145565, rel=1e-4)
    assert _hand_ce() == pytest.approx(0.3171074, rel=1e-4)
    assert _loss("hinton", 4.0, 0.9) == pytest.approx(0.9 * 16 * 0.0145565 + 0.1 * 0.3171074, rel=1e-4)


def test_t_squared_keeps_soft_gradients_on_scale():
    """Without T^2 the soft term's gradient shrinks like 1/T^2; with it, it stays of order one."""
    grads = []
    for t in (2.0, 8.0):
        s = torch.tensor(STUDENT, requires_grad=True)
        loss = LOSSES.get("hinton")(s, torch.tensor(TEACHER), torch.tensor(TARGETS), temperature=t, alpha=1.0)
        loss.backward()
        grads.append(float(s.grad.abs().sum()))
    assert 0.5 < grads[1] / grads[0] < 2.0


def test_identical_logits_leave_only_the_hard_term():
    s = torch.tensor(STUDENT)
    y = torch.tensor(TARGETS)
    loss = LOSSES.get("hinton")(s, s.clone(), y, temperature=4.0, alpha=0.9)
    assert float(loss) == pytest.approx(0.1 * _hand_ce(), abs=1e-6)


def test_mse_logits():
    pairs = [(a, b) for rs, rt in zip(STUDENT, TEACHER, strict=True) for a, b in zip(rs, rt, strict=True)]
    mse = sum((a - b) ** 2 for a, b in pairs) / len(pairs)
    assert _loss("mse-logits", 4.0, 0.5) == pytest.approx(0.5 * mse + 0.5 * _hand_ce(), rel=1e-5)
    assert _loss("mse-logits", 1.0, 1.0) == pytest.approx(mse, rel=1e-5)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ConfigError, match="hinton.*mse-logits|mse-logits.*hinton"):
        LOSSES.get("hintn")
