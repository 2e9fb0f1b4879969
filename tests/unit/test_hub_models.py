"""torchvision: / timm: architectures: optional packages, a located one-line error when one is missing, real
models when present."""

from __future__ import annotations

import importlib.util

import pytest

from kd2deploy.config import load_config
from kd2deploy.errors import ConfigError
from kd2deploy.models import build_model, split_hub_spec


def test_hub_specs_parse():
    assert split_hub_spec("timm:resnet18") == ("timm", "resnet18")
    assert split_hub_spec("torchvision:mobilenet_v3_small") == ("torchvision", "mobilenet_v3_small")
    assert split_hub_spec("keras:resnet18") is None and split_hub_spec("cnn-large") is None


@pytest.mark.parametrize("hub", ["timm", "torchvision"])
def test_missing_package_says_how_to_install(write_pipeline, hub):
    if importlib.util.find_spec(hub) is not None:
        pytest.skip(f"{hub} is installed here")
    p = write_pipeline(f"student:\n  arch: {hub}:resnet18\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(
        f"{p}:2:9 student.arch: {hub}:resnet18 needs the optional package '{hub}', which is not installed; "
        "install a torchvision built for this torch")


def test_unknown_zoo_name_mentions_the_other_forms(write_pipeline):
    p = write_pipeline("teacher:\n  arch: resnet9\n")
    with pytest.raises(ConfigError, match=r"valid names: cnn-large, .*; or path/to/file\.py:function, "
                                          r"torchvision:NAME, timm:NAME"):
        load_config(p)


# CI does not install torchvision / timm, and cannot here: PyPI's torchvision 0.28.0 (the release for torch 2.13) is
# built against PyPI's CUDA torch and fails to import beside the CPU torch 2.13.0 wheel ("operator torchvision::nms
# does not exist"); timm 1.0.31 imports torchvision. The CPU torchvision comes from PyTorch's CPU index, which CI
# cannot reach. Measured 2026-12-07; these tests run wherever a matching torchvision is installed.
NO_TORCHVISION = ("torchvision not installed: CI cannot install one that imports beside the CPU torch 2.13.0 "
                  "(PyPI's 0.28.0 is built for the CUDA torch); install it from PyTorch's CPU index")


@pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                    reason="timm not installed (it imports torchvision; " + NO_TORCHVISION + ")")
def test_timm_model_builds_for_one_channel_digits():
    import torch

    model = build_model("timm:resnet18", (1, 8, 8), 10, {}, "teacher")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="unknown timm model 'resnet19'; close names: "):
        build_model("timm:resnet19", (1, 8, 8), 10, {}, "teacher")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason=NO_TORCHVISION)
def test_torchvision_model_builds_and_rejects_one_channel():
    import torch

    model = build_model("torchvision:resnet18", (3, 32, 32), 10, {}, "teacher")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="3-channel images"):
        build_model("torchvision:resnet18", (1, 8, 8), 10, {}, "teacher")
