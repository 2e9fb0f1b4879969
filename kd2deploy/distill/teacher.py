"""What the student learns from: a teacher or an ensemble of teachers, its outputs on the transfer set, and
its (and the student's) intermediate layers by module name for hint terms.

Teacher outputs are computed once over the training set when the transfer set has no per-epoch randomness,
and per batch (on the very view the student sees) when it has (augmentation, mixup).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from kd2deploy.errors import ConfigError


class EnsembleTeacher(nn.Module):
    """Several teachers as one module.

    ``forward`` returns the log of the members' mean class probabilities (the ensemble's prediction; argmax is
    its vote by averaged probability), so the ensemble exports, evaluates and benchmarks as one ONNX model.
    Distillation does not use ``forward``: it uses :meth:`member_logits`, and the loss averages the members'
    probabilities at its own temperature.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, members, classes)`` logits."""
        return torch.stack([m(x) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # log(mean_m p_m) as top + log(sum_m exp(log p_m - top)) - log M, with top the element-wise max: the sum
        # is >= 1, so the log stays finite even when an INT8 variant rounds small exponentials to 0. (Not stack +
        # logsumexp: onnxruntime's symbolic shape inference, run before static quantisation, cannot type that.)
        parts = [torch.log_softmax(member(x), dim=-1) for member in self.members]
        top = parts[0]
        for p in parts[1:]:
            top = torch.maximum(top, p)
        total = torch.exp(parts[0] - top)
        for p in parts[1:]:
            total = total + torch.exp(p - top)
        return top + torch.log(total) - math.log(len(self.members))


def teacher_logits_of(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits distillation uses: ``(n, classes)``, or ``(n, members, classes)`` for an ensemble."""
    fn = teacher.member_logits if isinstance(teacher, EnsembleTeacher) else teacher
    return _eval_in_chunks(fn, teacher, x)


@torch.no_grad()  # not inference_mode: these tensors are saved for backward by losses such as the hint MSE
def _eval_in_chunks(fn: Callable, module: nn.Module, x: torch.Tensor, chunk: int = 1024):
    module.eval()
    parts = [fn(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------- layers
def inner(model: nn.Module) -> nn.Module:
    """The module whose names a pipeline uses: the user's model inside the Standardized wrapper; for an ensemble,
    its first member's."""
    from kd2deploy.models.nets import Standardized

    if isinstance(model, EnsembleTeacher):
        model = model.members[0]
    return model.model if isinstance(model, Standardized) else model


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, _ in inner(model).named_modules() if n]


def find_layer(model: nn.Module, name: str, where: str) -> nn.Module:
    """The sub-module ``name`` of ``model`` (names as ``named_modules()`` of the user's model), or a ConfigError
    listing the valid names."""
    modules = dict(inner(model).named_modules())
    if not name or name not in modules:
        raise ConfigError(f"{where}: unknown module {name!r}; valid names: {', '.join(layer_names(model))}")
    return modules[name]


@contextmanager
def taps(modules: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that keep each module's latest output in the yielded dict; removed on exit."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for key, module in modules.items():
        def hook(_m, _inp, output, key=key):
            out[key] = output
        handles.append(module.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def teacher_outputs(teacher: nn.Module, layers: list[str]) -> Callable[[torch.Tensor], Any]:
    """A function of a batch giving the teacher's logits, or ``{"logits", "layer:<name>"...}`` with hint layers."""
    if not layers:
        return lambda x: teacher_logits_of(teacher, x)
    modules = {f"layer:{n}": find_layer(teacher, n, "teacher layer") for n in layers}
    fn = teacher.member_logits if isinstance(teacher, EnsembleTeacher) else teacher

    def one_chunk(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with taps(modules) as got:
            logits = fn(x)
            return {"logits": logits, **{k: v.detach().clone() for k, v in got.items()}}

    return lambda x: _eval_in_chunks(one_chunk, teacher, x)


def take(outputs: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of precomputed teacher outputs (a tensor or a dict of tensors)."""
    if isinstance(outputs, dict):
        return {k: v[idx] for k, v in outputs.items()}
    return outputs[idx]
