"""Run folders: ``runs/<pipeline-name>/<timestamp>/``, created atomically so two runs never share one."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError


def new_run_dir(root: Path, name: str) -> Path:
    """Creates and returns a fresh run folder; ``mkdir`` without ``exist_ok`` makes the claim atomic."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = root / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {root}: cannot create the run folder ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {root}: the output folder {parent} is not writable")
    for i in range(1, 1000):
        path = parent / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"--out {root}: cannot create the run folder ({e.strerror})") from None
    raise ConfigError(f"--out {root}: too many runs started in the same second")


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Writes to a temporary file in the same folder, then renames: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_torch_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` through a temporary name and a rename."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
