"""Ensembles, few labels, hint terms, transfer-set perturbations and the divergence guard, against hand
computations or properties that would break."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kd2deploy.config import DataConfig, TrainConfig
from kd2deploy.data import load_data
from kd2deploy.distill.arms import Arm, train_arms
from kd2deploy.distill.losses import LOSSES, hard_ce
from kd2deploy.distill.teacher import EnsembleTeacher, find_layer, teacher_logits_of
from kd2deploy.distill.terms import Objective, Term, make_adapter
from kd2deploy.distill.train import DivergedError, fit, to_tensors
from kd2deploy.distill.transfer import BatchOrder, Perturb, labelled_subset, perturb, random_shift
from kd2deploy.errors import ConfigError, StageError
from kd2deploy.models import build_model
from kd2deploy.models.nets import Standardized

STUDENT = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
MEMBERS = [[[3.0, 1.0, 0.0], [0.0, 0.5, 2.0]], [[0.0, 2.0, -2.0], [1.0, 1.0, 1.0]]]  # (batch 2, members 2, 3)
TARGETS = [0, 1]


def _softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _hand_ensemble_kl(t):
    """KL(mean_m softmax(z_m/T) || softmax(z_s/T)), batch mean, by hand."""
    total = 0.0
    for zs, members in zip(STUDENT, MEMBERS, strict=True):
        ps = _softmax(zs, t)
        probs = [_softmax(z, t) for z in members]
        pt = [sum(p[k] for p in probs) / len(probs) for k in range(3)]
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True))
    return total / len(STUDENT)


def _hand_ce(rows, targets):
    return sum(-math.log(_softmax(STUDENT[i])[y]) for i, y in zip(rows, targets, strict=True)) / len(rows)


# ------------------------------------------------------------------------------------------ ensembles
@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_hinton_on_an_ensemble_averages_probabilities_at_t(t):
    loss = LOSSES.get("hinton")(torch.tensor(STUDENT), torch.tensor(MEMBERS), torch.tensor(TARGETS),
                                temperature=t, alpha=0.7)
    expected = 0.7 * t * t * _hand_ensemble_kl(t) + 0.3 * _hand_ce([0, 1], TARGETS)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_averaging_probabilities_is_not_averaging_logits():
    mean_logits = torch.tensor(MEMBERS).mean(1)
    a = LOSSES.get("hinton")(torch.tensor(STUDENT), torch.tensor(MEMBERS), torch.tensor(TARGETS),
                             temperature=2.0, alpha=1.0)
    b = LOSSES.get("hinton")(torch.tensor(STUDENT), mean_logits, torch.tensor(TARGETS), temperature=2.0, alpha=1.0)
    assert abs(float(a) - float(b)) > 1e-3


def test_one_member_ensemble_equals_the_single_teacher():
    single = torch.tensor(MEMBERS)[:, 0]
    for name in ("hinton", "mse-logits"):
        a = LOSSES.get(name)(torch.tensor(STUDENT), single[:, None], torch.tensor(TARGETS), temperature=3.0, alpha=0.6)
        b = LOSSES.get(name)(torch.tensor(STUDENT), single, torch.tensor(TARGETS), temperature=3.0, alpha=0.6)
        assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_mse_logits_on_an_ensemble_matches_mean_logits():
    mean = [[(MEMBERS[b][0][k] + MEMBERS[b][1][k]) / 2 for k in range(3)] for b in range(2)]
    mse = sum((STUDENT[b][k] - mean[b][k]) ** 2 for b in range(2) for k in range(3)) / 6
    loss = LOSSES.get("mse-logits")(torch.tensor(STUDENT), torch.tensor(MEMBERS), torch.tensor(TARGETS),
                                    temperature=1.0, alpha=1.0)
    assert float(loss) == pytest.approx(mse, rel=1e-6)


def test_ensemble_module_predicts_mean_probabilities():
    torch.manual_seed(0)
    members = [nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)]
    ens = EnsembleTeacher(members)
    x = torch.randn(5, 4)
    probs = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(ens(x).exp(), probs)
    assert teacher_logits_of(ens, x).shape == (5, 3, 3)
    with pytest.raises(ValueError, match="two members"):
        EnsembleTeacher(members[:1])


# ----------------------------------------------------------------------------------------- few labels
def test_hard_ce_ignores_unlabelled_samples():
    s = torch.tensor(STUDENT)
    assert float(hard_ce(s, torch.tensor([0, -1]))) == pytest.approx(_hand_ce([0], [0]), rel=1e-6)
    assert float(hard_ce(s, torch.tensor([0, 1]))) == pytest.approx(_hand_ce([0, 1], [0, 1]), rel=1e-6)
    none = hard_ce(s.requires_grad_(), torch.tensor([-1, -1]))
    assert float(none.detach()) == 0.0
    none.backward()
    assert float(s.grad.abs().sum()) == 0.0


def test_hinton_with_missing_labels_keeps_the_soft_term_on_every_sample():
    y = torch.tensor([-1, 1])
    loss = LOSSES.get("hinton")(torch.tensor(STUDENT), torch.tensor(MEMBERS), y, temperature=2.0, alpha=0.5)
    expected = 0.5 * 4 * _hand_ensemble_kl(2.0) + 0.5 * _hand_ce([1], [1])
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_labelled_subset_is_stratified_and_seeded():
    y = np.repeat(np.arange(10), [30, 31, 29, 40, 10, 30, 30, 30, 30, 7])
    idx = labelled_subset(y, 0.1, seed=3)
    counts = np.bincount(y[idx], minlength=10)
    assert counts.tolist() == [max(1, round(0.1 * c)) for c in np.bincount(y)]
    assert np.array_equal(idx, labelled_subset(y, 0.1, seed=3))
    assert not np.array_equal(idx, labelled_subset(y, 0.1, seed=4))
    assert len(labelled_subset(y, 0.0, 0)) == 0 and len(labelled_subset(y, 1.0, 0)) == len(y)


def test_batch_order_plain_epochs_are_permutations():
    order = BatchOrder(10, 4, seed=1)
    batches = order.epoch()
    assert [len(b) for b in batches] == [4, 4, 2]
    ref = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat(batches), ref)


def test_batch_order_from_a_pool_keeps_the_step_budget():
    pool = torch.tensor([2, 5, 7])
    order = BatchOrder(10, 4, seed=0, pool=pool)
    seen = []
    for _ in range(3):
        batches = order.epoch()
        assert [len(b) for b in batches] == [4, 4, 4]  # as many steps as a full epoch, full batches
        seen += torch.cat(batches).tolist()
    assert set(seen) <= {2, 5, 7}
    counts = [seen.count(i) for i in (2, 5, 7)]
    assert max(counts) - min(counts) <= 1  # a stream of permutations: every labelled sample equally often


# ------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits():
    d = load_data(DataConfig(), seed=0)
    x_tr, y_tr, x_va, y_va = to_tensors(d.x_train[:256], d.y_train[:256], d.x_val[:96], d.y_val[:96])
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def build(arch: str = "cnn-tiny", **kwargs):
        return Standardized(build_model(arch, d.input_shape, 10, kwargs, "student"), mean, std)

    return build, (x_tr, y_tr, x_va, y_va)


CFG = TrainConfig(epochs=2, batch_size=64, lr=3e-3)


def test_few_label_controls_see_only_labelled_samples(digits):
    """The control trains on labelled samples only, with the same steps and batch size as KD."""
    build, (x_tr, y_tr, x_va, y_va) = digits
    labelled = torch.arange(0, 256, 10)
    y_masked = torch.full_like(y_tr, -1)
    y_masked[labelled] = y_tr[labelled]
    torch.manual_seed(0)
    teacher = build("cnn-small")
    seen: dict[str, list[torch.Tensor]] = {}

    class Spy(nn.Module):  # records the inputs each student is trained on (a real model underneath)
        def __init__(self, key):
            super().__init__()
            self.net, self.key = build(), key

        def forward(self, x):
            if self.training:
                seen.setdefault(self.key, []).append(x)
            return self.net(x)

    keys = iter(["init", "kd", "scratch"])  # the first build gives the seed's initial weights
    arms = [Arm("kd", 0, loss="hinton", temperature=2.0, alpha=0.5), Arm("scratch", 0)]
    out = train_arms(lambda: Spy(next(keys)), arms, (x_tr, y_masked, x_va, y_va),
                     teacher_logits_of(teacher, x_tr), CFG, labelled=labelled)
    assert out[0][1].samples_seen == out[1][1].samples_seen == CFG.epochs * 4 * 64
    rows = {tuple(r.flatten().tolist()) for r in x_tr[labelled]}
    assert all(tuple(r.flatten().tolist()) in rows for x in seen["scratch"] for r in x)
    assert sum(tuple(r.flatten().tolist()) not in rows for x in seen["kd"] for r in x) > 100


# -------------------------------------------------------------------------------------------- hints
def test_hint_term_is_weighted_mse_through_the_adapter(digits):
    build, (x_tr, y_tr, *_rest) = digits
    torch.manual_seed(0)
    student, teacher = build(), build("cnn-small")
    terms = (Term("hinton", 1.0, temperature=2.0, alpha=0.5),
             Term("hint", 0.3, student_layer="features.2", teacher_layer="features.2"))
    obj = Objective(terms, student, teacher, x_tr, seed=0)
    (adapter,) = obj.adapters
    assert isinstance(adapter, nn.Conv2d) and adapter.kernel_size == (1, 1)
    assert (adapter.in_channels, adapter.out_channels) == (8, 16)
    t_out = obj.teacher_fn(teacher)(x_tr[:16])
    assert t_out["layer:features.2"].shape == (16, 16, 8, 8)
    with obj.attached():
        student.train()
        logits = student(x_tr[:16])
        loss = obj(logits, t_out, y_tr[:16])
        s_feat = obj._feats["features.2"]
    expected = LOSSES.get("hinton")(logits, t_out["logits"], y_tr[:16], temperature=2.0, alpha=0.5)
    expected = expected + 0.3 * ((adapter(s_feat) - t_out["layer:features.2"]) ** 2).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert not any(k.startswith("adapter") for k in student.state_dict())  # training-only, not exported


def test_adapters_for_other_shapes():
    assert isinstance(make_adapter((8, 8, 8), (16, 4, 4))[1], nn.AdaptiveAvgPool2d)
    a = make_adapter((32,), (64,))
    assert a(torch.zeros(3, 32)).shape == (3, 64)
    assert make_adapter((8, 2, 2), (10,))(torch.zeros(3, 8, 2, 2)).shape == (3, 10)


def test_hint_layer_names_fail_loudly(digits):
    build, _ = digits
    with pytest.raises(ConfigError, match=r"unknown module 'features\.9'; valid names: features, features\.0"):
        find_layer(build(), "features.9", "student layer")


def test_hint_training_moves_features_towards_the_teacher(digits):
    build, (x_tr, y_tr, x_va, y_va) = digits
    torch.manual_seed(0)
    teacher = build("cnn-small")
    terms = (Term("hint", 1.0, student_layer="features.5", teacher_layer="features.5"),)
    arms = [Arm("kd", 0, loss="hint", terms=terms)]
    (model, hist), = train_arms(build, arms, (x_tr, y_tr, x_va, y_va), None, TrainConfig(epochs=4, lr=1e-2),
                                teacher=teacher)
    losses = [e["train_loss"] for e in hist.epochs]
    assert losses[-1] < 0.7 * losses[0]


# --------------------------------------------------------------------------------------- perturbations
def test_random_shift_moves_each_image_within_the_bound():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    out = random_shift(x, 1, torch.Generator().manual_seed(0))
    for i in range(2):
        fits = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = torch.nn.functional.pad(x[i], (1, 1, 1, 1))[:, 1 + dy : 6 + dy, 1 + dx : 6 + dx]
                fits.append(torch.equal(out[i], ref))
        assert sum(fits) == 1
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


def test_mixup_is_a_convex_combination():
    x = torch.randn(6, 1, 4, 4)
    y = torch.arange(6)
    out, (lam, y2) = perturb(x, y, Perturb(mixup_alpha=0.4), torch.Generator().manual_seed(1))
    assert 0 <= lam <= 1
    partner = [int((y2 == v).nonzero()) for v in y2]  # y is arange: y2 names each sample's partner
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[y2[partner]])


def test_teacher_sees_the_students_augmented_view(digits):
    build, (x_tr, y_tr, x_va, y_va) = digits
    torch.manual_seed(0)
    teacher = build("cnn-small")
    student_views, teacher_views = [], []
    student = build()
    student.register_forward_hook(lambda m, inp, out: student_views.append(inp[0]) if m.training else None)

    def teacher_fn(xb):
        teacher_views.append(xb)
        return teacher_logits_of(teacher, xb)

    loss = LOSSES.get("hinton")
    fit(student, x_tr, y_tr, x_va, y_va, TrainConfig(epochs=1, batch_size=64), 0,
        loss_fn=lambda s, t, y: loss(s, t, y, temperature=2.0, alpha=0.5), teacher_fn=teacher_fn,
        perturb=Perturb(shift_px=1, mixup_alpha=0.2))
    assert len(student_views) == len(teacher_views) == 4
    for s, t in zip(student_views, teacher_views, strict=True):
        assert torch.equal(s, t)
    assert not any(torch.equal(s, x_tr[: len(s)]) for s in student_views)


def test_perturbations_are_the_same_for_every_arm_of_a_seed(digits):
    build, (x_tr, y_tr, x_va, y_va) = digits
    views: dict[str, list[torch.Tensor]] = {}
    for name, smoothing in (("a", 0.0), ("b", 0.1)):
        torch.manual_seed(0)
        model = build()
        model.register_forward_hook(
            lambda m, inp, out, name=name: views.setdefault(name, []).append(inp[0]) if m.training else None)
        fit(model, x_tr, y_tr, x_va, y_va, CFG, 5, label_smoothing=smoothing, perturb=Perturb(shift_px=1))
    assert all(torch.equal(a, b) for a, b in zip(views["a"], views["b"], strict=True))


# ------------------------------------------------------------------------------------------ divergence
def test_divergence_keeps_the_last_good_epoch_and_names_model_and_epoch(digits):
    build, (x_tr, y_tr, x_va, y_va) = digits
    torch.manual_seed(0)
    model = build()
    states = []
    calls = {"n": 0}

    def loss_fn(s, t, y):
        calls["n"] += 1
        out = torch.nn.functional.cross_entropy(s, y)
        return out * math.inf if calls["n"] > 6 else out  # epoch 2 of 4 steps each breaks at its 3rd step

    fit_kwargs = dict(loss_fn=loss_fn, teacher_logits=torch.zeros(len(y_tr), 10), name="student kd/seed3",
                      on_epoch=lambda e, m: states.append({k: v.clone() for k, v in model.state_dict().items()}))
    with pytest.raises(StageError, match=r"student kd/seed3: the training loss became inf in epoch 2") as err:
        fit(model, x_tr, y_tr, x_va, y_va, TrainConfig(epochs=3, batch_size=64), 0, **fit_kwargs)
    assert isinstance(err.value, DivergedError) and err.value.epoch == 2
    assert len(states) == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[0][k]) and torch.equal(err.value.state[k], states[0][k])
