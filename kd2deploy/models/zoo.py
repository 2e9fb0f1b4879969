"""The built-in zoo. Builders import torch lazily so that validating a pipeline stays fast."""

from __future__ import annotations

from kd2deploy.models import MODELS


@MODELS.register("cnn-large")
def cnn_large(input_shape, num_classes, width: int = 32, dropout: float = 0.3):
    """Three conv blocks (width, 2*width, 4*width) + a 256-unit head: ~227k params on 1x8x8 digits."""
    from kd2deploy.models.nets import ConvNet

    return ConvNet(input_shape, num_classes, channels=(width, 2 * width, 4 * width), pools=(False, True, True),
                   hidden=256, dropout=dropout, batch_norm=True)


@MODELS.register("cnn-small")
def cnn_small(input_shape, num_classes, width: int = 16, dropout: float = 0.1):
    """Two conv blocks (width, 2*width) + a 64-unit head: ~37k params on 1x8x8 digits."""
    from kd2deploy.models.nets import ConvNet

    return ConvNet(input_shape, num_classes, channels=(width, 2 * width), pools=(False, True),
                   hidden=64, dropout=dropout, batch_norm=True)


@MODELS.register("cnn-tiny")
def cnn_tiny(input_shape, num_classes, width: int = 8, hidden: int = 32):
    """Two conv blocks (width, 2*width) + a small head: ~9.9k params on 1x8x8 digits."""
    from kd2deploy.models.nets import ConvNet

    return ConvNet(input_shape, num_classes, channels=(width, 2 * width), pools=(False, True),
                   hidden=hidden, dropout=0.0, batch_norm=True)


@MODELS.register("mlp")
def mlp(input_shape, num_classes, hidden: list[int] | tuple[int, ...] = (256, 128), dropout: float = 0.1):
    """Flatten + fully connected layers of the given widths."""
    from kd2deploy.models.nets import MLP

    return MLP(input_shape, num_classes, hidden=tuple(hidden), dropout=dropout)


@MODELS.register("mlp-tiny")
def mlp_tiny(input_shape, num_classes, hidden: int = 32):
    """Flatten + one hidden layer: ~2.4k params on 8x8 digits."""
    from kd2deploy.models.nets import MLP

    return MLP(input_shape, num_classes, hidden=(hidden,), dropout=0.0)
