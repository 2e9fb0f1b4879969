"""The README's claims that can be checked: every test it cites exists; the CPU install is documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# docs/ pages are checked too once the README is split into them
TEXTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _test_functions() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        out[path.stem] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return out


def test_every_cited_test_exists():
    """The error table cited `test_errors::test_required_backend_that_is_unavailable_keeps_what_was_made`,
    which never existed; a citation must name a real test function."""
    tests = _test_functions()
    cited = []
    for text in TEXTS:
        cited += re.findall(r"(test_\w+)::(test_\w+)", text.read_text())
    assert cited, "the README cites no tests: the pattern is wrong"
    missing = sorted({f"{m}::{f}" for m, f in cited if f not in tests.get(m, set())})
    assert not missing, f"cited tests that do not exist: {missing}"


def test_cpu_torch_install_is_documented():
    readme = (ROOT / "README.md").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in readme
    assert "pins torch to the 2.13.0 CPU build" not in readme  # it pins the version; the build comes from an index


def test_generated_caches_are_ignored_and_untracked():
    """`.cache/matplotlib/fontlist-*.json` was committed once; `.cache/` and run outputs stay out of git."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", ".cache", "runs"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked == [], tracked
    ignored = subprocess.run(["git", "check-ignore", ".cache/matplotlib/fontlist-v390.json"], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.returncode == 0, "`.cache/` is not ignored"
