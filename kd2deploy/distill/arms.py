"""The student arms of a comparison: the KD student and its controls, over seeds, trained fairly.

Fair means: per seed, every arm starts from the same initial weights, sees the same batches in the same order,
and gets the same optimiser, schedule and number of steps. Only the loss differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from kd2deploy.distill.losses import LOSSES
from kd2deploy.distill.train import History, fit


@dataclass(frozen=True)
class Arm:
    """One student to train.

    Attributes:
        name: the arm ("kd", "scratch", "label_smoothing").
        seed: seeds the initial weights and the batch order.
        loss: a distillation loss name, or None for cross-entropy on hard labels.
        temperature, alpha: the distillation loss's settings (unused without ``loss``).
        label_smoothing: for hard-label arms.
    """

    name: str
    seed: int
    loss: str | None = None
    temperature: float = 1.0
    alpha: float = 0.0
    label_smoothing: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.name}/seed{self.seed}"


def initial_weights(build: Callable[[], nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """The state_dict a freshly built student has under ``seed``; every arm of that seed starts here."""
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build().state_dict().items()}


def train_arms(
    build: Callable[[], nn.Module],
    arms: list[Arm],
    tensors: tuple[torch.Tensor, ...],
    teacher_logits: torch.Tensor,
    cfg,
    on_epoch: Callable[[Arm, int, dict], None] | None = None,
) -> list[tuple[nn.Module, History]]:
    """Trains each arm from its seed's initial weights; returns (model, history) in the order of ``arms``.

    Args:
        build: builds a fresh student (same architecture for every arm).
        tensors: x_train, y_train, x_val, y_val.
        teacher_logits: the teacher's logits on x_train (computed once; the transfer set has no randomness).
        cfg: the TrainConfig shared by all arms.
    """
    inits: dict[int, dict[str, torch.Tensor]] = {}
    out = []
    for arm in arms:
        if arm.seed not in inits:
            inits[arm.seed] = initial_weights(build, arm.seed)
        model = build()
        model.load_state_dict(inits[arm.seed])
        loss_fn = (
            partial(LOSSES.get(arm.loss), temperature=arm.temperature, alpha=arm.alpha) if arm.loss else None
        )
        hist = fit(
            model, *tensors, cfg, arm.seed,
            loss_fn=loss_fn,
            teacher_logits=teacher_logits if arm.loss else None,
            label_smoothing=arm.label_smoothing,
            on_epoch=(lambda e, m, arm=arm: on_epoch(arm, e, m)) if on_epoch else None,
            name=f"student {arm.key}",
        )
        out.append((model, hist))
    return out
