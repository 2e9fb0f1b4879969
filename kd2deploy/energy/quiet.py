"""Keeps CodeCarbon off the terminal: its log records are captured, its Python warnings ignored.

CodeCarbon logs to stderr through the ``codecarbon`` logger and re-adds a stderr handler every time a tracker
is built (``codecarbon.external.logger.set_logger_format``), so removing handlers does not last. A filter on
the logger itself runs before every handler, from every thread (the tracker measures from timer threads), and
drops each record after keeping it for :func:`captured`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("kd2deploy.energy")

_NOISE = ("Multiple instances of codecarbon are allowed", "Codecarbon configuration:")


class _Capture(logging.Filter):
    """Logger-level filter on ``codecarbon``: keeps each record in memory and drops it before any handler."""

    def __init__(self) -> None:
        super().__init__("kd2deploy")
        self.seen = 0
        self.records: deque[str] = deque(maxlen=500)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not msg.startswith(_NOISE):
            self.seen += 1
            self.records.append(f"{record.levelname.lower()}: {msg.strip()}")
            log.debug("codecarbon %s: %s", record.levelname.lower(), msg.strip())
        return False


_CAPTURE = _Capture()


def silence_logger() -> None:
    """Installs the capturing filter on the ``codecarbon`` logger (idempotent, process-wide)."""
    cc_logger = logging.getLogger("codecarbon")
    if _CAPTURE not in cc_logger.filters:
        cc_logger.addFilter(_CAPTURE)


def seen() -> int:
    """How many CodeCarbon records were captured so far in this process."""
    return _CAPTURE.seen


def captured(since: int = 0) -> list[str]:
    """CodeCarbon's records ("level: message") captured since :func:`seen` returned ``since`` (last 500)."""
    new = _CAPTURE.seen - since
    return list(_CAPTURE.records)[-new:] if new > 0 else []


@contextmanager
def quiet() -> Iterator[None]:
    """CodeCarbon's log records captured, its Python warnings ignored (also under ``-W error``)."""
    silence_logger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def import_codecarbon() -> Any:
    """Imports codecarbon quietly and returns the module."""
    os.environ["CODECARBON_LOG_LEVEL"] = "error"  # read once, when codecarbon's logger module is imported
    with quiet():
        import codecarbon

    return codecarbon
