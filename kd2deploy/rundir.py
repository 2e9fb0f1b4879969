"""Run folders: ``runs/<pipeline-name>/<timestamp>/``, created atomically so two runs never share one."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError, os_problem, write_error


def new_run_dir(root: Path, name: str) -> Path:
    """Creates and returns a fresh run folder; ``mkdir`` without ``exist_ok`` makes the claim atomic."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = root / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {root}: cannot create the run folder ({os_problem(e)})") from None
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
            raise ConfigError(f"--out {root}: cannot create the run folder ({os_problem(e)})") from None
    raise ConfigError(f"--out {root}: too many runs started in the same second")


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Writes to a temporary file in the same folder, then renames: readers never see half a file.

    Raises:
        StageError: the file cannot be written (disk full, file-size limit, read-only, permission); the message
            names the file, and an older file of that name is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats replaced by None: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> Path:
    """Standard JSON (NaN and infinities written as null), atomically."""
    return write_atomic(path, json.dumps(_finite(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def save_torch_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` through :func:`write_atomic` (torch's own file writer reports a full disk without errno)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, buf.getvalue())
