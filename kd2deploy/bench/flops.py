"""Model size in FLOPs and parameters, counted from the torch module (not from the ONNX graph)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def count_flops(module: torch.nn.Module, example: torch.Tensor | Mapping[str, torch.Tensor]) -> int:
    """FLOPs of one forward pass on one sample, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    ``example``: a batch tensor, or keyword inputs by name (a Hugging Face model's ``input_ids``, ...).

    A multiply-add counts as 2 FLOPs (a Linear(in, out) layer: 2 * in * out); only matmul, convolution and
    attention-like ops are counted (element-wise ops, bias adds, activations and pooling are not). The
    module runs in eval mode under ``torch.no_grad()`` on ``example[:1]`` (``example`` has a batch axis)
    and is put back into its former train/eval mode.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if isinstance(example, Mapping):
                module(**{k: v[:1] for k, v in example.items()})
            else:
                module(example[:1])
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as batch-norm statistics excluded)."""
    return sum(p.numel() for p in module.parameters())
