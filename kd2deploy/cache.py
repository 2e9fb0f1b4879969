"""Content-addressed stage cache: a rerun reuses the teacher and the students when nothing they depend on changed.

Each cached stage is keyed on a sha256 of what determines its output: the resolved config sections the stage
reads, the content of its input files (``data.path``, teacher checkpoints, ``file.py`` models) and the versions of
kd2deploy, torch, numpy and scikit-learn. The students' key includes the teacher's key. An entry is a folder
``<out>/.cache/<stage>/<key>/`` holding the stage's checkpoints (state_dicts) and ``entry.json`` (the stage's
results record, the key's inputs and each file's sha256). Entries are written into a temporary folder and
renamed into place, and every file is checked against its sha256 before use: a half-written or damaged entry is
never used, it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kd2deploy import __version__, ui
from kd2deploy.errors import ConfigError, Kd2DeployError
from kd2deploy.rundir import write_json

log = logging.getLogger("kd2deploy")

CACHE_FORMAT = 1
STAGES = ("teacher", "students")  # the cached stages, in run order: forcing one recomputes the ones after it
ENTRY_FILE = "entry.json"
STALE_TEMP_S = 3600.0  # temporary folders older than this are left-overs of a crashed run


def resolve_force(force: bool | Iterable[str]) -> frozenset[str]:
    """The stages to recompute: ``True``/``"all"`` means every cached stage; a stage forces the ones after it.

    Raises:
        ConfigError: an unknown stage name, with the valid ones.
    """
    names = set(STAGES) if force is True else set(force or ())
    if "all" in names:
        names = set(STAGES)
    unknown = sorted(names - set(STAGES))
    if unknown:
        raise ConfigError(f"--force {unknown[0]!r}: unknown stage; valid stages: {', '.join(STAGES)} "
                          "(--force alone recomputes every cached stage)")
    first = min((STAGES.index(n) for n in names), default=len(STAGES))
    return frozenset(STAGES[first:])


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _arch_file(arch: str | None) -> str | None:
    from kd2deploy.models import split_file_spec

    spec = split_file_spec(arch) if arch else None
    return spec[0] if spec else None


def versions(extra: Iterable[str] = ()) -> dict[str, str | None]:
    """Versions of what shapes a trained model: kd2deploy, torch, numpy, scikit-learn, ``extra``."""
    from importlib import metadata

    names = ["torch", "numpy", "scikit-learn"]
    names += list(extra)
    out: dict[str, str | None] = {"kd2deploy": __version__}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _key_of(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def data_inputs(cfg) -> dict[str, Any]:
    """What the data stage reads: the seed (splits), the data section, its file."""
    r = cfg.resolved()
    files = {"data.path": cfg.data.path}
    return {"seed": r["seed"], "data": r["data"],
            "files": {k: file_sha256(p) for k, p in files.items() if p is not None}}


def teacher_inputs(cfg) -> dict[str, Any]:
    """What the teacher stage reads besides the data: teacher, the distill keys that change the teacher, files."""
    r = cfg.resolved()
    files = {"teacher.checkpoint": cfg.teacher.checkpoint, "teacher.arch": _arch_file(cfg.teacher.arch)}
    for i, m in enumerate(cfg.teacher.ensemble):
        files[f"teacher.ensemble.{i}.checkpoint"] = m.checkpoint
        files[f"teacher.ensemble.{i}.arch"] = _arch_file(m.arch)
    return {
        "format": CACHE_FORMAT, "seed": r["seed"], "teacher": r["teacher"],
        "distill": {k: r["distill"][k] for k in ("labelled_fraction", "teacher_labels")},
        "files": {k: file_sha256(p) for k, p in files.items() if p is not None},
        "versions": versions(),
    }


def students_inputs(cfg) -> dict[str, Any]:
    """What the students stage reads besides the data and the teacher: seed, student, distill, files."""
    r = cfg.resolved()
    files = {"student.arch": _arch_file(cfg.student.arch)}
    return {
        "format": CACHE_FORMAT, "seed": r["seed"], "student": r["student"], "distill": r["distill"],
        "files": {k: file_sha256(p) for k, p in files.items() if p is not None},
        "versions": versions(),
    }


def stage_key(inputs: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a stage's inputs."""
    return _key_of(inputs)


@dataclass
class Entry:
    """One usable cache entry: its files were all present and matched their sha256."""

    stage: str
    key: str
    dir: Path
    created: str
    record: dict[str, Any]
    files: list[str]

    def provenance(self) -> dict[str, str]:
        return {"key": self.key, "from": str(self.dir), "created": self.created}


class StageCache:
    """``<root>/<stage>/<key>/`` entries; ``force`` names the stages that must not be read (they are rewritten)."""

    def __init__(self, root: Path, force: frozenset[str] = frozenset()):
        self.root = Path(root)
        self.force = force

    def lookup(self, stage: str, key: str) -> Entry | None:
        """The entry for ``key``, or None when forced, absent or not intact (the reason is logged and warned)."""
        if stage in self.force:
            log.info("cache: %s forced, recomputing", stage)
            return None
        path = self.root / stage / key
        if not path.exists():
            log.info("cache: no %s entry %s", stage, key[:12])
            return None
        try:
            meta = json.loads((path / ENTRY_FILE).read_text(encoding="utf-8"))
            if meta.get("format") != CACHE_FORMAT or meta.get("stage") != stage or meta.get("key") != key:
                raise ValueError("it belongs to another stage, key or cache format")
            files = meta["files"]
            for name, sha in files.items():
                if Path(name).name != name:
                    raise ValueError(f"bad file name {name!r}")
                if file_sha256(path / name) != sha:
                    raise ValueError(f"{name} does not match its sha256")
            return Entry(stage, key, path, meta["created"], meta["record"], list(files))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            self.discard(stage, key, f"{type(e).__name__}: {e}")
            return None

    def discard(self, stage: str, key: str, why: str) -> None:
        """Notes that the entry is unusable; the stage recomputes and :meth:`store` replaces it."""
        msg = f"cache entry {self.root / stage / key} is not usable ({why}); recomputing {stage}"
        log.warning(msg)
        ui.warn(msg)

    def store(self, stage: str, key: str, files: dict[str, Path], record: dict[str, Any],
              inputs: dict[str, Any]) -> Entry | None:
        """Copies ``files`` and writes ``entry.json`` into a temporary folder, then renames it to the key's folder.

        A failure (e.g. a full disk) only costs the cache: it is logged and warned, the run goes on.
        """
        stage_dir = self.root / stage
        tmp = None
        try:
            stage_dir.mkdir(parents=True, exist_ok=True)
            self._sweep(stage_dir)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=stage_dir))
            shas = {}
            for name, src in files.items():
                shutil.copyfile(src, tmp / name)
                shas[name] = file_sha256(tmp / name)
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_json(tmp / ENTRY_FILE, {"format": CACHE_FORMAT, "stage": stage, "key": key, "created": created,
                                          "files": shas, "record": record, "inputs": inputs})
            final = stage_dir / key
            if final.exists():  # forced, or a damaged entry: move it aside first, rename is atomic
                old = Path(tempfile.mkdtemp(prefix=f".old-{key[:12]}-", dir=stage_dir))
                os.replace(final, old / key)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, final)
            tmp = None
            log.info("cache: stored %s entry %s", stage, final)
            return Entry(stage, key, final, created, record, list(shas))
        except (OSError, Kd2DeployError) as e:
            msg = f"cache: the {stage} stage was not stored in {stage_dir} ({e}); the run goes on"
            log.warning(msg)
            ui.warn(msg)
            return None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _sweep(stage_dir: Path) -> None:
        """Removes temporary folders that crashed runs left behind (old enough not to be another run's)."""
        now = time.time()
        for p in [*stage_dir.glob(".tmp-*"), *stage_dir.glob(".old-*")]:
            try:
                if now - p.stat().st_mtime > STALE_TEMP_S:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass
