"""Run folders never collide; artifacts are written atomically."""

from __future__ import annotations

import os

import pytest

from kd2deploy.errors import ConfigError
from kd2deploy.rundir import new_run_dir, write_atomic, write_json


def test_runs_started_in_the_same_second_get_distinct_folders(tmp_path):
    dirs = [new_run_dir(tmp_path, "edge") for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.parent == tmp_path / "edge" for d in dirs)


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "r.json"
    write_atomic(p, "old")
    write_atomic(p, "new")
    assert p.read_text() == "new" and os.listdir(tmp_path) == ["r.json"]
    assert (p.stat().st_mode & 0o777) != 0o600


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_folder_is_a_config_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(ConfigError, match="not writable|cannot create"):
        new_run_dir(ro, "edge")


def test_write_json_writes_standard_json(tmp_path):
    """JSON has no NaN or Infinity: such numbers (e.g. an overflowed parity difference) are written as null."""
    import json

    path = write_json(tmp_path / "r.json", {"inf": float("inf"), "xs": [float("nan"), 1.5, (2,)], "d": {"n": -1e400}})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard {c}")) == {
        "inf": None, "xs": [None, 1.5, [2]], "d": {"n": None}}
