"""Shared fixtures: tiny pipelines that run in seconds on two CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")

REPO = Path(__file__).resolve().parents[1]


def cli_env(home, **extra: str) -> dict[str, str]:
    """A bare environment for running ``python -m kd2deploy`` in a subprocess: wide lines, no user settings.

    PYTHONPATH is the checkout's code, also where another checkout is the installed (editable) one.
    """
    return {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(REPO), **extra}

TINY_PIPELINE = """\
version: 1
name: tiny
seed: 0
teacher:
  arch: cnn-small
  train: {epochs: 3, batch_size: 128, lr: 0.01}
student:
  arch: mlp-tiny
distill:
  seeds: [0, 1]
  controls: [scratch]
  train: {epochs: 3, batch_size: 128, lr: 0.01}
benchmark:
  batch_sizes: [1, 4]
  warmup_s: 0.01
  warmup_runs: 2
  min_duration_s: 0.05
  min_runs: 10
  rounds: 2
energy:
  window_s: 1.0
  repeats: 1
"""


@pytest.fixture
def write_pipeline(tmp_path):
    """Writes a pipeline file into tmp_path and returns its path."""

    def _write(text: str = TINY_PIPELINE, name: str = "p.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1:<free port> for the whole session (see tests/sshd.py); skips without one."""
    from tests import sshd as real

    reason = real.why_not()
    if reason:
        pytest.skip(reason)
    server = real.start(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
