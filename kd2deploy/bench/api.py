"""Benchmark ONNX files on one backend: the function behind ``kd2deploy bench MODEL.onnx ...``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from kd2deploy.bench import harness
from kd2deploy.bench.backends import OrtBackend, get_backend
from kd2deploy.bench.harness import HarnessSettings
from kd2deploy.errors import ConfigError, StageError


class BenchInputError(ConfigError, ValueError):
    """A model file or option that the benchmark cannot use (a corrupt ONNX file, a wrong backend kind)."""


class BackendUnavailableError(StageError, RuntimeError):
    """The backend asked for does not work on this machine; the message says why."""


class ModelFileNotFoundError(ConfigError, FileNotFoundError):
    """A model file that does not exist."""


def onnx_input_specs(path: str | Path) -> list[harness.InputSpec]:
    """(name, shape, numpy dtype) of each graph input of an ONNX file (initialisers excluded)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    initialisers = {t.name for t in graph.initializer}
    specs = []
    for inp in graph.input:
        if inp.name in initialisers:
            continue
        tensor = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        specs.append((inp.name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))))
    return specs


def bench_onnx(
    paths: Sequence[str | Path],
    batch_sizes: Sequence[int] = (1,),
    settings: HarnessSettings | None = None,
    backend: str = "onnxruntime-cpu",
    inputs: np.ndarray | Mapping[str, np.ndarray] | None = None,
    *,
    precision: str = "fp32",
    flops_probe: bool = True,
    progress: Callable[[str], object] | None = None,
) -> dict:
    """Benchmarks ONNX files on one backend, interleaved, and compares the first file with the others.

    Args:
        paths: ONNX files; ratios are p50(first) / p50(other) (teacher first gives the student's speed-up).
        batch_sizes: batch sizes to run every model at.
        settings: harness settings (threads, windows, rounds, bootstrap); default ``HarnessSettings()``.
        backend: a registered backend name that takes ONNX files.
        inputs: real inputs (an array, or a dict for multi-input models), rows repeated or cut to each batch
            size; default random inputs from each model's input shapes, seeded with ``settings.seed``.
        precision: fp32, or fp16 where the backend builds engines (tensorrt, onnxruntime-tensorrt).
        flops_probe: also run :func:`harness.peak_flops` (0.5 s) after the measurements, with BLAS
            limited to ``settings.intra_op_threads`` where threadpoolctl is installed.
        progress: called with a label after every measured window (``harness.count_windows`` windows).

    Returns:
        A JSON-able dict: settings, environment, models (name, path, size_bytes, sha256,
        session_create_s, backend facts), results (see :func:`harness.measure`), ratios, peak_flops
        ({flops_per_s, blas_threads, method} or None), peak_rss_bytes (process-wide peak, or None).

    Raises:
        ValueError: unknown backend (the message lists the valid names), bad precision or inputs, a file
            that is not a loadable ONNX model (:class:`BenchInputError`, also a ConfigError).
        RuntimeError: the backend is not usable on this machine (:class:`BackendUnavailableError`, also a
            StageError; the message says why).
        FileNotFoundError: a path does not exist (:class:`ModelFileNotFoundError`, also a ConfigError).
    """
    settings = settings or HarnessSettings()
    be = get_backend(backend)
    if be.model_format != "onnx":
        raise BenchInputError(f"backend {backend!r} runs torch modules, not ONNX files")
    ok, reason = be.available()
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is not available here: {reason}")
    if isinstance(be, OrtBackend):
        settings = replace(settings, provider=be.providers[0])
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise ModelFileNotFoundError(f"{path}: no such model file")
    batch_sizes = list(dict.fromkeys(int(b) for b in batch_sizes))

    models: list[dict] = []
    runners: dict[str, dict[int, harness.Runner]] = {}
    for label, path in zip(harness.unique_labels(paths), paths, strict=True):
        try:
            loaded = be.load(path, settings, precision=precision, batch_sizes=batch_sizes)
        except ValueError as e:  # a corrupt file, or a precision the backend lacks
            raise BenchInputError(str(e)) from e
        models.append(
            {
                "name": label,
                **harness.file_info(path),
                "session_create_s": round(loaded.setup_s, 4),
                **loaded.info,
            }
        )
        specs = onnx_input_specs(path) if inputs is None else None
        runners[label] = {
            b: loaded.runner(
                harness.batch_inputs(inputs, b)
                if inputs is not None
                else harness.random_feeds(specs, b, settings.seed)
            )
            for b in batch_sizes
        }

    results = harness.measure(runners, settings, progress, keep_samples=True)
    names = list(runners)
    ratio_rows = [
        {
            "numerator": names[0],
            "denominator": other,
            "per_batch": harness.ratios(
                results, names[0], other, bootstrap=settings.bootstrap, seed=settings.seed
            ),
        }
        for other in names[1:]
    ]
    return {
        "settings": {
            **asdict(settings),
            "backend": backend,
            "precision": precision,
            "batch_sizes": batch_sizes,
        },
        "environment": harness.environment(),
        "models": models,
        "results": harness.strip_samples(results),
        "ratios": ratio_rows,
        "peak_flops": harness.peak_flops(threads=settings.intra_op_threads) if flops_probe else None,
        "peak_rss_bytes": harness.peak_rss_bytes(),
    }
