"""``timm:NAME`` / ``torchvision:NAME`` architectures were removed (no machine here can import torchvision beside
the CPU torch wheel, so they were never tested): such a pipeline gets one line saying what to write instead, and
that replacement, a builder file, is what runs."""

from __future__ import annotations

import pytest

from kd2deploy.config import load_config
from kd2deploy.errors import ConfigError
from kd2deploy.models import build_model


@pytest.mark.parametrize("hub,call", [("timm", "timm.create_model('resnet18', num_classes=num_classes, in_chans="),
                                      ("torchvision", "torchvision.models.get_model('resnet18', num_classes=")])
def test_hub_spec_says_what_to_write_instead(write_pipeline, hub, call):
    p = write_pipeline(f"student:\n  arch: {hub}:resnet18\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:2:9 student.arch: {hub}:resnet18: '{hub}:NAME' architectures are no longer built in; "
                          f"write a builder file, e.g. models.py with 'import {hub}'")
    assert call in msg and msg.endswith("use arch: models.py:build") and "\n" not in msg
    with pytest.raises(ConfigError, match=f"teacher.arch: {hub}:resnet18: '{hub}:NAME' architectures"):
        build_model(f"{hub}:resnet18", (1, 8, 8), 10, {}, "teacher")


def test_builder_file_is_the_replacement(tmp_path, write_pipeline):
    models = tmp_path / "models.py"
    models.write_text("import torch.nn as nn\n\n"
                      "def build(input_shape, num_classes, **kw):\n"
                      "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * 64, num_classes))\n")
    p = write_pipeline(f"student:\n  arch: {models}:build\n")
    cfg = load_config(p)
    import torch

    model = build_model(cfg.student.arch, (1, 8, 8), 10, {}, "student")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_unknown_zoo_name_mentions_the_file_form(write_pipeline):
    p = write_pipeline("teacher:\n  arch: resnet9\n")
    with pytest.raises(ConfigError, match=r"valid names: cnn-large, .*; or path/to/file\.py:function"):
        load_config(p)
