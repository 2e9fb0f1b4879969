"""Token-level distillation losses for causal LMs, each averaged over the positions where ``mask`` is 1.

With teacher distribution p and student distribution q over the vocabulary at one position:

- ``forward_kl``: KL(p || q) at temperature T, times T^2 (Hinton); mode-covering.
- ``reverse_kl``: KL(q || p) at T, times T^2 (MiniLLM's objective, token level); mode-seeking.
- ``jsd``: generalised Jensen-Shannon of GKD, beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.
- ``skew_kl``: DistiLLM's skew KL, KL(p || a p + (1 - a) q) with skew a; ``skew_reverse_kl``: KL(q || a q + (1 - a) p).

:func:`mixed_loss` mixes one of them with next-token cross-entropy: alpha * divergence + (1 - alpha) * CE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per position from log-probabilities (0 * log 0 taken as 0)."""
    a = log_a.exp()
    return (a * (log_a - log_b)).sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """log(w a + (1 - w) b), computed stably."""
    return torch.logsumexp(torch.stack([log_a + math.log(w), log_b + math.log1p(-w)]), dim=0)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, loss: str = "forward_kl", *,
               temperature: float = 1.0, beta: float = 0.5, skew: float = 0.1,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """One token-level divergence between student and teacher logits ``(..., vocab)``, masked mean over positions.

    Raises:
        ValueError: an unknown ``loss`` (the message lists the valid names) or mismatched vocabularies.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(LOSSES)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ (same tokenizer / vocabulary needed)")
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    if loss == "forward_kl":
        per = _kl(log_p, log_q) * t * t
    elif loss == "reverse_kl":
        per = _kl(log_q, log_p) * t * t
    elif loss == "jsd":
        log_m = _log_mix(log_p, log_q, beta)
        per = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    elif loss == "skew_kl":
        per = _kl(log_p, _log_mix(log_p, log_q, skew))
    else:  # skew_reverse_kl
        per = _kl(log_q, _log_mix(log_q, log_p, skew))
    return _masked_mean(per, mask)


def forward_kl_topk(student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, rest: torch.Tensor,
                    *, temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``forward_kl`` against a teacher stored as top-k (``values``/``indices`` ``(..., k)``, ``rest`` the
    log-sum-exp of the other logits, see :mod:`kd2deploy.distill.store`), without building dense teacher logits.

    Equal to ``divergence(student, densify(values, indices, rest), "forward_kl")``: the other V - k tokens share
    one logit, ``rest - log(V - k)``. Costs O(V) per position like the CE, instead of a (batch, seq, V) scatter.
    """
    t = temperature
    vocab = student_logits.shape[-1]
    k = values.shape[-1]
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    v = values.float() / t
    n_rest = vocab - k
    if n_rest > 0:
        fill = (rest.float() - math.log(n_rest)) / t
        lse = torch.logsumexp(torch.cat([v, (fill + math.log(n_rest)).unsqueeze(-1)], -1), -1)
    else:
        fill = torch.zeros_like(rest.float())
        lse = torch.logsumexp(v, -1)
    log_p_kept = v - lse.unsqueeze(-1)
    log_q_kept = log_q.gather(-1, indices.long())
    per = (log_p_kept.exp() * (log_p_kept - log_q_kept)).sum(-1)
    if n_rest > 0:
        log_p_each = fill - lse
        p_each = log_p_each.exp()
        sum_log_q_rest = log_q.sum(-1) - log_q_kept.sum(-1)
        per = per + n_rest * p_each * log_p_each - p_each * sum_log_q_rest
    return _masked_mean(per * t * t, mask)


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy: position i predicts token i + 1 (``mask`` over the predicting positions)."""
    pred = logits[:, :-1].float()
    target = input_ids[:, 1:]
    per = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)
    return _masked_mean(per, None if mask is None else mask[:, :-1])


def mixed_loss(student_logits: torch.Tensor, teacher, input_ids: torch.Tensor,
               cfg, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * divergence + (1 - alpha) * next-token CE (``cfg``: LMDistillConfig; no teacher: CE only).

    ``teacher`` is dense logits, or a ``(values, indices, rest)`` top-k triple (forward KL only, computed
    without densifying). The divergence covers the positions that predict a next token (all but the last);
    returns the loss and its parts as floats for the log.
    """
    ce = next_token_ce(student_logits, input_ids, mask)
    if teacher is None or cfg.alpha == 0:
        return ce, {"ce": float(ce.detach())}
    m = None if mask is None else mask[:, :-1]
    if isinstance(teacher, tuple):
        if cfg.loss != "forward_kl":
            raise ValueError(f"top-k teacher parts serve forward_kl only, not {cfg.loss!r}; pass dense logits")
        v, ix, rest = teacher
        kd = forward_kl_topk(student_logits[:, :-1], v[:, :-1], ix[:, :-1], rest[:, :-1],
                             temperature=cfg.temperature, mask=m)
    else:
        kd = divergence(student_logits[:, :-1], teacher[:, :-1], cfg.loss, temperature=cfg.temperature,
                        beta=cfg.beta, skew=cfg.skew, mask=m)
    total = cfg.alpha * kd + (1 - cfg.alpha) * ce
    return total, {"ce": float(ce.detach()), "kd": float(kd.detach())}
