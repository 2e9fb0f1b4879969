"""Reruns and the stage cache on the tiny pipeline: what is unchanged is reused, what changed is recomputed, and a
damaged cache entry is rebuilt instead of used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY_PIPELINE
from tests.integration.test_cli import kd2deploy

# the tiny pipeline without energy windows and variants: the cache tests run it several times
FAST = TINY_PIPELINE.replace("energy:\n  window_s: 1.0\n  repeats: 1\n",
                             "energy:\n  enabled: false\nvariants:\n  variants: []\n")


def run(pipeline: Path, out: Path, *overrides: str, force=()) -> tuple[Path, dict]:
    from kd2deploy.config import load_config
    from kd2deploy.pipeline import run_pipeline

    r = run_pipeline(load_config(pipeline, list(overrides)), out, source=pipeline, force=force)
    return r.dir, json.loads((r.dir / "results.json").read_text())


def reused(res: dict) -> set[str]:
    return set(res["run"]["reused"])


def trained(run_dir: Path) -> set[str]:
    """Stages that trained in this run: run.log names each stage that was reused instead."""
    log = (run_dir / "run.log").read_text()
    assert "stage teacher started" in log
    return {s for s in ("teacher", "students") if f"stage {s} reused cache entry" not in log}


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> tuple[Path, dict]:
    """One run of the fast pipeline: its pipeline file and --out folder (with the cache), and its results."""
    root = tmp_path_factory.mktemp("cached")
    p = root / "p.yaml"
    p.write_text(FAST)
    _, res = run(p, root / "runs")
    return root, res


def copy_of(cached, tmp_path) -> tuple[Path, Path]:
    """A copy of the cached run's pipeline file and --out folder: (pipeline, out)."""
    shutil.copytree(cached[0], tmp_path / "copy")
    return tmp_path / "copy" / "p.yaml", tmp_path / "copy" / "runs"


def test_rerun_reuses_both_stages_with_identical_results(write_pipeline, tmp_path):
    from kd2deploy.report.schema import validate_results

    p = write_pipeline(TINY_PIPELINE)
    out = tmp_path / "runs"
    first_dir, first = run(p, out)
    assert reused(first) == set() and trained(first_dir) == {"teacher", "students"}
    second_dir, second = run(p, out)
    assert reused(second) == {"teacher", "students"} and trained(second_dir) == set()
    validate_results(second)
    for stage, r in second["run"]["reused"].items():
        assert r["from"] == str(out / ".cache" / stage / r["key"]) and Path(r["from"], "entry.json").is_file()
    # identical models: accuracies, ONNX parity figures and even the exported files
    assert second["models"]["teacher"]["test_accuracy_torch"] == first["models"]["teacher"]["test_accuracy_torch"]
    assert second["distill"]["per_seed"] == first["distill"]["per_seed"]
    assert second["export"].keys() == first["export"].keys() >= {"teacher", "student"}
    for name in first["export"]:  # student_scratch is not exported again when the scratch student ships
        assert second["export"][name]["parity"] == first["export"][name]["parity"]
        assert second["export"][name]["sha256"] == first["export"][name]["sha256"]
    for ckpt in (first_dir / "checkpoints").iterdir():
        assert (second_dir / "checkpoints" / ckpt.name).read_bytes() == ckpt.read_bytes()
    # training energy is not counted again
    training = second["energy"]["training"]
    assert [t["label"] for t in training] == ["train:teacher", "train:students"]
    assert all(t["reused"] and t["energy_kwh"] is None for t in training)
    assert second["models"]["teacher"]["energy"]["note"] == "reused (trained in an earlier run)"
    md = (second_dir / "report.md").read_text()
    assert md.count("reused (trained in an earlier run)") == 2
    assert "reused from the stage cache (not recomputed): teacher (entry " in md and "), students (entry " in md
    assert "<dt>reused</dt><dd>from the stage cache (not recomputed): teacher (entry " in (
        second_dir / "report.html").read_text()
    assert "reused" not in (first_dir / "report.md").read_text()


def test_an_ensemble_teacher_is_rebuilt_member_by_member(write_pipeline, tmp_path):
    p = write_pipeline(FAST.replace("teacher:\n  arch: cnn-small\n",
                                    "teacher:\n  arch: mlp-tiny\n  ensemble: [{seed: 1}, {seed: 2}]\n"))
    first_dir, first = run(p, tmp_path / "runs")
    second_dir, second = run(p, tmp_path / "runs")
    assert reused(second) == {"teacher", "students"}
    assert sorted(f.name for f in (second_dir / "checkpoints").glob("teacher*")) == ["teacher_member0.pt",
                                                                                     "teacher_member1.pt"]
    assert second["models"]["teacher"]["members"] == first["models"]["teacher"]["members"]
    assert second["export"]["teacher"]["sha256"] == first["export"]["teacher"]["sha256"]
    assert second["export"]["teacher"]["parity"] == first["export"]["teacher"]["parity"]


def test_what_a_stage_does_not_read_does_not_invalidate_it(cached, tmp_path):
    p, out = copy_of(cached, tmp_path)
    _, res = run(p, out, "benchmark.batch_sizes=[1, 2]")
    assert reused(res) == {"teacher", "students"}
    d, res = run(p, out, "distill.temperature=4")
    assert reused(res) == {"teacher"} and trained(d) == {"students"}
    assert res["distill"]["temperature"] == 4
    d, res = run(p, out, "teacher.train.epochs=2")
    assert reused(res) == set() and trained(d) == {"teacher", "students"}


def test_force_teacher_on_the_command_line_retrains_both(cached, tmp_path):
    p, out = copy_of(cached, tmp_path)
    proc = kd2deploy("run", str(p), "--out", str(out), "--force", "teacher", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    newest = sorted((out / "tiny").iterdir())[-1]
    res = json.loads((newest / "results.json").read_text())
    assert reused(res) == set() and trained(newest) == {"teacher", "students"}
    assert "cache: teacher forced" in (newest / "run.log").read_text()
    _, res = run(p, out)  # the recomputed entries replaced the old ones and are used again
    assert reused(res) == {"teacher", "students"}
    _, res = run(p, out, force={"students"})
    assert reused(res) == {"teacher"}


def test_unknown_force_stage_is_one_line_before_any_work(write_pipeline, tmp_path):
    p = write_pipeline(FAST)
    proc = kd2deploy("run", str(p), "--out", str(tmp_path / "runs"), "--force", "techer", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --force 'techer': unknown stage; valid stages: teacher, students "
                                   "(--force alone recomputes every cached stage)")
    proc = kd2deploy("run", str(p), "--out", str(tmp_path / "runs"), "teacher", cwd=tmp_path)
    assert proc.returncode == 2 and "stage names follow --force" in proc.stderr
    assert not (tmp_path / "runs").exists()


def _missing_checkpoint(entry: Path) -> None:
    (entry / "teacher.pt").unlink()


def _truncated_checkpoint(entry: Path) -> None:
    data = (entry / "teacher.pt").read_bytes()
    (entry / "teacher.pt").write_bytes(data[: len(data) // 2])


def _half_entry_json(entry: Path) -> None:
    text = (entry / "entry.json").read_text()
    (entry / "entry.json").write_text(text[: len(text) // 2])


def _no_entry_json(entry: Path) -> None:
    (entry / "entry.json").unlink()


def _temp_folder_left_behind(entry: Path) -> None:
    """A run that crashed while storing: its temporary folder holds a half entry, the key's folder is absent."""
    shutil.move(entry, entry.parent / f".tmp-{entry.name[:12]}-crashed")
    (entry.parent / f".tmp-{entry.name[:12]}-crashed" / "entry.json").write_text('{"format": 1, "st')


def _state_dict_of_another_model(entry: Path) -> None:
    """Intact files (sha256 updated) whose weights no longer fit the architecture."""
    import hashlib

    import torch

    torch.save({"weight": torch.zeros(3)}, entry / "teacher.pt")
    meta = json.loads((entry / "entry.json").read_text())
    meta["files"]["teacher.pt"] = hashlib.sha256((entry / "teacher.pt").read_bytes()).hexdigest()
    (entry / "entry.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_missing_checkpoint, _truncated_checkpoint, _half_entry_json, _no_entry_json,
                                    _temp_folder_left_behind, _state_dict_of_another_model],
                         ids=lambda f: f.__name__.strip("_").replace("_", "-"))
def test_a_damaged_cache_entry_is_ignored_and_rebuilt(cached, tmp_path, damage):
    from kd2deploy.cache import StageCache

    p, out = copy_of(cached, tmp_path)
    first = cached[1]
    (entry,) = (out / ".cache" / "teacher").iterdir()
    damage(entry)
    d, res = run(p, out)
    assert reused(res) == {"students"} and trained(d) == {"teacher"}
    if damage is not _temp_folder_left_behind:
        assert "is not usable" in (d / "run.log").read_text()
    assert res["models"]["teacher"]["test_accuracy_torch"] == first["models"]["teacher"]["test_accuracy_torch"]
    assert StageCache(out / ".cache").lookup("teacher", entry.name) is not None, "the entry was rebuilt"
