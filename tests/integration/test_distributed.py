"""Training under torchrun with 2 CPU processes (gloo) gives the single-process result, writes one set of files,
and a killed rank stops the whole run with one clear line; the same command then resumes and finishes.

Tolerance (stated in docs/distributed.md): per seed and arm, test accuracy equal to the single-process run within one
flipped test prediction (1/360), final training loss within 1e-4 and weights within 1e-4. The summed gradient is
the single-process gradient up to float summation order, so in practice they agree to ~1e-7. The student is an
MLP: with batch norm each rank normalises with its own slice's statistics (as DDP without SyncBatchNorm does),
which is a different (equally valid) computation, not the single-process one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import cli_env

PIPELINE = """\
version: 1
name: tinyd
seed: 0
teacher:
  arch: mlp
  kwargs: {{hidden: [64], dropout: 0.0}}
  train: {{epochs: 3, batch_size: 128, lr: 0.01}}
student:
  arch: mlp-tiny
distill:
  seeds: [0, 1]
  controls: [scratch]
  train: {{epochs: {epochs}, batch_size: 50, lr: 0.01}}
export: {{dynamo: false}}
benchmark:
  batch_sizes: [1]
  torch_baseline: false
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


def run(pipeline: Path, out: Path, *extra: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd2deploy", "run", str(pipeline), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, env=cli_env(out.parent, **(env_extra or {})))


def write(tmp_path: Path, epochs: int) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(PIPELINE.format(epochs=epochs))
    return p


def results(out: Path) -> list[Path]:
    return sorted(out.glob("tinyd/*/results.json"))


def test_two_processes_match_one_and_write_one_set_of_files(tmp_path):
    pipeline = write(tmp_path, 6)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run(pipeline, one)
    assert r1.returncode == 0, r1.stdout + r1.stderr
    r2 = run(pipeline, two, "--nproc", "2")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "2 training processes, gloo" in r2.stderr
    # one set of artifacts: one run folder, one results.json, one report, one set of ONNX files
    assert len(list(two.glob("tinyd/*"))) == 1
    [res_path] = results(two)
    run_dir = res_path.parent
    assert sorted(p.name for p in run_dir.glob("report.*")) == ["report.html", "report.md"]
    res = json.loads(res_path.read_text())
    assert sorted(p.name for p in (run_dir / "models").glob("*.onnx")) == sorted(
        f"{name}.onnx" for name in res["export"])  # student_scratch only when the scratch student does not ship
    assert {"student.onnx", "teacher.onnx"} <= {p.name for p in (run_dir / "models").glob("*.onnx")}
    assert not list(two.rglob("results.partial.json"))
    a = json.loads(results(one)[0].read_text())
    b = json.loads(res_path.read_text())
    assert b["run"]["distributed"]["world_size"] == 2 and b["run"]["distributed"]["backend"] == "gloo"
    assert a["run"]["distributed"]["world_size"] == 1
    n_test = a["data"]["n_test"]
    for sa, sb in zip(a["distill"]["per_seed"], b["distill"]["per_seed"], strict=True):
        for arm in ("kd", "scratch"):
            assert abs(sa[arm]["test_accuracy"] - sb[arm]["test_accuracy"]) <= 1 / n_test + 1e-9
            assert abs(sa[arm]["curve"][-1]["train_loss"] - sb[arm]["curve"][-1]["train_loss"]) < 1e-4
    assert abs(a["models"]["teacher"]["test_accuracy_torch"] - b["models"]["teacher"]["test_accuracy_torch"]) \
        <= 1 / n_test + 1e-9
    for f in sorted((results(one)[0].parent / "checkpoints").glob("student_*.pt")):
        wa, wb = torch.load(f, weights_only=True), torch.load(run_dir / "checkpoints" / f.name, weights_only=True)
        for k in wa:
            assert torch.allclose(wa[k], wb[k], atol=1e-4), (f.name, k)


def test_killed_rank_stops_the_run_and_the_same_command_resumes(tmp_path):
    pipeline = write(tmp_path, 30)
    out = tmp_path / "out"
    # rank 1 SIGKILLs itself at its 300th all-reduce (teacher 30 steps, then ~11 student epochs of 24 steps)
    r = run(pipeline, out, "--nproc", "2", env_extra={"KD2DEPLOY_TEST_DIE_AFTER_STEPS": "1:300"})
    assert r.returncode != 0
    errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stdout + r.stderr
    assert "rank 1 of 2 stopped (killed by SIGKILL)" in errors[0]
    assert "last good checkpoint is kept" in errors[0] and "run the same command again" in errors[0]
    assert "Traceback" not in r.stdout + r.stderr
    assert list(out.glob(".cache/students/*.progress/stack_*.pt")), "no resume checkpoint was kept"
    assert not results(out)
    again = run(pipeline, out, "--nproc", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    [res_path] = results(out)
    res = json.loads(res_path.read_text())
    resumed = res["run"]["resumed"]["students"]
    assert 0 < min(resumed.values()) < 30
    assert all(len(s["kd"]["curve"]) == 30 for s in res["distill"]["per_seed"])


COLLECTIVES = """\
import sys
import torch
from kd2deploy.distill import dist

ctx = dist.init()
assert ctx.active and ctx.world_size == 2 and ctx.backend == sys.argv[1], (ctx.backend, sys.argv[1])
device = torch.device("cpu")
layer = torch.nn.Linear(3, 2).to(device)
for p in layer.parameters():
    p.grad = torch.full_like(p, float(ctx.rank + 1))
loss = dist.all_reduce_grads(layer.parameters(), extra=torch.tensor(float(ctx.rank), device=device))
assert all(torch.all(p.grad == 3.0) for p in layer.parameters()), "gradients not summed over 2 ranks"
assert float(loss) == 1.0
buf = torch.full((4,), float(2 * ctx.rank), device=device)
dist.average_buffers([buf])
assert torch.all(buf == 1.0), buf
assert dist.broadcast_object({"from": ctx.rank}) == {"from": 0}
dist.barrier()
dist.cleanup()
print(f"rank {ctx.rank} ok")
"""


def test_collectives_use_gloo_even_where_cuda_is_available(tmp_path):
    """kd2deploy's collectives (gradient all-reduce, buffer averaging, object broadcast) under torchrun.

    Training tensors stay on the CPU, so the backend is gloo on every machine: on a GPU machine (CUDA available)
    this is the test that NCCL, which cannot reduce CPU tensors, is not chosen.
    """
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), "gloo"], capture_output=True, text=True, timeout=300,
                         env=cli_env(tmp_path))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "rank 0 ok" in res.stdout and "rank 1 ok" in res.stdout
