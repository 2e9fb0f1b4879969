"""A run killed mid-training (kill -9, SIGTERM) is resumed by running the same command again, and ends with the
same students as a run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_env
from tests.integration.test_cli import kd2deploy

EPOCHS = 60
PIPELINE = f"""\
version: 1
name: tiny
seed: 0
teacher:
  arch: cnn-small
  train: {{epochs: 3, batch_size: 128, lr: 0.01}}
student:
  arch: cnn-tiny
distill:
  seeds: [0, 1]
  controls: [scratch]
  train: {{epochs: {EPOCHS}, batch_size: 32, lr: 0.01}}
benchmark:
  batch_sizes: [1]
  warmup_s: 0.01
  warmup_runs: 2
  min_duration_s: 0.05
  min_runs: 10
  rounds: 2
energy:
  enabled: false
variants:
  variants: []
"""


def start(pipeline: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kd2deploy", "run", str(pipeline), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(out.parent))


def checkpoint_epoch(out: Path) -> int:
    """The epoch of the students' stacked checkpoint (0 while there is none)."""
    for f in out.glob(".cache/students/*.progress/stack_*.pt"):
        try:
            return int(torch.load(f, weights_only=True)["epoch"])
        except Exception:  # noqa: BLE001 - replaced while we read it: try again
            return 0
    return 0


def stop_mid_training(pipeline: Path, out: Path, sig: int) -> tuple[int, str, int]:
    """Starts the run, sends ``sig`` half an epoch after the students' 5th checkpoint; (exit code, output, epoch)."""
    proc = start(pipeline, out)
    deadline = time.monotonic() + 240
    while (epoch := checkpoint_epoch(out)) < 5:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the students never reached epoch 5"
        time.sleep(0.02)
    time.sleep(0.05)  # an epoch is ~0.15 s here: the signal lands inside the next one
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    return proc.returncode, output, epoch


def students(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: torch.load(p, weights_only=True) for p in sorted((run_dir / "checkpoints").glob("student_*.pt"))}


def finished_run(out: Path) -> tuple[Path, dict]:
    (results,) = out.glob("tiny/*/results.json")
    return results.parent, json.loads(results.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """The same pipeline, never stopped."""
    root = tmp_path_factory.mktemp("ref")
    (root / "p.yaml").write_text(PIPELINE)
    out = kd2deploy("run", str(root / "p.yaml"), "--out", str(root / "runs"))
    assert out.returncode == 0, out.stdout + out.stderr
    return finished_run(root / "runs")


def test_kill_9_mid_epoch_then_rerun_resumes_to_the_same_result(reference, tmp_path):
    pipeline, out = tmp_path / "p.yaml", tmp_path / "runs"
    pipeline.write_text(PIPELINE)
    code, _, epoch = stop_mid_training(pipeline, out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not list(out.glob("tiny/*/results.json"))  # nothing that looks finished
    (progress,) = out.glob(".cache/students/*.progress")
    assert not [p for p in progress.iterdir() if p.name.startswith(".")]  # no half-written checkpoint

    again = kd2deploy("run", str(pipeline), "--out", str(out))
    assert again.returncode == 0, again.stdout + again.stderr
    run_dir, res = finished_run(out)
    (resumed,) = res["run"]["resumed"]["students"].values()
    assert epoch <= resumed < EPOCHS
    assert "teacher" in res["run"]["reused"]  # the killed run had finished and stored the teacher
    assert not progress.exists()  # checkpoints go once the stage is stored
    assert "resumed from the per-epoch checkpoints" in (run_dir / "report.md").read_text()

    ref_dir, ref = reference
    a, b = students(run_dir), students(ref_dir)
    assert a.keys() == b.keys() and len(a) == 4
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name} {k}"
    for mine, theirs in zip(res["distill"]["per_seed"], ref["distill"]["per_seed"], strict=True):
        for arm in ("kd", "scratch"):
            assert mine[arm]["test_accuracy"] == theirs[arm]["test_accuracy"]
            assert [e["val_loss"] for e in mine[arm]["curve"]] == [e["val_loss"] for e in theirs[arm]["curve"]]


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM semantics are POSIX")
def test_sigterm_stops_cleanly_and_keeps_checkpoints(tmp_path):
    pipeline, out = tmp_path / "p.yaml", tmp_path / "runs"
    pipeline.write_text(PIPELINE)
    code, output, _ = stop_mid_training(pipeline, out, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, output
    assert "interrupted" in output and "resumes from the last complete epoch" in output
    assert "Traceback" not in output
    (partial,) = out.glob("tiny/*/results.partial.json")
    assert json.loads(partial.read_text())["models"]["teacher"]["source"] == "trained"
    assert checkpoint_epoch(out) >= 5
