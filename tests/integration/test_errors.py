"""The error table (docs/errors.md), one test per row, through the real CLI.

Each test checks the exit code (2 bad input, 1 a failure while running), that the answer is one ``error:`` line
naming the file, field or stage, that no traceback is printed, and that nothing produced before is lost: an
earlier run folder stays byte for byte, and a failed run keeps its config and ``results.partial.json``.
Most tests run the typer app in-process (fast); those that need a process of their own (a file-size limit, a
private mount namespace for a full or read-only file system) run ``python -m kd2deploy``.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kd2deploy.cli import app

# A pipeline that reaches every stage in a few seconds: one epoch, one seed, no variants, no energy.
MINI = """\
name: mini
teacher:
  arch: mlp-tiny
  train: {epochs: 1, batch_size: 256}
student:
  arch: mlp-tiny
distill:
  seeds: [0]
  controls: []
  train: {epochs: 1, batch_size: 256}
variants: {variants: []}
benchmark:
  batch_sizes: [1]
  torch_baseline: false
  warmup_s: 0
  warmup_runs: 1
  min_duration_s: 0.01
  min_runs: 5
  rounds: 1
energy: {enabled: false}
report: {formats: [md]}
"""


# ------------------------------------------------------------------------------------------------ helpers
def cli(*args: str | Path):
    """Runs ``kd2deploy ARGS`` in this process; stdout and stderr kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result, code: int, *patterns: str) -> str:
    """Asserts exit ``code``, no traceback, exactly one ``error:`` line matching every pattern; returns it.

    ``result`` is a CliRunner result or a finished subprocess.
    """
    out = result.stdout + result.stderr
    assert getattr(result, "exit_code", getattr(result, "returncode", None)) == code, out[-3000:]
    exc = getattr(result, "exception", None)
    assert exc is None or isinstance(exc, SystemExit), repr(exc)
    assert "Traceback" not in out
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for p in patterns:
        assert re.search(p, errors[0]), f"{p!r} not in {errors[0]!r}"
    return errors[0]


def kd2deploy(*args: str | Path, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """Runs the real entry point ``python -m kd2deploy`` in a process of its own."""
    env = {
        "COLUMNS": "250",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "CODECARBON_LOG_LEVEL": "error",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    return subprocess.run(
        [sys.executable, "-m", "kd2deploy", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env,
        **kwargs,
    )


class EarlierRun:
    """A finished run folder made before the failing command; it must survive byte for byte."""

    def __init__(self, runs: Path, name: str = "mini") -> None:
        self.dir = runs / name / "20200101-000000"
        (self.dir / "models").mkdir(parents=True)
        (self.dir / "results.json").write_text('{"schema_version": 1, "earlier": true}\n')
        (self.dir / "models" / "student.onnx").write_bytes(b"\x08\x07earlier model bytes")
        self.snapshot = self._files()

    def _files(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.dir)): p.read_bytes() for p in self.dir.rglob("*") if p.is_file()}

    def assert_intact(self) -> None:
        assert self._files() == self.snapshot, "an earlier run folder was changed"

    def new_runs(self) -> list[Path]:
        return sorted(p for p in self.dir.parent.iterdir() if p != self.dir)


@pytest.fixture
def mini(tmp_path) -> Path:
    p = tmp_path / "mini.yaml"
    p.write_text(MINI)
    return p


@pytest.fixture
def earlier(tmp_path) -> EarlierRun:
    return EarlierRun(tmp_path / "runs")


def assert_failed_run_kept_its_files(earlier: EarlierRun, *more: str) -> Path:
    """The failed run has its own folder with the config, the partial results and no temporary files."""
    earlier.assert_intact()
    (failed,) = earlier.new_runs()
    for f in ("config.yaml", "pipeline.yaml", "run.log", "results.partial.json", *more):
        assert (failed / f).is_file(), f
    assert not [p for p in failed.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    return failed


# ------------------------------------------------------------------------------- bad pipeline files (exit 2)
@pytest.mark.parametrize(
    "text, pattern",
    [
        ("distill:\n  seeds: [0, 1\n", r"p\.yaml:3:1: YAML syntax error: expected ',' or ']'"),
        ("distill:\n  temperature: -1\n", r"p\.yaml:2:16 distill\.temperature: Input should be greater than 0"),
        ("distill:\n  temperature: .inf\n", r"p\.yaml:2:16 distill\.temperature: inf is not allowed; numbers must be"),
        ("distill:\n  alpha: 1.5\n", r"p\.yaml:2:10 distill\.alpha: Input should be less than or equal to 1"),
        ("distill:\n  train: {batch_size: 0}\n", r"p\.yaml:2:23 distill\.train\.batch_size: .*greater than 0"),
        ("student:\n  arch: resnet9000\n", r"student\.arch: unknown model 'resnet9000'; valid names: cnn-large, "),
        ("distill:\n  loss: magic\n", r"distill\.loss: unknown loss 'magic'; valid names: .*hinton"),
        ("data:\n  source: imagenet\n", r"data\.source: unknown dataset 'imagenet'; valid names: .*sklearn-digits"),
        ("benchmark:\n  backends: [cuda]\n", r"benchmark\.backends: unknown backend 'cuda'; valid names: .*onnxrun"),
        ("student:\n  arch: nets/mine.py:build\n", r"p\.yaml:2:9 student\.arch: file not found: .*nets/mine\.py"),
    ],
    ids=[
        "yaml-syntax",
        "negative-temperature",
        "infinite-temperature",
        "alpha-above-1",
        "batch-size-0",
        "unknown-model",
        "unknown-loss",
        "unknown-dataset",
        "unknown-backend",
        "missing-user-model-file",
    ],
)
def test_bad_pipeline_is_one_line_exit_2_before_any_work(tmp_path, text, pattern):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    for cmd in ("validate", "run"):
        one_error_line(cli(cmd, p, "--out", tmp_path / "runs") if cmd == "run" else cli(cmd, p), 2, pattern)
    assert not (tmp_path / "runs").exists(), "nothing may be produced before the config is valid"


def test_bad_set_override_names_the_override(mini, tmp_path):
    one_error_line(
        cli("run", mini, "--out", tmp_path / "runs", "--set", "distill.alpha=-0.5"),
        2,
        r"^error: --set distill\.alpha=-0\.5: distill\.alpha: Input should be greater than or equal to 0",
    )
    assert not (tmp_path / "runs").exists()
    from kd2deploy.errors import ConfigError

    debug = cli("--debug", "run", mini, "--out", tmp_path / "runs", "--set", "distill.alpha=-0.5")
    assert isinstance(debug.exception, ConfigError), "--debug re-raises, so the traceback is shown"


# ---------------------------------------------------------------------- bad input found while running (exit 2)
def _write_npz(path: Path, **change) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((60, 1, 8, 8), dtype=np.float32),
        "y_train": np.arange(60) % 3,
        "x_test": rng.random((20, 1, 8, 8), dtype=np.float32),
        "y_test": np.arange(20) % 3,
    }
    np.savez(path, **{**arrays, **change})
    return path


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"y_train": np.arange(45) % 3}, r"bad\.npz: x_train has 60 samples but y_train has 45; they must match"),
        ({"y_train": (np.arange(60) % 3).astype(np.float32)}, r"bad\.npz: y_train has dtype float32; expected int"),
        (
            {"x_train": np.zeros((0, 1, 8, 8), np.float32), "y_train": np.zeros(0, np.int64)},
            r"bad\.npz: x_train is empty",
        ),
    ],
    ids=["mismatched-lengths", "wrong-dtype", "empty"],
)
def test_bad_npz_data(mini, tmp_path, earlier, change, pattern):
    data = _write_npz(tmp_path / "bad.npz", **change)
    res = cli("run", mini, "--out", tmp_path / "runs", "--set", "data.source=npz", "--set", f"data.path={data}")
    one_error_line(res, 2, pattern)
    assert_failed_run_kept_its_files(earlier)


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"y_train": (np.arange(60) % 3)[:, None]}, r"y_train has shape \(60, 1\); expected one class index"),
        ({"x_test": np.zeros(20, np.float32)}, r"x_test has shape \(20,\); expected \(samples, features"),
    ],
)
def test_npz_arrays_of_the_wrong_rank_are_named(tmp_path, change, pattern):
    from kd2deploy.config import DataConfig
    from kd2deploy.data import load_data
    from kd2deploy.errors import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        load_data(DataConfig(source="npz", path=_write_npz(tmp_path / "d.npz", **change)), seed=0)


def test_corrupt_checkpoint(mini, tmp_path, earlier):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a torch checkpoint")
    res = cli("run", mini, "--out", tmp_path / "runs", "--set", f"teacher.checkpoint={bad}")
    one_error_line(res, 2, re.escape(str(bad)), r"teacher\.checkpoint is not a readable PyTorch state_dict")
    assert_failed_run_kept_its_files(earlier)


def test_checkpoint_with_another_number_of_classes(mini, tmp_path, earlier):
    import torch

    from kd2deploy.models import build_model

    ckpt = tmp_path / "five.pt"
    torch.save(build_model("mlp-tiny", (1, 8, 8), 5, {}, "teacher").state_dict(), ckpt)
    res = cli("run", mini, "--out", tmp_path / "runs", "--set", f"teacher.checkpoint={ckpt}")
    one_error_line(
        res,
        2,
        re.escape(str(ckpt)),
        r"teacher\.checkpoint does not fit teacher\.arch",
        r"different number of classes",
        r"\[5, 32\].*\[10, 32\]",
    )
    assert_failed_run_kept_its_files(earlier)


def test_user_model_with_the_wrong_output_width(mini, tmp_path, earlier):
    (tmp_path / "wide.py").write_text(
        "import torch.nn as nn\n\n\ndef build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes + 3))\n"
    )
    res = cli("run", mini, "--out", tmp_path / "runs", "--set", "teacher.arch=wide.py:build")
    one_error_line(
        res,
        2,
        r"teacher\.arch '.*wide\.py:build': the model outputs shape \(2, 13\), but the data has "
        r"10 classes",
    )
    assert_failed_run_kept_its_files(earlier)


# -------------------------------------------------------------------------------- failures while running (1)
def test_nan_loss_stops_the_run_naming_model_and_epoch(mini, tmp_path, earlier):
    """The training loop's guard, for the teacher (students: test_distill_cli.py, unit: test_distill_batched.py)."""
    res = cli("run", mini, "--out", tmp_path / "runs", "--set", "teacher.train.lr=1e30")
    one_error_line(
        res,
        1,
        r"^error: teacher: the training loss became (nan|inf) in epoch 1; kept the weights",
        r"checkpoints/teacher\.last_good\.pt",
    )
    assert_failed_run_kept_its_files(earlier, "checkpoints/teacher.last_good.pt")


def test_required_backend_that_is_unavailable_stops_before_training(mini, tmp_path, earlier):
    """Checked right after the data loads: exit 2, nothing trained, the run folder keeps what it had."""
    from kd2deploy.bench.backends import BACKENDS

    missing = next(
        (n for n in BACKENDS if BACKENDS.get(n).model_format == "onnx" and not BACKENDS.get(n).available()[0]), None
    )
    if missing is None:
        pytest.skip("every ONNX backend is available on this machine")
    res = cli(
        "run",
        mini,
        "--out",
        tmp_path / "runs",
        "--set",
        f"benchmark.backends=[onnxruntime-cpu, {missing}]",
        "--set",
        "benchmark.required=true",
    )
    one_error_line(res, 2, rf"^error: benchmark\.backends: {missing} is unavailable here \(.*nothing was trained")
    failed = assert_failed_run_kept_its_files(earlier)
    assert not (failed / "checkpoints").exists()
    assert '"data"' in (failed / "results.partial.json").read_text()


# ------------------------------------------------------------------------------------------- kd2deploy bench
def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_bench_corrupt_onnx_file(tmp_path, kind):
    good = _tiny_onnx(tmp_path / "good.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes({"garbage": b"\x00\xffnot onnx at all", "truncated": good.read_bytes()[:30], "empty": b""}[kind])
    out = tmp_path / "bench.json"
    out.write_text("earlier results\n")
    res = cli("bench", good, bad, "--min-runs", "5", "--min-duration-s", "0.01", "--rounds", "1", "--json", out)
    one_error_line(res, 2, r"^error: .*bad\.onnx: onnxruntime cannot load this file as an ONNX model: ")
    assert out.read_text() == "earlier results\n", "a failed bench must not touch an earlier --json file"


def test_bench_backend_that_is_unavailable(tmp_path):
    from kd2deploy.bench.backends import BACKENDS

    missing = next(
        (n for n in BACKENDS if BACKENDS.get(n).model_format == "onnx" and not BACKENDS.get(n).available()[0]), None
    )
    if missing is None:
        pytest.skip("every ONNX backend is available on this machine")
    res = cli("bench", _tiny_onnx(tmp_path / "m.onnx"), "--backend", missing)
    one_error_line(res, 1, rf"^error: backend '{missing}' is not available here: ")


# ----------------------------------------------------------------------------- output folder and disk (exit 1, 2)
def _private_mount(tmp_path: Path, script: str, *args: str | Path) -> subprocess.CompletedProcess:
    """Runs ``sh -c script`` in a private mount namespace (``unshare -rm``), so a tmpfs mounted there is seen
    by nothing else and vanishes with the process; skips where user namespaces are not allowed."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare, "-rm", "true"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no private mount namespace here (unshare -rm failed), so no tmpfs to fill or mount read-only")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "COLUMNS": "250",
        "CODECARBON_LOG_LEVEL": "error",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    return subprocess.run(
        [unshare, "-rm", "sh", "-c", script, "sh", sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=env,
    )


def test_output_folder_under_a_file(mini, tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    one_error_line(
        cli("run", mini, "--out", tmp_path / "afile" / "runs"),
        2,
        r"^error: --out .*afile/runs: cannot create the run folder \(Not a directory\)",
    )
    assert (tmp_path / "afile").read_text() == "not a folder\n"


def test_output_folder_not_writable(mini, tmp_path):
    if os.geteuid() != 0:  # a read-only folder stops everyone but root
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            one_error_line(cli("run", mini, "--out", ro), 2, r"^error: --out .*ro: (the output folder|cannot create)")
        finally:
            ro.chmod(0o700)
        return
    # root writes into read-only folders: use a read-only file system instead
    proc = _private_mount(
        tmp_path,
        'mkdir -p "$3" && mount -t tmpfs -o ro,size=64k tmpfs "$3" || exit 77\n'
        'exec "$1" -m kd2deploy run "$2" --out "$3/runs"',
        mini,
        tmp_path / "ro",
    )
    if proc.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {proc.stderr.strip()}")
    one_error_line(proc, 2, r"^error: --out .*ro/runs: cannot create the run folder \(read-only file system\)")


FILL_AND_RUN = """
set -u
out="$3"
mkdir -p "$out"
mount -t tmpfs -o size=96k tmpfs "$out" || exit 77
mkdir -p "$out/runs/mini/20200101-000000" && echo earlier > "$out/runs/mini/20200101-000000/results.json"
if [ "$4" = full ]; then dd if=/dev/zero of="$out/filler" bs=4k 2>/dev/null; fi
"$1" -m kd2deploy run "$2" --out "$out/runs"; rc=$?
echo "EARLIER=$(cat "$out/runs/mini/20200101-000000/results.json")"
for d in "$out"/runs/mini/2*; do echo "RUN $(basename "$d"): $(cd "$d" && find . -type f | sort | tr '\\n' ' ')"; done
exit $rc
"""


PROGRESS_CHECKPOINT = r"\.cache/teacher/[0-9a-f]{64}\.progress/teacher\.pt"


@pytest.mark.parametrize("when", ["full-from-the-start", "fills-during-the-run"])
def test_disk_full(mini, tmp_path, when):
    """ENOSPC on a real (private, 96 KiB) tmpfs: at the first file, or at the teacher's first per-epoch checkpoint."""
    mini.write_text(MINI.replace("arch: mlp-tiny\n  train", "arch: mlp\n  train", 1))
    proc = _private_mount(tmp_path, FILL_AND_RUN, mini, tmp_path / "disk", "full" if when.startswith("full") else "")
    if proc.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {proc.stderr.strip()}")
    # during the run, the first big file is the teacher's per-epoch resume checkpoint
    which = r"mini/\d{8}-\d{6}/config\.yaml" if when.startswith("full") else PROGRESS_CHECKPOINT
    one_error_line(
        proc,
        1,
        rf"^error: .*disk/runs/{which}: cannot write this file: "
        r"no space left on the device .*it was not written, and files written before it are "
        r"intact$",
    )
    assert "EARLIER=earlier" in proc.stdout, "the earlier run folder must survive"
    runs = dict(re.findall(r"^RUN (\S+): (.*)$", proc.stdout, re.M))
    assert runs.pop("20200101-000000").split() == ["./results.json"]
    (files,) = runs.values()
    assert ".tmp" not in files, files
    if not when.startswith("full"):
        assert {"./config.yaml", "./pipeline.yaml", "./run.log", "./results.partial.json"} <= set(files.split())


def test_file_size_limit(mini, tmp_path, earlier):
    """EFBIG from RLIMIT_FSIZE (works without mount rights): the teacher's first resume checkpoint is refused."""
    mini.write_text(MINI.replace("arch: mlp-tiny\n  train", "arch: mlp\n  train", 1))

    def limit() -> None:  # in the child only; SIGXFSZ ignored so that write() fails with EFBIG instead
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32_000, 32_000))

    proc = kd2deploy("run", mini, "--out", tmp_path / "runs", cwd=tmp_path, preexec_fn=limit)
    one_error_line(
        proc,
        1,
        rf"^error: .*runs/{PROGRESS_CHECKPOINT}: cannot write this file: "
        r"file too large .*files written before it are intact$",
    )
    assert_failed_run_kept_its_files(earlier)


# ----------------------------------------------------------------------------------------- the error handler
def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch):
    import typer

    from kd2deploy import cli as cli_module

    bug = typer.Typer()

    @bug.command()
    @cli_module.handle_errors
    def boom() -> None:
        raise KeyError("[bold]not markup[/bold]\nsecond line")

    res = CliRunner().invoke(bug, [])
    one_error_line(
        res,
        1,
        r"^error: unexpected KeyError: '\[bold\]not markup\[/bold\]\\nsecond line' \(a bug in "
        r"kd2deploy; run with --debug for the traceback\)$",
    )
    monkeypatch.setattr(cli_module, "_debug", True)
    res = CliRunner().invoke(bug, [])
    assert isinstance(res.exception, KeyError), "--debug re-raises with the traceback"


def test_write_atomic_maps_write_errors_and_keeps_the_old_file(tmp_path):
    """A unit check of the mapping behind the disk rows: the old file stays, no temporary file is left."""
    code = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from kd2deploy.rundir import write_atomic\n"
        "from kd2deploy.errors import StageError\n"
        "p = Path(sys.argv[1]); write_atomic(p, 'old')\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        "    write_atomic(p, 'x' * 5000)\n"
        "except StageError as e:\n"
        "    print(e)\n"
    )
    target = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"{target}: cannot write this file: file too large (a file-size limit or the file "
        "system's maximum); it was not written, and files written before it are intact"
    )
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]
