"""The numbers a report leads with, about ship/student.onnx: see :mod:`kd2deploy.report.verdict`."""

from __future__ import annotations

from typing import Any


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The headline and verdict about the shipped file from ``results`` alone (a re-render: the stored ratio
    rows and paired test are kept, everything else is recomputed)."""
    from kd2deploy.report.verdict import build_headline

    return build_headline(results)
