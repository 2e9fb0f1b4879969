"""The CLI as a user runs it: a tiny pipeline end to end, and bad input answered in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import TINY_PIPELINE


def kd2deploy(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd2deploy", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(cwd or ".")})


def test_version():
    out = kd2deploy("--version")
    assert out.returncode == 0 and re.fullmatch(r"kd2deploy \d+\.\d+\.\d+\s*", out.stdout)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("distill:\n  temprature: 2\n", r"p\.yaml:2:3 distill\.temprature: unknown key 'temprature'"),
        ("benchmark:\n  min_runs: lots\n", r"p\.yaml:2:13 benchmark\.min_runs: Input should be a valid integer"),
        ("data:\n  source: npz\n  path: missing.npz\n", r"p\.yaml:3:9 data\.path: file not found: .*missing\.npz"),
        ("teacher:\n  checkpoint: gone.pt\n", r"p\.yaml:2:15 teacher\.checkpoint: file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(write_pipeline, tmp_path, text, expected):
    p = write_pipeline(text)
    for cmd in (("validate", str(p)), ("run", str(p), "--out", str(tmp_path / "runs"))):
        out = kd2deploy(*cmd, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr + out.stdout
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
        assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists(), "nothing may be produced before the config is valid"


def test_missing_pipeline_file(tmp_path):
    out = kd2deploy("run", "nope.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "nope.yaml: pipeline file not found" in out.stderr


def test_tiny_pipeline_end_to_end(write_pipeline, tmp_path):
    p = write_pipeline(TINY_PIPELINE)
    out = kd2deploy("run", str(p), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wall time:" in out.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    for f in ("config.yaml", "pipeline.yaml", "run.log", "results.json", "report.md", "report.html",
              "models/teacher.onnx", "models/student.onnx", "checkpoints/teacher.pt", "energy/emissions.csv"):
        assert (run_dir / f).is_file(), f
    res = json.loads((run_dir / "results.json").read_text())
    assert res["schema_version"] == 1
    for name in ("teacher", "student", "student_scratch"):
        par = res["export"][name]["parity"]
        assert par["max_abs_diff"] <= 1e-4 and par["argmax_agreement"] == 1.0
        assert par["n_samples"] == res["data"]["n_test"]
    assert {a for a in res["distill"]["summary"]} == {"kd", "scratch"}
    assert len(res["distill"]["per_seed"]) == 2
    models = {(r["model"], r["batch_size"]) for r in res["benchmark"]["results"]}
    assert models == {(m, b) for m in ("teacher", "student", "teacher@torch-eager-cpu") for b in (1, 4)}
    for r in res["benchmark"]["results"]:
        assert r["runs"] >= 2 * 10 and r["p50_us"] <= r["p90_us"] <= r["p99_us"]
    energy = res["energy"]
    assert energy["label"] in ("measured", "modelled") and energy["explanation"]
    assert energy["models"]["teacher"]["j_per_inference_gross"]["mean"] > 0
    assert [t["label"] for t in energy["training"]] == ["train:teacher", "train:students"]
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert not re.search(r"""(src|href)=["']https?://""", html), "the report must be self-contained"
    assert res["headline"]["text"] in (run_dir / "report.md").read_text()
