"""Token-level distillation losses: known values, symmetry/limits, the top-k shortcut equal to the dense loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd2deploy.distill.store import densify, topk_parts
from kd2deploy.tasks.causal_lm.losses import LOSSES, divergence, forward_kl_topk, mixed_loss, next_token_ce


def _logits(seed, shape=(2, 5, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("loss", LOSSES)
def test_zero_when_student_equals_teacher_and_positive_otherwise(loss):
    t = _logits(0)
    assert divergence(t.clone(), t, loss).abs() < 1e-6
    assert divergence(_logits(1), t, loss) > 1e-3


def test_forward_and_reverse_kl_match_torch_kl_div():
    s, t = _logits(1), _logits(2)
    want_fwd = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1).mean()
    want_rev = F.kl_div(F.log_softmax(t, -1), F.log_softmax(s, -1), log_target=True, reduction="none").sum(-1).mean()
    assert divergence(s, t, "forward_kl") == pytest.approx(float(want_fwd), rel=1e-5)
    assert divergence(s, t, "reverse_kl") == pytest.approx(float(want_rev), rel=1e-5)
    # temperature: Hinton's T^2 scaling of the softened KL
    T = 3.0
    soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none")
    assert divergence(s, t, "forward_kl", temperature=T) == pytest.approx(float(soft.sum(-1).mean()) * T * T, rel=1e-5)


def test_jsd_is_bounded_and_symmetric_at_half():
    s, t = _logits(3), _logits(4)
    a = divergence(s, t, "jsd", beta=0.5)
    assert a == pytest.approx(float(divergence(t, s, "jsd", beta=0.5)), rel=1e-5)
    assert 0 < a <= math.log(2) + 1e-6
    # skew KL with a tiny skew approaches forward KL; it is always below it
    fwd = divergence(s, t, "forward_kl")
    assert divergence(s, t, "skew_kl", skew=1e-4) == pytest.approx(float(fwd), rel=1e-2)
    assert divergence(s, t, "skew_kl", skew=0.3) < fwd
    assert divergence(s, t, "skew_reverse_kl", skew=0.3) < divergence(s, t, "reverse_kl")


def test_mask_leaves_positions_out():
    s, t = _logits(5), _logits(6)
    mask = torch.zeros(2, 5, dtype=torch.long)
    mask[0, 1] = 1
    assert divergence(s, t, "forward_kl", mask=mask) == pytest.approx(
        float(divergence(s[:1, 1:2], t[:1, 1:2], "forward_kl")), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_forward_kl_equals_dense_on_densified_teacher(temperature):
    s, t = _logits(7, (2, 6, 50)), _logits(8, (2, 6, 50))
    v, ix, rest = topk_parts(t, 8)
    dense = divergence(s, densify(v, ix, rest, 50), "forward_kl", temperature=temperature)
    assert forward_kl_topk(s, v, ix, rest, temperature=temperature) == pytest.approx(float(dense), rel=1e-4)
    v, ix, rest = topk_parts(t, 50)  # k = V: exact
    assert forward_kl_topk(s, v, ix, rest) == pytest.approx(float(divergence(s, t, "forward_kl")), rel=1e-4)


def test_mixed_loss_is_alpha_weighted_and_ce_only_without_teacher():
    from kd2deploy.tasks.causal_lm.config import LMDistillConfig

    s, t = _logits(9), _logits(10)
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    ce = next_token_ce(s, ids)
    want_ce = F.cross_entropy(s[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert ce == pytest.approx(float(want_ce), rel=1e-5)
    cfg = LMDistillConfig(alpha=0.25)
    total, parts = mixed_loss(s, t, ids, cfg)
    assert float(total) == pytest.approx(0.25 * parts["kd"] + 0.75 * parts["ce"], rel=1e-5)
    assert mixed_loss(s, None, ids, cfg)[1] == {"ce": pytest.approx(float(ce))}
    # top-k parts give the same loss as their densified logits
    v, ix, rest = topk_parts(t, 4)
    a, _ = mixed_loss(s, (v, ix, rest), ids, cfg)
    b, _ = mixed_loss(s, densify(v, ix, rest, 11), ids, cfg)
    assert float(a) == pytest.approx(float(b), rel=1e-4)
    with pytest.raises(ValueError, match="forward_kl only"):
        mixed_loss(s, (v, ix, rest), ids, LMDistillConfig(loss="jsd"))


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: forward_kl"):
        divergence(_logits(0), _logits(1), "kl")


def test_rouge_l_from_rouge_score():
    pytest.importorskip("rouge_score")
    from kd2deploy.tasks.causal_lm.evaluate import rouge_l

    r = rouge_l(["the cat sat on the mat", "a b c"], ["the cat sat on the mat", "x y z"])
    assert r["per_prompt"] == [1.0, 0.0] and r["rougeL_f"] == 0.5
    assert 0 < rouge_l(["the cat sat on the mat"], ["the cat lay on a mat"])["rougeL_f"] < 1
