"""Hidden-state and attention distillation losses for transformers (kd2deploy/tasks/text/losses.py)."""

from __future__ import annotations

import pytest
import torch

from kd2deploy.tasks.text.losses import attention_loss, hidden_loss, make_projection
from kd2deploy.tasks.text.models import uniform_layer_map


def _hidden(layers: int, width: int, seed: int, batch: int = 3, seq: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq, width, generator=g) for _ in range(layers + 1)]  # embeddings + layers


def _attn(layers: int, heads: int, seed: int, batch: int = 3, seq: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, seq, seq, generator=g).softmax(-1) for _ in range(layers)]


def test_uniform_layer_map():
    assert uniform_layer_map(6, 2) == [2, 5]
    assert uniform_layer_map(6, 3) == [1, 3, 5]
    assert uniform_layer_map(12, 4) == [2, 5, 8, 11]
    assert uniform_layer_map(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="more than the teacher"):
        uniform_layer_map(2, 3)


def test_hidden_loss_zero_for_identical_states():
    h = _hidden(4, 8, 0)
    assert hidden_loss(h, h, [0, 1, 2, 3], make_projection(8, 8)).item() == 0.0


def test_hidden_loss_uses_the_layer_map():
    teacher = _hidden(4, 8, 0)
    student = [teacher[0], teacher[2], teacher[4]]  # embeddings, teacher layers 1 and 3 (0-based)
    assert hidden_loss(student, teacher, [1, 3], make_projection(8, 8)).item() == 0.0
    assert hidden_loss(student, teacher, [0, 3], make_projection(8, 8)).item() > 0.0


def test_hidden_loss_positive_and_gradient_flows():
    teacher = _hidden(2, 8, 0)
    student = [t.clone().requires_grad_(True) for t in _hidden(2, 8, 1)]
    loss = hidden_loss(student, teacher, [0, 1], make_projection(8, 8))
    assert loss.item() > 0
    loss.backward()
    assert student[1].grad is not None and student[1].grad.abs().sum() > 0
    assert teacher[1].grad is None  # the teacher is a fixed target


def test_hidden_loss_projects_a_narrower_student():
    teacher = _hidden(2, 16, 0)
    student = [t.requires_grad_(True) for t in _hidden(2, 8, 1)]
    proj = make_projection(8, 16)
    assert isinstance(proj, torch.nn.Linear) and proj.weight.shape == (16, 8)
    assert isinstance(make_projection(8, 8), torch.nn.Identity)
    loss = hidden_loss(student, teacher, [0, 1], proj)
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_hidden_loss_ignores_padding():
    teacher = _hidden(1, 8, 0)
    student = [t.clone() for t in teacher]
    student[1][:, -2:] += 5.0  # differs only at the last two (padding) positions
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[:, -2:] = 0
    assert hidden_loss(student, teacher, [0], make_projection(8, 8), mask).item() == 0.0
    assert hidden_loss(student, teacher, [0], make_projection(8, 8)).item() > 0.0


def test_hidden_loss_rejects_a_bad_map():
    with pytest.raises(ValueError, match="layer_map"):
        hidden_loss(_hidden(2, 8, 0), _hidden(4, 8, 0), [0], make_projection(8, 8))
    with pytest.raises(ValueError, match="outside"):
        hidden_loss(_hidden(2, 8, 0), _hidden(4, 8, 0), [0, 4], make_projection(8, 8))


def test_attention_loss_zero_for_identical_distributions():
    a = _attn(3, 2, 0)
    assert attention_loss(a, a, [0, 1, 2]).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_loss_positive_gradient_and_map():
    teacher = _attn(4, 2, 0)
    logits = [torch.randn(3, 2, 7, 7, generator=torch.Generator().manual_seed(i), requires_grad=True)
              for i in range(2)]
    student = [x.softmax(-1) for x in logits]
    loss = attention_loss(student, teacher, [1, 3])
    assert loss.item() > 0
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in logits)
    assert attention_loss([teacher[1], teacher[3]], teacher, [1, 3]).item() == pytest.approx(0.0, abs=1e-7)
    assert attention_loss([teacher[1], teacher[3]], teacher, [0, 3]).item() > 0


def test_attention_loss_is_kl_teacher_to_student():
    t = torch.tensor([[[[0.5, 0.5]]]])
    s = torch.tensor([[[[0.9, 0.1]]]])
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.9)) + 0.5 * torch.log(torch.tensor(0.5 / 0.1))
    assert attention_loss([s], [t], [0]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_attention_loss_masks_padding_queries_and_handles_head_counts():
    teacher = _attn(1, 4, 0)
    student = [teacher[0].clone()]
    student[0][:, :, -1] = torch.full((7,), 1 / 7)  # a different distribution on the last (padding) query
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[:, -1] = 0
    assert attention_loss(student, teacher, [0], mask).item() == pytest.approx(0.0, abs=1e-7)
    assert attention_loss(student, teacher, [0]).item() > 0
    two_heads = [teacher[0][:, :2].mean(1, keepdim=True).expand(-1, 2, -1, -1)]
    assert attention_loss(two_heads, teacher, [0]).item() >= 0  # different head counts: mean distributions
