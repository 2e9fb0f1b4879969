"""The CLI as a user runs it: a tiny pipeline end to end, and bad input answered in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import TINY_PIPELINE, cli_env


def kd2deploy(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd2deploy", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=1200, env=cli_env(cwd or "."))


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
    # the scratch control is exported on its own unless it is the shipped student (chosen on validation)
    scratch = ["student_scratch"] if res["distill"]["shipped_arm"] != "scratch" else []
    assert sorted(res["export"]) == sorted(["teacher", "student", *scratch])
    for name in ("teacher", "student", *scratch):
        par = res["export"][name]["parity"]
        assert par["max_abs_diff"] <= 1e-4 and par["argmax_agreement"] == 1.0
        assert par["n_samples"] == res["data"]["n_test"]
    assert {a for a in res["distill"]["summary"]} == {"kd", "scratch"}
    assert len(res["distill"]["per_seed"]) == 2
    variant = "int8-static-qdq-minmax"  # the default variant, made of teacher and student
    models = {(r["model"], r["batch_size"]) for r in res["benchmark"]["results"]}
    timed = ("teacher", "student", "teacher@torch-eager-cpu", f"teacher.{variant}", f"student.{variant}")
    assert models == {(m, b) for m in timed for b in (1, 4)} | {("teacher@aa", 1), ("student@aa", 1)}
    for model in ("teacher", "student"):
        entry = res["variants"][model]
        (v,) = entry["variants"]
        assert (run_dir / "models" / "variants" / v["path"]).is_file() and v["label"] == f"{model}.{variant}"
        assert v["parity"]["n_samples"] == res["data"]["n_test"] and 0 < v["accuracy"] <= 1
        sel = entry["selection"]
        assert sel["shipped"] in (model, v["label"]) and sel["reason"]
        assert {r["name"] for r in sel["rejected"]} == {model, v["label"]} - {sel["shipped"]}
    ship = res["ship"]
    assert ship["model"] == res["variants"]["student"]["selection"]["shipped"]
    assert ship["source_sha256"] == (res["export"]["student"]["sha256"] if ship["variant"] is None
                                     else res["variants"]["student"]["variants"][0]["sha256"])
    assert (run_dir / "ship" / "student.onnx").is_file() and (run_dir / "ship" / "MODEL_CARD.md").is_file()
    for r in res["benchmark"]["results"]:
        assert r["runs"] >= 2 * 10 and r["p50_us"] <= r["p90_us"] <= r["p99_us"]
    energy = res["energy"]
    assert energy["label"] in ("measured", "modelled") and energy["explanation"]
    assert energy["models"]["teacher"]["j_per_inference_gross"]["mean"] > 0
    assert [t["label"] for t in energy["training"]] == ["train:teacher", "train:students"]
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert not re.search(r"""(src|href)=["']https?://""", html), "the report must be self-contained"
    md = (run_dir / "report.md").read_text()
    assert res["headline"]["text"] in md
    assert "## Compressed variants and the shipping guard" in md and f"student.{variant}" in md

    rerendered = kd2deploy("report", str(run_dir), "--format", "md", cwd=tmp_path)
    assert rerendered.returncode == 0, rerendered.stderr[-2000:]
    assert (run_dir / "report.md").read_text() == md
    cmp = kd2deploy("compare", str(run_dir), str(run_dir), cwd=tmp_path)
    assert cmp.returncode == 0 and "configurations are identical" in cmp.stdout
