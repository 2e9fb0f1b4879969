"""Weighted sums of distillation terms, including FitNets hint terms (Romero et al. 2015).

A hint term makes a student layer regress a teacher layer through a small learned adapter (a 1x1 convolution
for feature maps, a linear map otherwise): ``weight * MSE(adapter(h_student), h_teacher)``. Layers are named as
in ``model.named_modules()`` of the user's model; forward hooks read them, so any architecture works. Adapters
train with the student and are thrown away afterwards (they are not part of the exported model).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd2deploy.distill.losses import LOSSES, hard_ce
from kd2deploy.distill.teacher import find_layer, taps, teacher_outputs

HINT = "hint"


@dataclass(frozen=True)
class Term:
    """One term of an arm's loss.

    Attributes:
        loss: a registered logit loss (``hinton``, ``mse-logits``), ``hint``, or ``ce`` (hard labels only).
        weight: the term's factor in the sum.
        temperature, alpha: the logit loss's settings.
        student_layer, teacher_layer: module names, for ``hint``.
    """

    loss: str
    weight: float = 1.0
    temperature: float = 1.0
    alpha: float = 0.0
    student_layer: str = ""
    teacher_layer: str = ""


def make_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """1x1 convolution between feature maps (then resized to the teacher's map), else a linear map of the
    flattened features. Shapes exclude the batch axis."""
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        conv = nn.Conv2d(student_shape[0], teacher_shape[0], 1)
        if student_shape[1:] == teacher_shape[1:]:
            return conv
        return nn.Sequential(conv, nn.AdaptiveAvgPool2d(teacher_shape[1:]))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(student_shape), math.prod(teacher_shape)),
                         nn.Unflatten(1, teacher_shape))


class Objective:
    """``fn(student_logits, teacher_out, y)``: the weighted sum of an arm's terms.

    ``teacher_out`` is the teacher's logits, or a dict ``{"logits", "layer:<name>"...}`` when there are hint
    terms (see :meth:`teacher_fn`). Student features come from hooks installed by :meth:`attached`.
    """

    def __init__(self, terms: tuple[Term, ...], student: nn.Module, teacher: nn.Module | None,
                 x_probe: torch.Tensor, seed: int):
        self.terms = terms
        self.hints = [t for t in terms if t.loss == HINT]
        self.teacher_layers = sorted({t.teacher_layer for t in self.hints})
        self.student_modules = {
            t.student_layer: find_layer(student, t.student_layer, "distill.terms hint student_layer")
            for t in self.hints
        }
        self.adapters = nn.ModuleList()
        if self.hints:
            if teacher is None:
                raise ValueError("hint terms need the teacher")
            for t in self.hints:
                find_layer(teacher, t.teacher_layer, "distill.terms hint teacher_layer")
            probe = x_probe[:2]
            was = student.training
            student.eval()
            with torch.no_grad(), taps(self.student_modules) as got:
                student(probe)
            student.train(was)
            t_out = self.teacher_fn(teacher)(probe)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for t in self.hints:
                    s_shape = tuple(got[t.student_layer].shape[1:])
                    t_shape = tuple(t_out[f"layer:{t.teacher_layer}"].shape[1:])
                    self.adapters.append(make_adapter(s_shape, t_shape))
        self._feats: dict[str, torch.Tensor] = {}

    def teacher_fn(self, teacher: nn.Module):
        """The teacher's outputs on a batch, in the form ``__call__`` expects."""
        return teacher_outputs(teacher, self.teacher_layers)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    @contextmanager
    def attached(self):
        """Hooks on the student's hint layers for the duration of training."""
        with taps(self.student_modules) as got:
            self._feats = got
            self.adapters.train()
            yield self
        self._feats = {}

    def __call__(self, logits: torch.Tensor, teacher_out: Any, y: torch.Tensor) -> torch.Tensor:
        t_logits = teacher_out["logits"] if isinstance(teacher_out, dict) else teacher_out
        total = logits.new_zeros(())
        adapters = iter(self.adapters)
        for term in self.terms:
            if term.loss == HINT:
                adapter = next(adapters)
                target = teacher_out[f"layer:{term.teacher_layer}"]
                total = total + term.weight * F.mse_loss(adapter(self._feats[term.student_layer]), target)
            elif term.loss == "ce":
                total = total + term.weight * hard_ce(logits, y)
            else:
                fn = LOSSES.get(term.loss)
                total = total + term.weight * fn(logits, t_logits, y, temperature=term.temperature, alpha=term.alpha)
        return total
