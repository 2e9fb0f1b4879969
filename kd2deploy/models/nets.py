"""The torch modules behind the built-in zoo."""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvNet(nn.Module):
    """3x3 conv blocks (conv, optional batch norm, ReLU, optional 2x2 max-pool), then an MLP head."""

    def __init__(self, input_shape, num_classes, channels, pools, hidden, dropout=0.0, batch_norm=True):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"a CNN needs inputs shaped (channels, height, width), got {tuple(input_shape)}")
        layers: list[nn.Module] = []
        c_in, h, w = input_shape
        for c_out, pool in zip(channels, pools, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(c_out)] if batch_norm else []
            layers += [nn.ReLU()]
            if pool and min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * h * w, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten, then Linear + ReLU (+ dropout) per hidden width, then a linear classifier."""

    def __init__(self, input_shape, num_classes, hidden=(256, 128), dropout=0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(input_shape)
        for width in hidden:
            layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(dropout)]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Standardized(nn.Module):
    """Wraps a model with the training split's input standardisation, so exported files take raw inputs.

    The inner model's state_dict is what checkpoints hold; mean and std travel as buffers in the ONNX graph.
    """

    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
