"""The targets as a user runs them: `kd2deploy run` with a loopback SSH target, `bench --target`, `targets check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_PIPELINE, cli_env


def kd2deploy(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd2deploy", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=cli_env(cwd))


def _pipeline(tmp_path: Path, sshd, **target_extra) -> Path:
    doc = yaml.safe_load(TINY_PIPELINE)
    doc["targets"] = [sshd.target(name="board-1", python=sys.executable, energy={"cpu_power_w": 4.0},
                                  batch_sizes=[1, 4], **target_extra)]
    doc["energy"]["window_s"] = 1.0
    return doc


def _runs(out: Path) -> set[Path]:
    return set((out / "tiny").iterdir()) if (out / "tiny").is_dir() else set()


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")  # shared: the second run reuses the teacher and students


def test_run_with_a_loopback_target(sshd, tmp_path, out):
    from tests.sshd import free_port

    doc = _pipeline(tmp_path, sshd)
    doc["targets"][0]["energy"].update(window_s=0.5, repeats=1)
    down = {**sshd.target(name="board-2", python=sys.executable), "ssh": f"{sshd.user}@127.0.0.1:{free_port()}"}
    doc["targets"].append(down)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    before = _runs(out)
    res = kd2deploy("run", str(p), "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = _runs(out) - before
    results = json.loads((run_dir / "results.json").read_text())
    t = results["targets"]["board-1"]
    assert t["status"] == "ok" and {m["name"] for m in t["models"]} >= {"teacher", "student"}
    shipped = results["ship"]["sha256"]
    assert next(m for m in t["models"] if m["name"] == "student")["sha256"] == shipped  # the file that ships
    assert t["settings"]["inputs"] == "real test inputs"
    assert t["energy"]["label"] == "modelled"
    assert results["targets"]["board-2"]["status"] == "missing"
    assert "connection refused" in results["targets"]["board-2"]["reason"]
    assert any("target board-2 is missing" in w for w in results["warnings"])
    head = results["headline"]
    assert head["target"] == "board-1" and head["text"].startswith("on board-1: student ")
    assert "board-1" in res.stderr  # the summary's headline line
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    for text in (md, html):
        assert "On target board-1" in text and "On target board-2" in text and "on board-1: student" in text
    assert "connection refused" in md
    # the results validate against the schema (kd2deploy report re-renders through it)
    again = kd2deploy("report", str(run_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    # compare puts targets side by side
    cmp_ = kd2deploy("compare", str(run_dir), str(run_dir), cwd=tmp_path)
    assert cmp_.returncode == 0 and "board-1" in cmp_.stdout, cmp_.stderr


def test_required_target_that_fails_stops_the_run_and_keeps_local_files(sshd, tmp_path, out):
    doc = _pipeline(tmp_path, sshd, required=True)
    doc["targets"][0]["identity_file"] = str(sshd.other_key)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    before = _runs(out)
    res = kd2deploy("run", str(p), "--out", str(out), cwd=tmp_path)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "target board-1:" in lines[0] and "refused the key" in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    (run_dir,) = _runs(out) - before
    for f in ("models/teacher.onnx", "models/student.onnx", "ship/student.onnx", "results.partial.json"):
        assert (run_dir / f).is_file(), f
    partial = json.loads((run_dir / "results.partial.json").read_text())
    assert partial["targets"]["board-1"]["status"] == "missing"


def test_targets_check_prints_the_facts(sshd, tmp_path):
    doc = _pipeline(tmp_path, sshd)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    res = kd2deploy("targets", "check", str(p), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for word in ("target board-1", "reachable", "cpu:", "python:", "onnxruntime 1.", "free disk:", "energy:"):
        assert word in res.stdout, word
    doc["targets"][0]["python"] = "/usr/bin/python3"  # no numpy, no onnxruntime
    p.write_text(yaml.safe_dump(doc))
    res = kd2deploy("targets", "check", str(p), cwd=tmp_path)
    assert res.returncode == 1 and "pip install numpy onnxruntime" in res.stdout


def test_bench_target(sshd, tmp_path):
    from tests.unit.test_bench_harness import make_mlp_onnx

    a, b = make_mlp_onnx(tmp_path / "big.onnx", hidden=256), make_mlp_onnx(tmp_path / "small.onnx", hidden=8)
    url = f"ssh://{sshd.address}"
    res = kd2deploy("bench", str(a), str(b), "-b", "1", "--min-duration-s", "0.05", "--min-runs", "10",
                    "--rounds", "2", "--target", url, "--identity-file", str(sshd.key), "--known-hosts",
                    str(sshd.known_hosts), "--python", sys.executable, "--json", str(tmp_path / "o.json"),
                    "--energy-window", "0.2", "--cpu-power-w", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "energy per inference at batch 1, modelled (cpu_power_w 3 W profile" in res.stdout
    assert "[1/4] big batch 1 round 1/2" in res.stderr  # progress streamed from the target
    assert "on target 127.0.0.1" in res.stderr and "p50 big / small at batch 1" in res.stdout
    doc = json.loads((tmp_path / "o.json").read_text())
    assert all(m["sha256_match"] for m in doc["models"])
    # by name from a pipeline file
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(_pipeline(tmp_path, sshd)))
    res = kd2deploy("bench", str(a), "--min-duration-s", "0.05", "--min-runs", "10", "--rounds", "1",
                    "--target", "board-1", "--pipeline", str(p), cwd=tmp_path)
    assert res.returncode == 0 and "on target board-1" in res.stderr, res.stderr
    res = kd2deploy("bench", str(a), "--target", "nope", "--pipeline", str(p), cwd=tmp_path)
    assert res.returncode == 2 and "allowed: board-1" in res.stderr


@pytest.mark.parametrize("url", ["ssh://root@x;touch /tmp/pwned", "ssh://$(touch /tmp/pwned)@h",
                                 "ssh://root@`touch /tmp/pwned`"])
def test_bench_target_with_shell_characters_is_refused(tmp_path, url):
    from tests.unit.test_bench_harness import make_mlp_onnx

    Path("/tmp/pwned").unlink(missing_ok=True)
    a = make_mlp_onnx(tmp_path / "a.onnx")
    res = kd2deploy("bench", str(a), "--target", url, cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --target"), res.stderr
    assert not Path("/tmp/pwned").exists()
