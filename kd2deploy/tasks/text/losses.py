"""Intermediate-layer distillation losses for transformers: hidden states (TinyBERT) and attention (MiniLM).

Both compare student layer j with teacher layer ``layer_map[j]`` (see
:func:`kd2deploy.tasks.text.models.uniform_layer_map`) and ignore padding positions through ``attention_mask``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

EPS = 1e-12


def make_projection(student_width: int, teacher_width: int) -> nn.Module:
    """A learned linear map from the student's width to the teacher's; identity when they are equal.

    It is trained with the student and not exported."""
    if student_width == teacher_width:
        return nn.Identity()
    return nn.Linear(student_width, teacher_width, bias=False)


def _check(student: Sequence, teacher: Sequence, layer_map: Sequence[int], what: str, offset: int) -> None:
    if len(layer_map) != len(student) - offset:
        raise ValueError(f"{what}: layer_map has {len(layer_map)} entries for {len(student) - offset} student layers")
    if max(layer_map) >= len(teacher) - offset or min(layer_map) < 0:
        raise ValueError(f"{what}: layer_map {list(layer_map)} outside the teacher's {len(teacher) - offset} layers")


def hidden_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Sequence[int],
    projection: nn.Module,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between projected student layer outputs and their teacher layers.

    Args:
        student_hidden, teacher_hidden: Hugging Face ``hidden_states`` (embeddings first, then one
            ``(batch, seq, width)`` tensor per layer).
        layer_map: teacher layer (0-based) for each student layer.
        projection: student width -> teacher width (:func:`make_projection`).
        attention_mask: ``(batch, seq)``, 1 for real tokens; padding is left out of the mean.
    """
    _check(student_hidden, teacher_hidden, layer_map, "hidden_loss", 1)
    total = student_hidden[1].new_zeros(())
    for j, t in enumerate(layer_map):
        s = projection(student_hidden[j + 1])
        d = (s - teacher_hidden[t + 1].detach()).pow(2).mean(-1)  # (batch, seq)
        if attention_mask is not None:
            m = attention_mask.to(d.dtype)
            total = total + (d * m).sum() / m.sum().clamp_min(1)
        else:
            total = total + d.mean()
    return total / len(layer_map)


def attention_loss(
    student_attn: Sequence[torch.Tensor],
    teacher_attn: Sequence[torch.Tensor],
    layer_map: Sequence[int],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions, per query row, mean over heads and real queries.

    Args:
        student_attn, teacher_attn: Hugging Face ``attentions``: one ``(batch, heads, seq, seq)`` tensor of
            probabilities per layer. With different head counts the heads' mean distributions are compared.
        layer_map: teacher layer (0-based) for each student layer.
        attention_mask: ``(batch, seq)``; padding query rows are left out.
    """
    _check(student_attn, teacher_attn, layer_map, "attention_loss", 0)
    total = student_attn[0].new_zeros(())
    for j, t in enumerate(layer_map):
        s, q = student_attn[j], teacher_attn[t].detach()
        if s.shape[1] != q.shape[1]:
            s, q = s.mean(1, keepdim=True), q.mean(1, keepdim=True)
        kl = (q * (torch.log(q.clamp_min(EPS)) - torch.log(s.clamp_min(EPS)))).sum(-1)  # (batch, heads, seq)
        if attention_mask is not None:
            m = attention_mask.to(kl.dtype)[:, None, :].expand_as(kl)
            total = total + (kl * m).sum() / m.sum().clamp_min(1)
        else:
            total = total + kl.mean()
    return total / len(layer_map)
