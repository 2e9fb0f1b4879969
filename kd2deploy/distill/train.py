"""The training loop shared by the teacher, the KD student and the scratch controls.

Data sets here are small enough to live in memory as tensors, so an epoch is a seeded permutation of indices
(``transfer.BatchOrder``): no DataLoader workers, and every arm of a comparison sees the same batches in the same
order. With few labels an arm may draw full batches from a pool (the labelled samples) instead, for the same
number of steps; per-step perturbations (shifts, mixup) come from a generator seeded like the batch order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd2deploy.errors import StageError


@dataclass
class History:
    """Per-epoch curves and the run's totals."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    samples_seen: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "train_time_s": self.train_time_s, "samples_seen": self.samples_seen}


def _optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay,
                               nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def one_cycle(opt: torch.optim.Optimizer, max_lr: float, total_steps: int):
    """OneCycleLR with a 10 % warm-up (the "cosine" schedule).

    torch divides by zero when the warm-up is exactly one step (10 steps in all); that case warms up for two.
    """
    pct_start = 0.2 if total_steps == 10 else 0.1
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps,
                                               pct_start=pct_start)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` in eval mode over ``x``, in chunks."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    logits = predict(model, x)
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "acc": float((logits.argmax(-1) == y).float().mean()),
    }


class DivergedError(StageError):
    """The training loss stopped being finite. ``state`` holds the model's last good weights (end of the
    previous epoch, or the initial ones), which the model has been reset to; ``epoch`` is where it broke."""

    def __init__(self, name: str, value: float, epoch: int, state: dict[str, torch.Tensor] | None = None):
        super().__init__(
            f"{name}: the training loss became {value} in epoch {epoch}; kept the weights of epoch {epoch - 1}. "
            "Lower the learning rate or check the inputs for extreme values."
        )
        self.name, self.value, self.epoch, self.state = name, value, epoch, state


class _Params:
    """Lets ``_optimizer`` see a model's parameters plus extra trainable ones (hint adapters)."""

    def __init__(self, model: nn.Module, extra: list[torch.Tensor]):
        self._params = [*model.parameters(), *extra]

    def parameters(self):
        return iter(self._params)


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg,
    seed: int,
    *,
    loss_fn: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor] | None = None,
    teacher_logits: Any = None,
    label_smoothing: float | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    name: str = "model",
    pool: torch.Tensor | None = None,
    teacher_fn: Callable[[torch.Tensor], Any] | None = None,
    perturb=None,
    extra_params: list[torch.Tensor] | None = None,
    checkpoint=None,
) -> History:
    """Trains ``model`` in place for ``cfg.epochs`` epochs.

    Args:
        cfg: a TrainConfig (epochs, batch_size, lr, weight_decay, optimizer, schedule, label_smoothing).
        seed: seeds the batch order and the perturbations (the initial weights are the caller's business).
        y_train: class indices; -1 marks an unlabelled sample (it only counts in soft terms).
        loss_fn: ``loss_fn(student_logits, teacher_out_batch, y)`` for distillation; None means
            cross-entropy on hard labels with ``label_smoothing`` (default: ``cfg.label_smoothing``).
        teacher_logits: the teacher's outputs for every training sample (a tensor, or a dict of tensors),
            computed once by the caller; used when the transfer set has no per-step randomness.
        teacher_fn: the teacher's outputs on a batch; used instead of ``teacher_logits`` when ``perturb`` is
            active, so the teacher sees the same augmented view as the student.
        pool: None, or the indices to draw full batches from (see ``transfer.BatchOrder``): same steps per
            epoch as a full pass over ``x_train``.
        perturb: a ``transfer.Perturb`` (random shifts, mixup), or None.
        extra_params: more tensors to optimise with the model (hint adapters).
        on_epoch: called after each epoch with (epoch, metrics), e.g. to advance a progress bar.
        checkpoint: a ``resume.Slot``: everything the loop needs to go on is saved there after every epoch, and a
            saved state is resumed from (its epochs are not trained again; the result is the same).

    Raises:
        DivergedError: a StageError naming ``name`` and the epoch, when the loss becomes NaN or infinite; the
            model is reset to its last good epoch, whose weights the error carries.
    """
    from kd2deploy.distill import dist
    from kd2deploy.distill.losses import hard_ce
    from kd2deploy.distill.resume import rng_state, set_rng_state
    from kd2deploy.distill.teacher import take
    from kd2deploy.distill.transfer import BatchOrder
    from kd2deploy.distill.transfer import perturb as apply_perturb

    live = perturb is not None and perturb.active
    if loss_fn is not None and teacher_logits is None and not (live and teacher_fn is not None):
        raise ValueError("distillation needs teacher_logits (or teacher_fn with per-step perturbations)")
    smoothing = getattr(cfg, "label_smoothing", 0.0) if label_smoothing is None else label_smoothing
    order = BatchOrder(len(y_train), cfg.batch_size, seed, pool)
    aug_gen = torch.Generator().manual_seed(seed + 7919)
    extra = list(extra_params or [])
    opt = _optimizer(_Params(model, extra), cfg)
    total = cfg.epochs * order.steps
    sched = one_cycle(opt, cfg.lr, total) if cfg.schedule == "cosine" else None
    hist = History()

    def step_loss(logits, t_batch, y):
        return hard_ce(logits, y, smoothing) if loss_fn is None else loss_fn(logits, t_batch, y)

    start, done_s = 1, 0.0
    ctx = dist.context()
    saved = checkpoint.load() if checkpoint is not None and ctx.is_main else None
    saved = dist.broadcast_object(saved)  # rank 0 reads the resume checkpoint; every rank continues from it
    params = [*model.parameters(), *extra]
    if saved is not None:
        model.load_state_dict(saved["model"])
        with torch.no_grad():
            for p, v in zip(extra, saved["extra"], strict=True):
                p.copy_(v)
        opt.load_state_dict(saved["optimizer"])
        if sched is not None:
            sched.load_state_dict(saved["scheduler"])
        order.set_state(saved["order"])
        aug_gen.set_state(saved["aug_gen"])
        set_rng_state(saved)
        hist = History(**saved["history"])
        start, done_s = saved["epoch"] + 1, hist.train_time_s
    good_state = {k: v.clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter() - done_s
    for epoch in range(start, cfg.epochs + 1):
        model.train()
        running, count = 0.0, 0
        for idx in order.epoch():
            xb, yb = x_train[idx], y_train[idx]
            mix = None
            if live:  # on the whole global batch, so every rank draws what one process would
                xb, mix = apply_perturb(xb, yb, perturb, aug_gen)
            total = len(idx)
            if ctx.active:  # this rank's slice of the global batch; its mean loss weighted by its share
                a, b = dist.my_slice(total)
                idx, xb, yb = idx[a:b], xb[a:b], yb[a:b]
                if mix is not None:
                    mix = (mix[0], mix[1][a:b])
            weight = dist.slice_weight(len(idx), total)
            opt.zero_grad(set_to_none=True)
            if len(idx):
                t_batch = None
                if loss_fn is not None:
                    t_batch = teacher_fn(xb) if live and teacher_fn is not None else take(teacher_logits, idx)
                logits = model(xb)
                if mix is None:
                    loss = step_loss(logits, t_batch, yb)
                else:  # every term is linear in the hard-label CE: mixing the losses mixes the labels
                    lam, y2 = mix
                    loss = lam * step_loss(logits, t_batch, yb) + (1 - lam) * step_loss(logits, t_batch, y2)
                if ctx.active:
                    loss = loss * weight
                if torch.isfinite(loss):
                    loss.backward()
            else:  # fewer samples than ranks: this rank adds nothing to the gradient
                loss = torch.zeros(())
            loss = dist.all_reduce_grads(params, loss)  # the whole batch's loss and gradient on every rank
            if not torch.isfinite(loss):
                model.load_state_dict(good_state)
                raise DivergedError(name, float(loss.detach()), epoch, good_state)
            opt.step()
            if sched is not None:
                sched.step()
            running += float(loss.detach()) * total
            count += total
        hist.samples_seen += count
        dist.average_buffers(dist.bn_buffers(model))  # per-rank batch-norm statistics -> their mean
        val = evaluate(model, x_val, y_val)
        metrics = {"epoch": epoch, "train_loss": running / count, "val_loss": val["loss"],
                   "val_acc": val["acc"], "time_s": time.perf_counter() - t0}
        hist.epochs.append(metrics)
        good_state = {k: v.clone() for k, v in model.state_dict().items()}
        if checkpoint is not None and ctx.is_main:
            hist.train_time_s = metrics["time_s"]
            checkpoint.save(epoch, {
                "model": good_state, "extra": [p.detach().clone() for p in extra], "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "order": order.state(),
                "aug_gen": aug_gen.get_state(), "history": hist.as_dict(), **rng_state(),
            })
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    hist.train_time_s = time.perf_counter() - t0
    return hist


def to_tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
