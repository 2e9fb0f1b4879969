"""Building, wrapping and loading the tensor task's torch models."""

from __future__ import annotations

from pathlib import Path

from kd2deploy.errors import ConfigError


def wrap(model, data, standardize: bool):
    """The model behind the input standardisation that ships inside the exported file."""
    from kd2deploy.models.nets import Standardized

    if standardize:
        x = data.x_train
        return Standardized(model, float(x.mean()), float(x.std()) or 1.0)
    return Standardized(model, 0.0, 1.0)


def check_logits(model, x, num_classes: int, arch: str, role: str) -> None:
    """The model must map a batch to (batch, classes) logits."""
    import torch

    with torch.inference_mode():
        model.eval()
        out = model(x[:2])
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ConfigError(
            f"{role}.arch {arch!r}: the model outputs shape {tuple(out.shape)}, but the data "
            f"has {num_classes} classes; expected (batch, {num_classes})"
        )


def load_checkpoint(model, path: Path) -> None:
    """Loads a user's state_dict into ``model``, with one clear line for a file that does not fit."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise ConfigError(
            f"{path}: teacher.checkpoint is not a readable PyTorch state_dict ({type(e).__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: teacher.checkpoint holds a {type(state).__name__}, expected a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(
            f"{path}: teacher.checkpoint does not fit teacher.arch (e.g. a different number of classes): {first}"
        ) from None

