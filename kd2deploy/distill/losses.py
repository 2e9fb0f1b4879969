"""Distillation losses by name. Each maps (student logits, teacher logits, targets) to a scalar loss."""

from __future__ import annotations

from typing import Protocol

from kd2deploy.registry import Registry


class DistillLoss(Protocol):
    def __call__(self, student_logits, teacher_logits, targets, *, temperature: float, alpha: float): ...


LOSSES: Registry[DistillLoss] = Registry("loss")


@LOSSES.register("hinton")
def hinton_loss(student_logits, teacher_logits, targets, *, temperature: float, alpha: float):
    """Hinton et al. (2015): alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T changes.
    """
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    loss = alpha * t * t * soft
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, targets)
    return loss


@LOSSES.register("mse-logits")
def mse_logits_loss(student_logits, teacher_logits, targets, *, temperature: float, alpha: float):
    """Logit matching (Ba & Caruana): alpha * MSE(z_s, z_t) + (1 - alpha) * CE(z_s, y); T is unused."""
    import torch.nn.functional as F

    loss = alpha * F.mse_loss(student_logits, teacher_logits)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, targets)
    return loss
