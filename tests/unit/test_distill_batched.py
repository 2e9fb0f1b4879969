"""The batched trainer reproduces train_arms (weights, curves, errors) and falls back when it cannot batch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kd2deploy.config import DataConfig, TrainConfig
from kd2deploy.data import load_data
from kd2deploy.distill.arms import Arm, train_arms
from kd2deploy.distill.batched import CannotBatch, train_arms_batched
from kd2deploy.distill.train import predict, to_tensors
from kd2deploy.errors import StageError
from kd2deploy.models import build_model
from kd2deploy.models.nets import Standardized

CFG = TrainConfig(epochs=3, batch_size=32, lr=3e-3)


@pytest.fixture(scope="module")
def digits():
    d = load_data(DataConfig(), seed=0)
    x_tr, y_tr, x_va, y_va = to_tensors(d.x_train[:192], d.y_train[:192], d.x_val[:96], d.y_val[:96])
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def build(arch: str = "cnn-tiny", **kwargs):
        return Standardized(build_model(arch, d.input_shape, 10, kwargs, "student"), mean, std)

    torch.manual_seed(0)
    teacher = build("cnn-small")
    teacher_logits = predict(teacher, x_tr) * 4  # an untrained net's logits, made confident
    return build, (x_tr, y_tr, x_va, y_va), teacher_logits


ARMS = [
    Arm("kd", 0, loss="hinton", temperature=4.0, alpha=0.9),
    Arm("scratch", 0),
    Arm("label_smoothing", 0, label_smoothing=0.1),
    Arm("kd", 1, loss="hinton", temperature=4.0, alpha=0.9),
    Arm("scratch", 1),
    Arm("mse", 1, loss="mse-logits", alpha=0.5),
]


def _assert_same(reference, batched, atol=1e-4):
    assert len(reference) == len(batched)
    for (m0, h0), (m1, h1) in zip(reference, batched, strict=True):
        assert type(m1) is type(m0) and not m1.training
        s0, s1 = m0.state_dict(), m1.state_dict()
        assert s0.keys() == s1.keys()
        for k in s0:
            torch.testing.assert_close(s1[k], s0[k], atol=atol, rtol=1e-3, msg=lambda m, k=k: f"{k}: {m}")
        assert [e.keys() for e in h1.epochs] == [e.keys() for e in h0.epochs]
        curve = {key: [e[key] for e in h0.epochs] for key in ("val_acc", "train_loss", "val_loss")}
        assert [e["val_acc"] for e in h1.epochs] == pytest.approx(curve["val_acc"], abs=0.011)
        for key in ("train_loss", "val_loss"):
            assert [e[key] for e in h1.epochs] == pytest.approx(curve[key], rel=1e-3, abs=1e-4)
        assert h1.samples_seen == h0.samples_seen


@pytest.fixture(scope="module")
def sequential(digits):
    build, tensors, teacher_logits = digits
    return train_arms(build, ARMS, tensors, teacher_logits, CFG)


@pytest.mark.parametrize("engine", ["fast", "vmap", "auto"])
def test_batched_matches_sequential(digits, sequential, engine):
    build, tensors, teacher_logits = digits
    batched = train_arms_batched(build, ARMS, tensors, teacher_logits, CFG, engine=engine)
    _assert_same(sequential, batched)


def test_chunks_and_sgd_match_sequential(digits):
    build, tensors, teacher_logits = digits
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2, optimizer="sgd", schedule="constant")
    arms = ARMS[:3]
    reference = train_arms(build, arms, tensors, teacher_logits, cfg)
    _assert_same(reference, train_arms_batched(build, arms, tensors, teacher_logits, cfg, max_models=2))


def test_mlp_with_dropout_trains_batched(digits, caplog):
    build, tensors, _ = digits
    arms = [Arm("scratch", 0), Arm("scratch", 1)]
    with caplog.at_level("INFO", logger="kd2deploy.distill.batched"):
        out = train_arms_batched(lambda: build("mlp", dropout=0.2), arms, tensors, None, CFG)
    assert "fast engine" in caplog.text
    assert all(h.epochs[-1]["val_acc"] > 0.5 for _, h in out)


def _sequential_net():
    return nn.Sequential(
        # no bias right before a batch norm: its gradient is zero up to rounding, which Adam would amplify
        nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.BatchNorm2d(4), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 16), nn.Tanh(), nn.BatchNorm1d(16), nn.Dropout(0.0), nn.Linear(16, 10),
    )


def test_other_layer_chains_use_the_fast_engine(digits, caplog):
    """Conv bias, GELU, tanh, average pooling and BatchNorm1d in a plain nn.Sequential."""
    _, tensors, teacher_logits = digits
    with caplog.at_level("INFO", logger="kd2deploy.distill.batched"):
        out = train_arms_batched(_sequential_net, ARMS[:3], tensors, teacher_logits, CFG)
    assert "fast engine" in caplog.text
    _assert_same(train_arms(_sequential_net, ARMS[:3], tensors, teacher_logits, CFG), out)


def test_on_epoch_and_history(digits):
    build, tensors, teacher_logits = digits
    calls = []
    out = train_arms_batched(build, ARMS[:2], tensors, teacher_logits, CFG,
                             on_epoch=lambda arm, e, m: calls.append((arm.key, e, m["val_acc"])))
    assert [(k, e) for k, e, _ in calls] == [(a.key, e) for e in (1, 2, 3) for a in ARMS[:2]]
    for arm, (_, hist) in zip(ARMS[:2], out, strict=True):
        assert [e["epoch"] for e in hist.epochs] == [1, 2, 3]
        assert hist.samples_seen == 3 * len(tensors[1])
        assert hist.train_time_s > 0
        assert [v for k, _, v in calls if k == arm.key] == [e["val_acc"] for e in hist.epochs]


class _Residual(nn.Module):
    """Not a plain layer chain: the fast engine declines, vmap runs it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        h = x.flatten(1)
        return self.b(h + torch.relu(self.a(h)))


class _Unbatchable(_Residual):
    """Reads a tensor into Python inside forward: neither engine can stack it."""

    def forward(self, x):
        h = x.flatten(1)
        return self.b(h * (1.0 + 0.0 * float(h.sum())))


def test_custom_forward_uses_vmap(digits, caplog):
    _, tensors, teacher_logits = digits
    arms = ARMS[:2]
    torch.manual_seed(0)
    with pytest.raises(CannotBatch, match="not a plain layer chain"):
        train_arms_batched(_Residual, arms, tensors, teacher_logits, CFG, engine="fast")
    with caplog.at_level("INFO", logger="kd2deploy.distill.batched"):
        out = train_arms_batched(_Residual, arms, tensors, teacher_logits, CFG)
    assert "vmap engine" in caplog.text
    _assert_same(train_arms(_Residual, arms, tensors, teacher_logits, CFG), out)


def test_falls_back_to_sequential(digits, caplog):
    _, tensors, teacher_logits = digits
    arms = ARMS[:2]
    with pytest.raises(CannotBatch):
        train_arms_batched(_Unbatchable, arms, tensors, teacher_logits, CFG, engine="vmap")
    with caplog.at_level("INFO", logger="kd2deploy.distill.batched"):
        out = train_arms_batched(_Unbatchable, arms, tensors, teacher_logits, CFG)
    assert "one by one" in caplog.text
    reference = train_arms(_Unbatchable, arms, tensors, teacher_logits, CFG)
    for (m0, h0), (m1, h1) in zip(reference, out, strict=True):
        for k, v in m0.state_dict().items():
            assert torch.equal(m1.state_dict()[k], v)
        assert [e["val_loss"] for e in h1.epochs] == [e["val_loss"] for e in h0.epochs]


def test_unvectorisable_loss_falls_back(digits, monkeypatch, caplog):
    from kd2deploy.distill.losses import LOSSES

    def python_loss(student_logits, teacher_logits, targets, *, temperature, alpha):
        return student_logits.logsumexp(-1).mean() * (alpha + 0.0 * student_logits.sum().item())

    monkeypatch.setitem(LOSSES._items, "python-loss", python_loss)
    build, tensors, teacher_logits = digits
    arms = [Arm("kd", 0, loss="python-loss", alpha=0.5), Arm("scratch", 0)]
    with caplog.at_level("INFO", logger="kd2deploy.distill.batched"):
        out = train_arms_batched(build, arms, tensors, teacher_logits, CFG)
    assert "one by one" in caplog.text and len(out) == 2


def test_nan_loss_names_arm_and_epoch(digits):
    build, tensors, teacher_logits = digits
    bad = teacher_logits.clone()
    bad[100] = math.nan
    arms = [Arm("scratch", 0), Arm("kd", 0, loss="hinton", temperature=4.0, alpha=0.9)]
    with pytest.raises(StageError, match=r"student kd/seed0: the training loss became nan in epoch 1"):
        train_arms_batched(build, arms, tensors, bad, CFG, engine="fast")


def test_rejects_bad_arguments(digits):
    build, tensors, _ = digits
    with pytest.raises(ValueError, match="teacher_logits"):
        train_arms_batched(build, ARMS[:2], tensors, None, CFG)
    with pytest.raises(ValueError, match="engine"):
        train_arms_batched(build, ARMS[:2], tensors, None, CFG, engine="gpu")


def test_ensemble_and_few_labels_train_batched(digits, caplog):
    """Teacher logits with a member axis and per-arm batch pools (few labels) keep batched == sequential."""
    build, (x_tr, y_tr, x_va, y_va), teacher_logits = digits
    members = torch.stack([teacher_logits, teacher_logits.flip(-1), 0.5 * teacher_logits], dim=1)
    labelled = torch.arange(0, len(y_tr), 7)
    y_masked = torch.full_like(y_tr, -1)
    y_masked[labelled] = y_tr[labelled]
    tensors = (x_tr, y_masked, x_va, y_va)
    arms = ARMS[:3] + [ARMS[5]]
    reference = train_arms(build, arms, tensors, members, CFG, labelled=labelled)
    with caplog.at_level("INFO", logger="kd2deploy.distill.batched"):
        batched = train_arms_batched(build, arms, tensors, members, CFG, labelled=labelled)
    assert "fast engine" in caplog.text
    _assert_same(reference, batched)
    plain = train_arms(build, arms[:1], (x_tr, y_tr, x_va, y_va), members, CFG)
    assert not torch.equal(plain[0][0].state_dict()["model.head.1.weight"],
                           reference[0][0].state_dict()["model.head.1.weight"])


def test_hint_terms_and_perturbations_fall_back_clearly(digits, caplog):
    from kd2deploy.distill.terms import Term
    from kd2deploy.distill.transfer import Perturb

    build, tensors, teacher_logits = digits
    torch.manual_seed(0)
    teacher = build("cnn-small")
    hint = Arm("kd", 0, loss="hinton", temperature=2.0, alpha=0.5,
               terms=(Term("hinton", 1.0, 2.0, 0.5), Term("hint", 0.1, 0.0, 0.0, "features.2", "features.2")))
    with pytest.raises(CannotBatch, match="hint terms"):
        train_arms_batched(build, [hint, Arm("scratch", 0)], tensors, teacher_logits, CFG, engine="fast",
                           teacher=teacher)
    with caplog.at_level("INFO", logger="kd2deploy.distill.batched"):
        out = train_arms_batched(build, ARMS[:2], tensors, None, CFG, teacher=teacher,
                                 perturb=Perturb(shift_px=1))
    assert "one by one: per-step augmentation" in caplog.text and len(out) == 2
    arms = [ARMS[1], hint, ARMS[2]]
    caplog.clear()
    with caplog.at_level("INFO", logger="kd2deploy.distill.batched"):
        out = train_arms_batched(build, arms, tensors, teacher_logits, CFG, teacher=teacher)
    assert "training 1 arms one by one (weighted / hint terms" in caplog.text and "the other 2 stacked" in caplog.text
    _assert_same(train_arms(build, arms, tensors, teacher_logits, CFG, teacher=teacher), out)


def test_batched_divergence_keeps_the_last_good_epoch(digits):
    from kd2deploy.distill.train import DivergedError

    build, tensors, teacher_logits = digits
    bad = teacher_logits.clone()
    bad[100] = math.nan
    arms = [Arm("scratch", 0), Arm("kd", 0, loss="hinton", temperature=4.0, alpha=0.9)]
    with pytest.raises(DivergedError) as err:
        train_arms_batched(build, arms, tensors, bad, CFG, engine="fast")
    torch.manual_seed(0)
    init = build().state_dict()
    assert err.value.epoch == 1 and all(torch.equal(err.value.state[k], v) for k, v in init.items())
