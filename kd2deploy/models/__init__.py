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


# Architectures from optional packages, by "<package>:<name>" (random init; load weights with a checkpoint).
HUBS = {"torchvision": "torchvision", "timm": "timm"}
_HUB_SPEC = re.compile(r"^(?P<hub>torchvision|timm):(?P<name>[A-Za-z0-9_.\-]+)$")


def split_hub_spec(spec: str) -> tuple[str, str] | None:
    """``'timm:resnet18'`` -> ``('timm', 'resnet18')``; None for anything else."""
    m = _HUB_SPEC.match(spec)
    return (m["hub"], m["name"]) if m else None


def check_hub_spec(hub: str, name: str) -> str:
    """Checks that the optional package is installed and knows ``name``; raises ValueError saying what to do."""
    import difflib
    import importlib.util

    install = ("install a torchvision built for this torch (the CPU build: pip install -c constraints.txt torchvision "
               "--index-url https://download.pytorch.org/whl/cpu), then timm from PyPI; PyPI's own torchvision 0.28.0 "
               "installs beside torch 2.13.0+cpu but its operators do not load, and timm 1.0.31 imports torchvision")
    if importlib.util.find_spec(HUBS[hub]) is None:
        raise ValueError(f"{hub}:{name} needs the optional package {hub!r}, which is not installed; {install}")
    try:
        names = _hub_names(hub)
    except Exception as e:  # noqa: BLE001 - an installed package that does not load with this torch
        raise ValueError(f"{hub}:{name}: {hub!r} is installed but does not load ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); {install}") from None
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        raise ValueError(f"unknown {hub} model {name!r}; close names: {', '.join(close) or 'none'} "
                         f"({len(names)} in all, see {hub}'s list_models())")
    return f"{hub}:{name}"


def _hub_names(hub: str) -> list[str]:
    if hub == "torchvision":
        import torchvision

        return list(torchvision.models.list_models())
    import timm

    return list(timm.list_models())


def _hub_builder(hub: str, name: str) -> Builder:
    def build(input_shape, num_classes, **kwargs):
        if hub == "timm":
            import timm

            return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0],
                                     **kwargs)
        import torchvision

        if input_shape[0] != 3:
            raise ValueError(f"torchvision models take 3-channel images; the data has {input_shape[0]} channel(s) "
                             "(timm models take in_chans)")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    return build


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any], role: str):
    """Builds a model by zoo name, ``file.py:function`` or ``torchvision:NAME`` / ``timm:NAME``; errors name the
    role (teacher / student)."""
    import torch.nn as nn

    spec = split_file_spec(arch)
    hub = split_hub_spec(arch)
    if hub is not None:
        try:
            check_hub_spec(*hub)
        except ValueError as e:
            raise ConfigError(f"{role}.arch: {e}") from None
        builder = _hub_builder(*hub)
    else:
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
