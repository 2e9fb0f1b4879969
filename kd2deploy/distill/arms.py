"""The student arms of a comparison: the KD student and its controls, over seeds, trained fairly.

Fair means: per seed, every arm starts from the same initial weights, sees the same batches in the same order
(and the same augmented views), and gets the same optimiser, schedule and number of steps. Only the loss
differs — and, with few labels, the pool batches come from: an arm without a teacher can only learn from the
labelled samples, so it draws its (equally many, equally large) batches from those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from kd2deploy.distill.losses import LOSSES
from kd2deploy.distill.terms import Objective, Term
from kd2deploy.distill.train import History, fit


@dataclass(frozen=True)
class Arm:
    """One student to train.

    Attributes:
        name: the arm ("kd", "scratch", "label_smoothing").
        seed: seeds the initial weights, the batch order and the perturbations.
        loss: a distillation loss name, or None for cross-entropy on hard labels.
        temperature, alpha: the distillation loss's settings (unused without ``loss``).
        label_smoothing: for hard-label arms.
        terms: a weighted sum of terms (hint terms included) instead of ``loss``; ``loss`` then names the
            first logit term (it marks the arm as one that needs the teacher).
        options: the loss's own settings as ``((name, value), ...)`` (``losses.loss_options``), e.g.
            ``(("nontarget_weight", 8.0),)`` for ``dkd``.
    """

    name: str
    seed: int
    loss: str | None = None
    temperature: float = 1.0
    alpha: float = 0.0
    label_smoothing: float = 0.0
    terms: tuple[Term, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.name}/seed{self.seed}"

    @property
    def needs_teacher(self) -> bool:
        return bool(self.loss or self.terms)


def initial_weights(build: Callable[[], nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """The state_dict a freshly built student has under ``seed``; every arm of that seed starts here."""
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build().state_dict().items()}


def arm_pool(arm: Arm, n: int, labelled: torch.Tensor | None) -> torch.Tensor | None:
    """Where the arm's batches come from: None (plain epochs), else all samples (teacher arms) or the labelled
    ones (arms without a teacher)."""
    if labelled is None:
        return None
    return torch.arange(n) if arm.needs_teacher else labelled


def train_arms(
    build: Callable[[], nn.Module],
    arms: list[Arm],
    tensors: tuple[torch.Tensor, ...],
    teacher_logits: Any,
    cfg,
    on_epoch: Callable[[Arm, int, dict], None] | None = None,
    *,
    labelled: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    perturb=None,
    resume=None,
) -> list[tuple[nn.Module, History]]:
    """Trains each arm from its seed's initial weights; returns (model, history) in the order of ``arms``.

    Args:
        build: builds a fresh student (same architecture for every arm).
        tensors: x_train, y_train, x_val, y_val (y_train -1 where the label is withheld).
        teacher_logits: the teacher's logits on x_train, computed once (``(n, classes)``, or
            ``(n, members, classes)`` for an ensemble); may be None when every arm is a control, or when
            ``teacher`` is given.
        cfg: the TrainConfig shared by all arms.
        labelled: indices of the labelled training samples in few-label mode (None: every sample labelled).
        teacher: the teacher module, needed for hint terms and per-step perturbations (its outputs are then
            computed per batch, on the student's view).
        perturb: a ``transfer.Perturb`` applied to every arm.
        resume: a ``resume.Resume``: each arm checkpoints every epoch there and continues from it.
    """
    inits: dict[int, dict[str, torch.Tensor]] = {}
    out = []
    live = perturb is not None and perturb.active
    for arm in arms:
        if arm.seed not in inits:
            inits[arm.seed] = initial_weights(build, arm.seed)
        model = build()
        model.load_state_dict(inits[arm.seed])
        loss_fn, teacher_fn, cached, extra = None, None, None, []
        objective = None
        if arm.terms:
            objective = Objective(arm.terms, model, teacher, tensors[0], arm.seed)
            loss_fn, extra = objective, objective.parameters()
            if teacher is not None:
                teacher_fn = objective.teacher_fn(teacher)
                cached = None if live else teacher_fn(tensors[0])
            else:
                cached = teacher_logits
        elif arm.loss:
            loss_fn = partial(LOSSES.get(arm.loss), temperature=arm.temperature, alpha=arm.alpha,
                              **dict(arm.options))
            if live:
                if teacher is None:
                    raise ValueError("per-step perturbations need the teacher module")
                from kd2deploy.distill.teacher import teacher_outputs

                teacher_fn = teacher_outputs(teacher, [])
            cached = teacher_logits
            if cached is None and teacher is not None and not live:
                from kd2deploy.distill.teacher import teacher_logits_of

                cached = teacher_logits_of(teacher, tensors[0])
        kwargs = dict(
            loss_fn=loss_fn, teacher_logits=cached, teacher_fn=teacher_fn, label_smoothing=arm.label_smoothing,
            on_epoch=(lambda e, m, arm=arm: on_epoch(arm, e, m)) if on_epoch else None,
            name=f"student {arm.key}", pool=arm_pool(arm, len(tensors[1]), labelled), perturb=perturb,
            extra_params=extra, checkpoint=resume.slot(arm.key) if resume is not None else None,
        )
        if objective is not None:
            with objective.attached():
                hist = fit(model, *tensors[:4], cfg, arm.seed, **kwargs)
        else:
            hist = fit(model, *tensors[:4], cfg, arm.seed, **kwargs)
        out.append((model, hist))
    return out
