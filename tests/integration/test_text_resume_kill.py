"""A text run killed with kill -9 in the middle of distillation resumes when the same command runs again, and
ends with the same students as a run that was never stopped (the shared stages' cache and per-epoch resume)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HF = "task: text needs the [hf] extra (pip install -c constraints.txt -e '.[hf]')"
pytest.importorskip("transformers", reason=HF, exc_type=ImportError)
pytest.importorskip("optimum.onnxruntime", reason=HF, exc_type=ImportError)

import torch  # noqa: E402

from tests.conftest import cli_env  # noqa: E402
from tests.hf_tiny import tiny_bert_folder, tiny_texts, write_csv  # noqa: E402
from tests.integration.test_cli import kd2deploy  # noqa: E402

EPOCHS = 10
PIPELINE = f"""\
name: tinytext
task: text
text:
  data: {{path: data.csv, max_seq_len: 16}}
  teacher: {{model: teacher, train: {{epochs: 3, lr: 3.0e-3, batch_size: 8}}}}
  student: {{num_layers: 2}}
  distill:
    seeds: [0]
    controls: [scratch]
    terms: [{{loss: hinton}}]  # logit terms: the teacher's outputs are computed once
    train: {{epochs: {EPOCHS}, lr: 3.0e-3, batch_size: 8}}
  bench: {{seq_lens: [16], tokenizer_samples: 5}}
benchmark: {{batch_sizes: [1], warmup_s: 0.01, warmup_runs: 2, min_duration_s: 0.02, min_runs: 5, rounds: 2,
            torch_baseline: false}}
variants: {{variants: []}}
energy: {{enabled: false}}
report: {{formats: [md]}}
"""


def setup(root: Path, teacher: Path) -> Path:
    shutil.copytree(teacher, root / "teacher")  # one folder for both runs (tokenizer training is not repeatable)
    write_csv(root / "data.csv", tiny_texts())
    (root / "p.yaml").write_text(PIPELINE)
    return root / "p.yaml"


def slot_epoch(out: Path) -> int:
    """The epoch of the KD student's per-epoch checkpoint (0 while there is none)."""
    for f in out.glob(".cache/students/*.progress/student_kd_seed0.pt"):
        try:
            return int(torch.load(f, weights_only=True)["epoch"])
        except Exception:  # noqa: BLE001 - replaced while we read it: try again
            return 0
    return 0


def students(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: torch.load(p, weights_only=True) for p in sorted((run_dir / "checkpoints").glob("student_*.pt"))}


def finished(out: Path) -> tuple[Path, dict]:
    (results,) = out.glob("tinytext/*/results.json")
    return results.parent, json.loads(results.read_text())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return tiny_bert_folder(tmp_path_factory.mktemp("teacher") / "teacher", layers=4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ref")
    out = kd2deploy("run", str(setup(root, teacher)), "--out", str(root / "runs"), cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    return finished(root / "runs")


def test_kill_9_mid_distillation_then_rerun_resumes_to_the_same_students(reference, teacher, tmp_path):
    pipeline, out = setup(tmp_path, teacher), tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "kd2deploy", "run", str(pipeline), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(tmp_path),
                            cwd=tmp_path)
    deadline = time.monotonic() + 600
    while (epoch := slot_epoch(out)) < 3:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the KD student never reached epoch 3"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not list(out.glob("tinytext/*/results.json"))

    again = kd2deploy("run", str(pipeline), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    run_dir, res = finished(out)
    assert "teacher" in res["run"]["reused"]  # the killed run had stored the fine-tuned teacher
    resumed = res["run"]["resumed"]["students"]["student kd/seed0"]
    assert epoch <= resumed < EPOCHS
    assert not list(out.glob(".cache/students/*.progress"))  # the checkpoints go once the stage is stored

    ref_dir, ref = reference
    a, b = students(run_dir), students(ref_dir)
    assert a.keys() == b.keys() == {"student_kd_seed0.pt", "student_scratch_seed0.pt"}
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name} {k}"
    assert res["distill"]["summary"] == ref["distill"]["summary"]

    # Nothing changed: a third run reuses teacher and students and trains nothing.
    third = kd2deploy("run", str(pipeline), "--out", str(out), cwd=tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "reused" in third.stderr and "student kd/seed0" not in third.stderr
