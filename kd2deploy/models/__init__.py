"""Model builders by name, and a user's own builder as ``path/to/file.py:function``.

A builder is called as ``builder(input_shape=(C, H, W), num_classes=K, **kwargs)`` and returns an
``nn.Module`` mapping a float32 batch to logits. Naming a Python file in a pipeline runs that file's code:
that is the one explicit, documented way a pipeline executes user code.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError
from kd2deploy.registry import Registry

Builder = Callable[..., Any]
MODELS: Registry[Builder] = Registry("model")

_FILE_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<fn>[A-Za-z_]\w*)$")


def split_file_spec(spec: str) -> tuple[str, str] | None:
    """``'models/net.py:build'`` -> ``('models/net.py', 'build')``; None for a zoo name."""
    m = _FILE_SPEC.match(spec)
    return (m["file"], m["fn"]) if m else None


def _load_user_builder(file: str, fn: str) -> Builder:
    path = Path(file)
    spec = importlib.util.spec_from_file_location(f"kd2deploy_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot import this file as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's code failed; say where
        raise ConfigError(f"{path}: importing the model file failed: {type(e).__name__}: {e}") from None
    builder = getattr(module, fn, None)
    if not callable(builder):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"{path}: no function {fn!r}; callables in the file: {', '.join(names) or 'none'}")
    return builder


# ``timm:NAME`` / ``torchvision:NAME`` were built in until 2026-12: no CI machine here can import torchvision beside
# the CPU torch wheel, so the builders were never tested. A three-line builder file does the same (see below).
_REMOVED_HUB = re.compile(r"^(?P<hub>torchvision|timm):(?P<name>.*)$")


def removed_hub_message(spec: str) -> str | None:
    """What to write instead of a ``timm:NAME`` / ``torchvision:NAME`` architecture; None for anything else."""
    m = _REMOVED_HUB.match(spec)
    if m is None:
        return None
    call = ("timm.create_model({n!r}, num_classes=num_classes, in_chans=input_shape[0])" if m["hub"] == "timm"
            else "torchvision.models.get_model({n!r}, num_classes=num_classes)").format(n=m["name"])
    return (f"{spec}: '{m['hub']}:NAME' architectures are no longer built in; write a builder file, e.g. "
            f"models.py with 'import {m['hub']}' and 'def build(input_shape, num_classes, **kw): return {call}', "
            "and use arch: models.py:build")


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any], role: str):
    """Builds a model by zoo name or ``file.py:function``; errors name the role (teacher / student)."""
    import torch.nn as nn

    spec = split_file_spec(arch)
    removed = removed_hub_message(arch)
    if removed:
        raise ConfigError(f"{role}.arch: {removed}")
    builder = _load_user_builder(*spec) if spec else MODELS.get(arch)
    try:
        model = builder(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{role}.kwargs: the builder of {arch!r} rejected its arguments: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{role}.arch {arch!r}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{role}.arch {arch!r}: the builder returned {type(model).__name__}, not a torch nn.Module")
    return model


from kd2deploy.models import zoo  # noqa: E402,F401  (registers the built-in zoo)
