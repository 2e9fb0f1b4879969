"""Independent check of the controlled comparison: every arm of a seed starts from the same initial weights and
sees the same batches in the same order, in the batched trainer the pipeline uses and in the sequential one.

Initial weights are observed through training at a learning rate of 1e-12: the parameters the trainer returns
are then the ones each arm started from. Batch order is observed through its effect: a KD arm with alpha = 0 has
exactly the scratch arm's objective, so with the same start and the same batches it must end with the same
weights; another seed must not.
"""

from __future__ import annotations

import pytest
import torch

from kd2deploy.config import DataConfig, StudentTrainConfig
from kd2deploy.data import load_data
from kd2deploy.distill.arms import Arm, train_arms
from kd2deploy.distill.batched import train_arms_batched
from kd2deploy.distill.train import predict, to_tensors
from kd2deploy.models import build_model
from kd2deploy.models.nets import Standardized

CFG = StudentTrainConfig(epochs=2, batch_size=32, lr=3e-3)
ARMS = [Arm("kd", 0, loss="hinton", temperature=2.0, alpha=0.0), Arm("scratch", 0),
        Arm("label_smoothing", 0, label_smoothing=0.1),
        Arm("kd", 1, loss="hinton", temperature=2.0, alpha=0.0), Arm("scratch", 1)]


@pytest.fixture(scope="module")
def setup():
    d = load_data(DataConfig(), seed=0)
    tensors = to_tensors(d.x_train[:256], d.y_train[:256], d.x_val[:64], d.y_val[:64])

    def build():
        return Standardized(build_model("cnn-tiny", d.input_shape, 10, {}, "student"), 0.0, 16.0)

    torch.manual_seed(123)
    teacher = Standardized(build_model("cnn-small", d.input_shape, 10, {}, "teacher"), 0.0, 16.0)
    return build, tuple(tensors), predict(teacher, tensors[0]) * 3


def _same(a: dict, b: dict, atol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


def _params(model) -> dict:
    return {k: v.detach() for k, v in model.named_parameters()}


@pytest.mark.parametrize("trainer", [train_arms_batched, train_arms], ids=["batched", "sequential"])
def test_arms_of_a_seed_start_alike_and_see_the_same_batches(setup, trainer):
    build, tensors, teacher_logits = setup
    # initial weights: at lr 1e-12 every parameter ends where it started
    still = trainer(build, ARMS, tensors, teacher_logits, StudentTrainConfig(epochs=1, batch_size=64, lr=1e-12))
    start = {arm.key: _params(m) for arm, (m, _) in zip(ARMS, still, strict=True)}
    for seed in (0, 1):
        keys = [a.key for a in ARMS if a.seed == seed]
        assert all(_same(start[keys[0]], start[k], 1e-8) for k in keys[1:]), f"seed {seed}: arms started apart"
    assert not _same(start["scratch/seed0"], start["scratch/seed1"]), "two seeds started from the same weights"
    # batches: KD with alpha 0 is the scratch objective, so equal start + equal batches = equal end weights
    trained = trainer(build, ARMS, tensors, teacher_logits, CFG)
    final = {arm.key: m.state_dict() for arm, (m, _) in zip(ARMS, trained, strict=True)}
    for seed in (0, 1):
        assert _same(final[f"kd/seed{seed}"], final[f"scratch/seed{seed}"]), f"seed {seed}: arms saw other batches"
    assert not _same(final["scratch/seed0"], final["scratch/seed1"])
    assert not _same(final["scratch/seed0"], final["label_smoothing/seed0"])  # the check can tell arms apart
