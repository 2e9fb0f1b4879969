"""Error types that the CLI turns into one-line messages and exit codes.

Bad input (a config, a file, a name) exits with code 2; a failure while running exits with code 1.
"""

from __future__ import annotations

import errno
import os


class Kd2DeployError(Exception):
    """Base of every error kd2deploy reports without a traceback."""

    exit_code = 1


class ConfigError(Kd2DeployError):
    """The user's input is wrong: a pipeline file, a value, a name, a data file."""

    exit_code = 2


class StageError(Kd2DeployError):
    """A stage failed while running (training diverged, parity failed, a backend broke)."""

    exit_code = 1


_OS_PROBLEMS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit or the file system's maximum)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_problem(e: OSError) -> str:
    """Words for an OSError's cause, e.g. ``no space left on the device (the disk is full)``."""
    return _OS_PROBLEMS.get(e.errno) or e.strerror or str(e) or type(e).__name__


def write_error(path: str | os.PathLike, e: OSError) -> StageError:
    """The error for an output file that could not be written (disk full, file-size limit, read-only, denied).

    Files are written through a temporary name and a rename, so a failed write leaves no half file and
    replaces nothing: the message says so.
    """
    return StageError(
        f"{os.fspath(path)}: cannot write this file: {os_problem(e)}; it was not written, and files written "
        "before it are intact"
    )
