"""Stage-cache keys and store, without training: what each key covers, atomic entries, --force names."""

from __future__ import annotations

import json
import shutil

import pytest

from kd2deploy.cache import StageCache, resolve_force, teacher_inputs
from kd2deploy.config import load_config
from kd2deploy.errors import ConfigError
from tests.conftest import TINY_PIPELINE


def keys(path, *overrides: str) -> tuple[str, str]:
    """The chained keys of the teacher and students stages (each covers its upstream stages' keys)."""
    from kd2deploy.engine.plan import plan_pipeline

    rows = {r.name: r.key for r in plan_pipeline(load_config(path, list(overrides)), cache=False)}
    return rows["teacher"], rows["students"]


def test_force_names():
    assert resolve_force(()) == frozenset()
    assert resolve_force(True) == resolve_force(["all"]) == {"teacher", "students"}
    assert resolve_force(["teacher"]) == {"teacher", "students"}, "the students' key includes the teacher's"
    assert resolve_force(["students"]) == {"students"}
    with pytest.raises(ConfigError, match=r"^--force 'techer': unknown stage; valid stages: teacher, students"):
        resolve_force(["techer"])


@pytest.mark.parametrize(
    "override, teacher_changes, students_change",
    [
        ("benchmark.batch_sizes=[1, 2]", False, False),
        ("energy.window_s=2", False, False),
        ("export.atol=0.001", False, False),
        ("report.max_accuracy_drop_pp=2", False, False),
        ("distill.temperature=4", False, True),
        ("distill.seeds=[0]", False, True),
        ("student.arch=mlp", False, True),
        ("teacher.train.epochs=2", True, True),
        ("seed=1", True, True),
        ("data.val_fraction=0.2", True, True),
        ("distill.labelled_fraction=0.5", True, True),
    ],
)
def test_keys_cover_what_each_stage_reads(write_pipeline, override, teacher_changes, students_change):
    p = write_pipeline(TINY_PIPELINE)
    t0, s0 = keys(p)
    t1, s1 = keys(p, override)
    assert (t1 != t0) == teacher_changes
    assert (s1 != s0) == students_change


def test_keys_follow_the_content_of_input_files(write_pipeline, tmp_path):
    model = tmp_path / "mine.py"
    model.write_text("from kd2deploy.models.nets import MLP\n\ndef build(input_shape, num_classes):\n"
                     "    return MLP(input_shape, num_classes)\n")
    p = write_pipeline(TINY_PIPELINE.replace("arch: cnn-small", "arch: mine.py:build"))
    t0, s0 = keys(p)
    model.write_text(model.read_text() + "# changed\n")
    t1, s1 = keys(p)
    assert t1 != t0 and s1 != s0
    assert teacher_inputs(load_config(p))["versions"].keys() >= {"kd2deploy", "torch"}


def test_store_is_atomic_and_a_failed_store_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "a.pt"
    src.write_bytes(b"weights")
    cache = StageCache(tmp_path / ".cache")
    entry = cache.store("teacher", "k" * 64, {"a.pt": src}, {"acc": 0.5}, {"seed": 0})
    assert entry is not None and cache.lookup("teacher", "k" * 64).record == {"acc": 0.5}
    assert sorted(p.name for p in (tmp_path / ".cache" / "teacher").iterdir()) == ["k" * 64]

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    assert cache.store("teacher", "f" * 64, {"a.pt": src}, {}, {}) is None
    assert sorted(p.name for p in (tmp_path / ".cache" / "teacher").iterdir()) == ["k" * 64], "no half entry"
    assert cache.lookup("teacher", "f" * 64) is None


def test_lookup_checks_every_file_and_force(tmp_path):
    src = tmp_path / "a.pt"
    src.write_bytes(b"weights")
    cache = StageCache(tmp_path / ".cache")
    entry = cache.store("teacher", "k" * 64, {"a.pt": src}, {}, {})
    assert StageCache(tmp_path / ".cache", frozenset({"teacher"})).lookup("teacher", "k" * 64) is None
    (entry.dir / "a.pt").write_bytes(b"weightz")
    assert cache.lookup("teacher", "k" * 64) is None
    (entry.dir / "a.pt").write_bytes(b"weights")
    meta = json.loads((entry.dir / "entry.json").read_text())
    assert cache.lookup("students", "k" * 64) is None  # another stage's folder
    meta["files"]["../escape.pt"] = "0" * 64
    (entry.dir / "entry.json").write_text(json.dumps(meta))
    assert cache.lookup("teacher", "k" * 64) is None
