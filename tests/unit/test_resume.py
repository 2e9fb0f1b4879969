"""Training stopped after an epoch and resumed from its checkpoint ends bit-identical to an uninterrupted run:
for ``fit`` (teacher, arms trained alone) and for the stacked students."""

from __future__ import annotations

import pytest
import torch

from kd2deploy.config import DataConfig, TrainConfig
from kd2deploy.data import load_data
from kd2deploy.distill.arms import Arm
from kd2deploy.distill.batched import train_arms_batched
from kd2deploy.distill.resume import Resume
from kd2deploy.distill.train import fit, predict, to_tensors
from kd2deploy.models import build_model
from kd2deploy.models.nets import Standardized

# cosine schedule (OneCycleLR state), AdamW (moments), dropout in cnn-large (the global RNG)
CFG = TrainConfig(epochs=4, batch_size=32, lr=3e-3)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def digits():
    d = load_data(DataConfig(), seed=0)
    x_tr, y_tr, x_va, y_va = to_tensors(d.x_train[:160], d.y_train[:160], d.x_val[:64], d.y_val[:64])
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def build(arch: str = "cnn-tiny"):
        return Standardized(build_model(arch, d.input_shape, 10, {}, "student"), mean, std)

    torch.manual_seed(0)
    teacher_logits = predict(build("cnn-small"), x_tr) * 4
    return build, (x_tr, y_tr, x_va, y_va), teacher_logits


def stop_after(epoch: int):
    def on_epoch(*args):
        if args[-2] == epoch:
            raise Stop

    return on_epoch


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def without_time(epochs):
    return [{k: v for k, v in e.items() if k != "time_s"} for e in epochs]


def test_fit_resumes_bit_identical(digits, tmp_path):
    build, (x_tr, y_tr, x_va, y_va), _ = digits

    def fresh():
        torch.manual_seed(1)
        return build("cnn-large")

    torch.manual_seed(5)
    ref = fresh()
    ref_hist = fit(ref, x_tr, y_tr, x_va, y_va, CFG, seed=3)

    resume = Resume(tmp_path / "progress")
    assert resume.acquire()
    torch.manual_seed(5)
    with pytest.raises(Stop):
        fit(fresh(), x_tr, y_tr, x_va, y_va, CFG, seed=3, checkpoint=resume.slot("teacher"),
            on_epoch=stop_after(2))
    resume.release()

    torch.manual_seed(123)  # the global RNG differs after a restart: the checkpoint restores it
    again = Resume(tmp_path / "progress")
    assert again.acquire()
    seen = []
    model = fresh()
    hist = fit(model, x_tr, y_tr, x_va, y_va, CFG, seed=3, checkpoint=again.slot("teacher"),
               on_epoch=lambda e, m: seen.append(e))
    assert again.resumed == {"teacher": 2} and seen == [3, 4]
    assert_identical(model.state_dict(), ref.state_dict())
    assert without_time(hist.epochs) == without_time(ref_hist.epochs)
    assert hist.samples_seen == ref_hist.samples_seen
    again.finish()
    assert not (tmp_path / "progress").exists()


def test_stacked_students_resume_bit_identical(digits, tmp_path):
    build, tensors, teacher_logits = digits
    arms = [Arm("kd", 0, loss="hinton", temperature=4.0, alpha=0.9), Arm("scratch", 0),
            Arm("kd", 1, loss="hinton", temperature=4.0, alpha=0.9)]
    ref = train_arms_batched(build, arms, tensors, teacher_logits, CFG)

    resume = Resume(tmp_path / "p")
    resume.acquire()
    with pytest.raises(Stop):
        train_arms_batched(build, arms, tensors, teacher_logits, CFG, on_epoch=stop_after(3), resume=resume)
    resume.release()
    files = list((tmp_path / "p").glob("stack_*.pt"))
    assert len(files) == 1  # one checkpoint for the whole stack

    again = Resume(tmp_path / "p")
    again.acquire()
    out = train_arms_batched(build, arms, tensors, teacher_logits, CFG, resume=again)
    assert list(again.resumed.values()) == [3]
    for (m0, h0), (m1, h1) in zip(ref, out, strict=True):
        assert_identical(m1.state_dict(), m0.state_dict())
        assert without_time(h1.epochs) == without_time(h0.epochs)


def test_damaged_checkpoint_trains_from_the_start(digits, tmp_path):
    build, (x_tr, y_tr, x_va, y_va), _ = digits
    resume = Resume(tmp_path / "p")
    resume.acquire()
    slot = resume.slot("m")
    slot.path.write_bytes(b"not a checkpoint")
    torch.manual_seed(0)
    hist = fit(build(), x_tr, y_tr, x_va, y_va, CFG.model_copy(update={"epochs": 1}), seed=0, checkpoint=slot)
    assert resume.resumed == {} and len(hist.epochs) == 1
    assert slot.load()["epoch"] == 1  # and the loop wrote a good one


def test_second_run_of_the_same_stage_keeps_no_checkpoints(tmp_path):
    first, second = Resume(tmp_path / "p"), Resume(tmp_path / "p")
    assert first.acquire()
    assert not second.acquire() and second.slot("teacher") is None
    first.release()
    assert second.acquire()
    second.release()
