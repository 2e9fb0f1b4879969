"""Error types that the CLI turns into one-line messages and exit codes.

Bad input (a config, a file, a name) exits with code 2; a failure while running exits with code 1.
"""

from __future__ import annotations


class Kd2DeployError(Exception):
    """Base of every error kd2deploy reports without a traceback."""

    exit_code = 1


class ConfigError(Kd2DeployError):
    """The user's input is wrong: a pipeline file, a value, a name, a data file."""

    exit_code = 2


class StageError(Kd2DeployError):
    """A stage failed while running (training diverged, parity failed, a backend broke)."""

    exit_code = 1
