"""The teacher-output store: round trip through memory-mapped files, keys that follow the teacher, the data and
top_k, atomic entries, and what top-k does to the distillation loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd2deploy.distill import store
from kd2deploy.distill.losses import hinton_loss


def _teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 10))


DATA = {"source": "test", "standardize": True}


def test_round_trip_is_memory_mapped_and_exact(tmp_path):
    teacher, x = _teacher(), torch.randn(37, 6)
    out, rec = store.teacher_outputs(teacher, x, tmp_path, DATA)
    assert rec["hit"] is False and rec["top_k"] is None
    with torch.no_grad():
        expected = teacher.eval()(x)
    assert isinstance(out.arrays["logits"], np.memmap)
    idx = torch.tensor([3, 0, 36, 3])
    assert torch.equal(out[idx], expected[idx])
    assert torch.equal(out[torch.stack([idx, idx.flip(0)])], expected[torch.stack([idx, idx.flip(0)])])
    again, rec2 = store.teacher_outputs(teacher, x, tmp_path, DATA)
    assert rec2["hit"] is True and rec2["key"] == rec["key"]
    assert torch.equal(again.dense(), expected)
    assert [p.name for p in tmp_path.iterdir()] == [rec["key"]]  # no temporary folder left behind


def test_key_changes_with_teacher_data_preprocessing_and_top_k():
    x = torch.randn(20, 6)
    base = store.store_key(_teacher(0), x, DATA, None)
    assert store.store_key(_teacher(0), x.clone(), dict(DATA), None) == base
    assert store.store_key(_teacher(1), x, DATA, None) != base  # another teacher
    x2 = x.clone()
    x2[0, 0] += 1e-3
    assert store.store_key(_teacher(0), x2, DATA, None) != base  # other data
    assert store.store_key(_teacher(0), x, {**DATA, "standardize": False}, None) != base  # other preprocessing
    assert store.store_key(_teacher(0), x, DATA, 3) != base


def test_damaged_entry_is_recomputed(tmp_path):
    teacher, x = _teacher(), torch.randn(9, 6)
    _, rec = store.teacher_outputs(teacher, x, tmp_path, DATA)
    (tmp_path / rec["key"] / "logits.npy").write_bytes(b"not numpy")
    out, rec2 = store.teacher_outputs(teacher, x, tmp_path, DATA)
    assert rec2["hit"] is False
    with torch.no_grad():
        assert torch.equal(out.dense(), teacher(x))


def test_top_k_keeps_the_top_classes_and_the_rest_mass_at_t1(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(50, 10) * 3
    out, _ = store.teacher_outputs(_Fixed(logits), torch.arange(50.0).unsqueeze(1), tmp_path, DATA, top_k=3)
    assert sorted(out.arrays) == ["rest_logsumexp", "topk_indices", "topk_values"]
    dense = out.dense()
    p, q = logits.softmax(-1), dense.softmax(-1)
    top = logits.topk(3, dim=-1).indices
    assert torch.allclose(q.gather(-1, top), p.gather(-1, top), atol=1e-6)  # exact on the kept classes
    rest_p = 1 - p.gather(-1, top).sum(-1)
    rest_q = 1 - q.gather(-1, top).sum(-1)
    assert torch.allclose(rest_q, rest_p, atol=1e-6)  # the other classes' total mass is kept ...
    others = q.scatter(-1, top, float("nan"))
    flat = others[~others.isnan()].view(50, 7)
    assert torch.allclose(flat, flat[:, :1].expand(50, 7))  # ... spread evenly over them


def test_top_k_loss_is_exact_with_c_minus_1_and_close_with_small_k():
    torch.manual_seed(1)
    t, s, y = torch.randn(64, 10) * 2, torch.randn(64, 10), torch.randint(0, 10, (64,))
    exact = hinton_loss(s, t, y, temperature=2.0, alpha=0.9)
    v, i, r = store.topk_parts(t, 9)
    assert torch.allclose(hinton_loss(s, store.densify(v, i, r, 10), y, temperature=2.0, alpha=0.9), exact,
                          atol=1e-5)
    v, i, r = store.topk_parts(t, 5)
    approx = hinton_loss(s, store.densify(v, i, r, 10), y, temperature=2.0, alpha=0.9)
    assert math.isfinite(float(approx)) and abs(float(approx) - float(exact)) < 0.1 * float(exact)
    at_t1 = F.kl_div(F.log_softmax(s, -1), F.softmax(store.densify(v, i, r, 10), -1), reduction="batchmean")
    assert math.isfinite(float(at_t1))


class _Fixed(nn.Module):
    """A 'teacher' whose output for row j is logits[j] (the inputs are the row numbers)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, x):
        return self.table[x[:, 0].long()]


def test_top_k_not_below_the_class_count_is_a_config_error(tmp_path):
    from kd2deploy.config import PipelineConfig

    with pytest.raises(Exception, match="top_k"):
        PipelineConfig.model_validate({"distill": {"teacher_store": {"top_k": 0}}})
    cfg = PipelineConfig.model_validate({"distill": {"teacher_store": {"top_k": 5, "enabled": True}}})
    assert cfg.distill.teacher_store.top_k == 5
