"""Distillation losses by name. Each maps (student logits, teacher logits, targets) to a scalar loss.

Two conventions every loss here follows, so that ensembles and few-label training need no special losses:

* **Ensembles**: teacher logits may carry a member axis, ``(batch, members, classes)`` instead of
  ``(batch, classes)``. The soft target is then the members' softened probabilities averaged at the loss's
  temperature (Bucilua et al. 2006; Hinton et al. 2015), see :func:`teacher_log_probs`.
* **Few labels**: a target of ``-1`` means "no label". The hard-label term averages over the labelled
  samples of the batch only (and is 0 when there are none); soft terms use every sample.
"""

from __future__ import annotations

import math
from typing import Protocol

from kd2deploy.registry import Registry

UNLABELLED = -1


class DistillLoss(Protocol):
    def __call__(self, student_logits, teacher_logits, targets, *, temperature: float, alpha: float): ...


LOSSES: Registry[DistillLoss] = Registry("loss")


def teacher_log_probs(teacher_logits, student_dim: int, temperature: float):
    """log of the teacher's softened probabilities ``softmax(z_t / T)``.

    With a member axis (``teacher_logits.dim() == student_dim + 1``, members on dim -2) this is the log of
    the members' averaged probabilities: ``log(mean_m softmax(z_m / T))``, computed stably with logsumexp.
    """
    import torch.nn.functional as F

    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    if teacher_logits.dim() == student_dim + 1:
        log_p = log_p.logsumexp(dim=-2) - math.log(teacher_logits.shape[-2])
    return log_p


def teacher_mean_logits(teacher_logits, student_dim: int):
    """The teacher's logits, averaged over the members of an ensemble (for logit-matching losses)."""
    return teacher_logits.mean(dim=-2) if teacher_logits.dim() == student_dim + 1 else teacher_logits


def hard_ce(logits, targets, label_smoothing: float = 0.0):
    """Cross-entropy averaged over the labelled samples (target >= 0); 0 when none is labelled.

    Equals ``F.cross_entropy(logits, targets, label_smoothing=...)`` when every sample is labelled. Works on
    ``(batch, classes)`` logits; stacked ``(models, batch, classes)`` logits give one value per model.
    """
    import torch.nn.functional as F

    k = logits.shape[-1]
    labelled = targets >= 0
    if bool(labelled.all()):  # the common case, in as few kernels as plain cross-entropy
        if logits.dim() == 2:
            return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        per = F.cross_entropy(logits.reshape(-1, k), targets.reshape(-1), reduction="none",
                              label_smoothing=label_smoothing)
        return per.view(targets.shape).mean(-1)
    per = F.cross_entropy(logits.reshape(-1, k), targets.clamp(min=0).reshape(-1), reduction="none",
                          label_smoothing=label_smoothing).view(targets.shape)
    per = per * labelled
    return per.sum(-1) / labelled.sum(-1).clamp(min=1)


@LOSSES.register("hinton")
def hinton_loss(student_logits, teacher_logits, targets, *, temperature: float, alpha: float):
    """Hinton et al. (2015): alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T changes.
    Teacher logits with a member axis are an ensemble (probabilities averaged at T); targets of -1 are
    unlabelled (the CE term averages over the labelled samples only).
    """
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        teacher_log_probs(teacher_logits, student_logits.dim(), t),
        reduction="batchmean",
        log_target=True,
    )
    loss = alpha * t * t * soft
    if alpha < 1:
        loss = loss + (1 - alpha) * hard_ce(student_logits, targets)
    return loss


@LOSSES.register("mse-logits")
def mse_logits_loss(student_logits, teacher_logits, targets, *, temperature: float, alpha: float):
    """Logit matching (Ba & Caruana): alpha * MSE(z_s, z_t) + (1 - alpha) * CE(z_s, y); T is unused.

    An ensemble's target is its members' mean logits.
    """
    import torch.nn.functional as F

    loss = alpha * F.mse_loss(student_logits, teacher_mean_logits(teacher_logits, student_logits.dim()))
    if alpha < 1:
        loss = loss + (1 - alpha) * hard_ce(student_logits, targets)
    return loss
