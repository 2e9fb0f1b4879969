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
from typing import Any, Protocol

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


def standardize(logits):
    """Z-scores logits over the classes: ``(z - mean(z)) / (std(z) + 1e-7)`` (unbiased std).

    Sun et al. (2024), "Logit Standardization in Knowledge Distillation" (CVPR): the student need only match the
    *shape* of the teacher's logits, not their scale or offset, which a small student may not be able to reach.
    Applied to the teacher's and the student's logits before the softmax at temperature T (the base temperature).
    """
    mean = logits.mean(dim=-1, keepdim=True)
    return (logits - mean) / (logits.std(dim=-1, keepdim=True) + 1e-7)


def loss_options(name: str) -> dict[str, Any]:
    """The options a registered loss takes beyond temperature and alpha, with their defaults."""
    import inspect

    fn = LOSSES.get(name)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in ("temperature", "alpha")}


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` if ``name`` takes them all, else ValueError naming the bad one and the allowed ones."""
    allowed = loss_options(name)
    for key in options:
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"loss {name!r} takes no option {key!r}; allowed: {valid}")
    return options


@LOSSES.register("hinton")
def hinton_loss(student_logits, teacher_logits, targets, *, temperature: float, alpha: float,
                label_smoothing: float = 0.0, standardize_logits: bool = False):
    """Hinton et al. (2015): alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T changes.
    Teacher logits with a member axis are an ensemble (probabilities averaged at T); targets of -1 are
    unlabelled (the CE term averages over the labelled samples only).

    Options:
        label_smoothing: smooths the hard-label term (KD + label smoothing, e.g. Yuan et al. 2020 "Revisiting
            KD via label smoothing regularization"): ``CE`` becomes cross-entropy against ``(1 - e) y + e / K``.
        standardize_logits: z-score both logits before the softmax (Sun et al. 2024, :func:`standardize`).
    """
    import torch.nn.functional as F

    t = temperature
    s_soft, t_soft = student_logits, teacher_logits
    if standardize_logits:
        s_soft, t_soft = standardize(student_logits), standardize(teacher_logits)
    soft = F.kl_div(
        F.log_softmax(s_soft / t, dim=-1),
        teacher_log_probs(t_soft, student_logits.dim(), t),
        reduction="batchmean",
        log_target=True,
    )
    loss = alpha * t * t * soft
    if alpha < 1:
        loss = loss + (1 - alpha) * hard_ce(student_logits, targets, label_smoothing)
    return loss


@LOSSES.register("dkd")
def dkd_loss(student_logits, teacher_logits, targets, *, temperature: float, alpha: float,
             target_weight: float = 1.0, nontarget_weight: float = 8.0, label_smoothing: float = 0.0,
             standardize_logits: bool = False):
    """Decoupled KD (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR).

    Hinton's KL splits into a target-class term (TCKD: KL between the binary distributions
    ``[p_target, 1 - p_target]``) and a non-target term (NCKD: KL between the distributions over the non-target
    classes, renormalised), with NCKD weighted by ``1 - p_target`` of the teacher, which a confident teacher
    drives to zero. DKD weighs them freely::

        (1 - alpha) * CE(z_s, y) + alpha * T^2 * (target_weight * TCKD + nontarget_weight * NCKD)

    (the paper: CE + 1.0 * TCKD + 8.0 * NCKD on CIFAR-100, i.e. the defaults with the CE weight folded into
    alpha). The target class is the label; for an unlabelled sample (target -1) the teacher's top class.
    Works on ``(batch, classes)`` logits (a scalar) and on stacked ``(models, batch, classes)`` logits (one value
    per model); teacher logits with a member axis are an ensemble (probabilities averaged at T).
    """
    import torch
    import torch.nn.functional as F

    t = temperature
    s_z, t_z = (standardize(student_logits), standardize(teacher_logits)) if standardize_logits else (
        student_logits, teacher_logits)
    t_lp = teacher_log_probs(t_z, student_logits.dim(), t)
    s_lp = F.log_softmax(s_z / t, dim=-1)
    target = torch.where(targets >= 0, targets, t_lp.argmax(-1))
    mask = F.one_hot(target, student_logits.shape[-1]).bool()
    # binary [target, rest] distributions, in logs; log(1 - p) as a logsumexp over the other classes (stable)
    s_tgt, t_tgt = s_lp.gather(-1, target.unsqueeze(-1)).squeeze(-1), t_lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    s_rest = s_lp.masked_fill(mask, float("-inf")).logsumexp(-1)
    t_rest = t_lp.masked_fill(mask, float("-inf")).logsumexp(-1)
    tckd = t_tgt.exp() * (t_tgt - s_tgt) + t_rest.exp() * (t_rest - s_rest)
    # the distributions over the non-target classes: log p_c - log(1 - p_target), zero weight on the target
    s_nt = (s_lp - s_rest.unsqueeze(-1)).masked_fill(mask, 0.0)
    t_nt = (t_lp - t_rest.unsqueeze(-1)).masked_fill(mask, 0.0)
    nckd = (t_nt.exp().masked_fill(mask, 0.0) * (t_nt - s_nt)).sum(-1)
    soft = (target_weight * tckd + nontarget_weight * nckd).mean(-1)
    loss = alpha * t * t * soft
    if alpha < 1:
        loss = loss + (1 - alpha) * hard_ce(student_logits, targets, label_smoothing)
    return loss


dkd_loss.stacked = True  # takes (models, batch, classes) logits as they are (batched.py needs no vmap)


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
