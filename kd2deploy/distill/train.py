"""The training loop shared by the teacher, the KD student and the scratch controls.

Data sets here are small enough to live in memory as tensors, so an epoch is a seeded permutation of indices:
no DataLoader workers, and every arm of a comparison sees the same batches in the same order.
"""

from __future__ import annotations

import math
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


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg,
    seed: int,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    teacher_logits: torch.Tensor | None = None,
    label_smoothing: float | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    name: str = "model",
) -> History:
    """Trains ``model`` in place for ``cfg.epochs`` epochs.

    Args:
        cfg: a TrainConfig (epochs, batch_size, lr, weight_decay, optimizer, schedule, label_smoothing).
        seed: seeds the batch order (the initial weights are the caller's business).
        loss_fn: ``loss_fn(student_logits, teacher_logits_batch, y)`` for distillation; None means
            cross-entropy on hard labels with ``label_smoothing`` (default: ``cfg.label_smoothing``).
        teacher_logits: the teacher's logits for every training sample, computed once by the caller.
        on_epoch: called after each epoch with (epoch, metrics), e.g. to advance a progress bar.

    Raises:
        StageError: when the loss becomes NaN or infinite (the model is left at its last good epoch).
    """
    if loss_fn is not None and teacher_logits is None:
        raise ValueError("distillation needs teacher_logits")
    smoothing = cfg.label_smoothing if label_smoothing is None else label_smoothing
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, cfg)
    n = len(y_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = one_cycle(opt, cfg.lr, total) if cfg.schedule == "cosine" else None
    hist = History()
    good_state = {k: v.clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        running, count = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            logits = model(xb)
            if loss_fn is None:
                loss = F.cross_entropy(logits, yb, label_smoothing=smoothing)
            else:
                loss = loss_fn(logits, teacher_logits[idx], yb)
            if not torch.isfinite(loss):
                model.load_state_dict(good_state)
                raise StageError(
                    f"{name}: the training loss became {float(loss)} in epoch {epoch}; kept the weights of "
                    f"epoch {epoch - 1}. Lower the learning rate or check the inputs for extreme values."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            running += float(loss.detach()) * len(idx)
            count += len(idx)
        hist.samples_seen += count
        val = evaluate(model, x_val, y_val)
        metrics = {"epoch": epoch, "train_loss": running / count, "val_loss": val["loss"],
                   "val_acc": val["acc"], "time_s": time.perf_counter() - t0}
        hist.epochs.append(metrics)
        good_state = {k: v.clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    hist.train_time_s = time.perf_counter() - t0
    return hist


def to_tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
