"""Latency harness: interleaved, warmed-up, per-call timing with calibrated confidence intervals.

This file imports only the standard library, numpy and onnxruntime (the latter lazily), so it can be copied
alone to an edge device and run there::

    python harness.py teacher.onnx student.onnx --batch-sizes 1 32 --threads 1 --json out.json

What a number means:

- A *runner* is a zero-argument callable that does one inference on inputs built beforehand (for
  onnxruntime: ``lambda: session.run(None, feeds)``). Only the call is timed, with ``time.perf_counter_ns``
  just before and after it. A runner with a true ``self_timed`` attribute returns its own elapsed time in
  nanoseconds instead (the tensorrt backend times the GPU with CUDA events this way).
- One *window* is one (model, batch size, round): warm-up until both ``warmup_s`` and ``warmup_runs`` are
  reached, then timed calls until both ``min_duration_s`` and ``min_runs`` are reached. A window stops early
  after ``max_window_s`` (warm-up included) and the result says ``window_short``. Python's garbage collector
  is paused inside a window, as ``timeit`` does.
- For each batch size the models run in ``rounds`` rounds; round r rotates the order of the models by r, so
  slow drift (thermal, frequency, a neighbour on the host) hits every model alike. Latencies are pooled over
  rounds before the statistics.
- ``p50_ci95_us`` is a 95 % interval of the median that holds its coverage when sessions differ: the wider of
  (a) a Student-t interval over the rounds' log medians (each round is a window in its own session, so the
  spread of round medians carries session-to-session and drift variation, judged with rounds - 1 degrees of
  freedom) and (b) a seeded two-level bootstrap (rounds resampled, then latencies within them), which covers
  the noise inside the windows. A bootstrap alone, over 3 clusters, under-covers when sessions differ;
  ``tests/unit/test_latency_coverage.py`` simulates it. With fewer than 3 rounds only (b) applies.
  :func:`ratio_ci` does the same for a ratio of two medians (teacher p50 / student p50 is the student's
  speed-up) with the rounds paired.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

Runner = Callable[[], object]
InputSpec = tuple[str, list, np.dtype]

GRAPH_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# onnxruntime exception classes that mean "this file is not a model I can load"
_ORT_FILE_ERRORS = {"InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel", "ModelLoaded"}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass
class HarnessSettings:
    """How to run and time a benchmark. Every default lives here.

    Attributes:
        intra_op_threads: threads inside one operator (onnxruntime, torch); 0 lets the runtime choose.
        inter_op_threads: threads across independent operators; 0 lets the runtime choose.
        graph_optimization: onnxruntime graph optimisation level: disable, basic, extended or all.
        provider: onnxruntime execution provider for :func:`create_ort_session`.
        warmup_s: least warm-up time per window, in seconds.
        warmup_runs: least number of warm-up calls per window.
        min_duration_s: least timed time per window, in seconds.
        min_runs: least number of timed calls per window.
        rounds: windows per (model, batch size); the model order rotates every round.
        bootstrap: bootstrap resamples for confidence intervals.
        seed: seed for random inputs and the bootstrap.
        max_window_s: a window (warm-up included) stops after this many seconds, marked ``window_short``.
        renew_sessions: from the second round on, time a freshly created session (runners that offer
            ``renew``, e.g. :func:`ort_runner` given ``make_session``), so that session-to-session variation
            (where the allocator placed weights and buffers) shows between rounds and in the intervals,
            instead of one session's luck deciding a ratio.
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    provider: str = "CPUExecutionProvider"
    warmup_s: float = 0.2
    warmup_runs: int = 10
    min_duration_s: float = 1.0
    min_runs: int = 100
    rounds: int = 3
    bootstrap: int = 1000
    seed: int = 0
    max_window_s: float = 60.0
    renew_sessions: bool = True

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization: {self.graph_optimization!r} is not one of "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        for name in ("intra_op_threads", "inter_op_threads", "warmup_runs", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("min_runs", "rounds", "bootstrap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_s", "min_duration_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.max_window_s <= 0:
            raise ValueError(f"max_window_s: must be > 0, got {self.max_window_s}")


# ---------------------------------------------------------------------------------------------------------
# onnxruntime sessions, inputs and runners


def create_ort_session(
    path: str | os.PathLike,
    settings: HarnessSettings,
    *,
    providers: Sequence[str | tuple[str, dict]] | None = None,
) -> tuple[ort.InferenceSession, float]:
    """Creates an onnxruntime session configured from ``settings``.

    Args:
        path: the ONNX file.
        settings: threads, graph optimisation level and provider.
        providers: execution providers in priority order (names or (name, options) pairs); default
            ``[settings.provider]``, with CPU as fallback for nodes the provider cannot run.

    Returns:
        The session and the seconds its creation took (graph optimisation and, for some providers,
        engine building happen here).

    Raises:
        ValueError: the first provider is not in this onnxruntime build, or the file is not a loadable ONNX
            model (corrupt, truncated, empty, an invalid graph); the message names the file.
        RuntimeError: onnxruntime fell back to another provider than the one asked for.
    """
    import onnxruntime as ort

    if providers is None:
        providers = [settings.provider]
        if settings.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
    wanted = [p if isinstance(p, str) else p[0] for p in providers]
    installed = ort.get_available_providers()
    missing = [p for p in wanted if p not in installed]
    if missing:
        raise ValueError(
            f"onnxruntime {ort.__version__} has no {', '.join(missing)} "
            f"(installed providers: {', '.join(installed)})"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVELS[settings.graph_optimization]
    )
    options.log_severity_level = 3  # errors only; warnings about fallbacks are checked below instead
    t0 = time.perf_counter()
    try:
        session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=list(providers))
    except Exception as e:  # onnxruntime's errors share no base class but Exception
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if type(e).__name__ in _ORT_FILE_ERRORS or "Load model from" in first:
            reason = first.split("failed:", 1)[-1].strip()
            raise ValueError(f"{path}: onnxruntime cannot load this file as an ONNX model: {reason}") from e
        raise
    seconds = time.perf_counter() - t0
    if session.get_providers()[0] != wanted[0]:
        raise RuntimeError(
            f"{path}: asked onnxruntime for {wanted[0]} but the session runs on {session.get_providers()}"
        )
    return session, seconds


def session_input_specs(session: ort.InferenceSession) -> list[InputSpec]:
    """(name, shape, numpy dtype) of each input; shape entries are ints or names of dynamic axes."""
    specs = []
    for inp in session.get_inputs():
        if inp.type not in _ORT_TYPES:
            raise ValueError(f"input {inp.name!r} has type {inp.type}, which the harness cannot generate")
        specs.append((inp.name, list(inp.shape), np.dtype(_ORT_TYPES[inp.type])))
    return specs


def random_feeds(specs: Sequence[InputSpec], batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for one batch: standard normal floats, zeros for integer and boolean inputs.

    Axis 0 is the batch axis; every other axis must have a fixed size (pass real inputs otherwise).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in specs:
        if not shape:
            raise ValueError(f"input {name!r} is a scalar; pass real inputs")
        first = shape[0]
        if isinstance(first, int) and first > 0 and first != batch_size:
            raise ValueError(
                f"input {name!r} has a fixed batch size of {first}; cannot run batch {batch_size} "
                "(export the model with a dynamic batch axis)"
            )
        rest = shape[1:]
        for axis, dim in enumerate(rest, start=1):
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError(
                    f"input {name!r} has a dynamic dimension {dim!r} at axis {axis}; pass real inputs "
                    "(--inputs file.npy or .npz)"
                )
        full = (batch_size, *rest)
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(full).astype(dtype)
        else:
            feeds[name] = np.zeros(full, dtype=dtype)
    return feeds


def batch_inputs(x: np.ndarray | Mapping[str, np.ndarray], batch_size: int) -> Any:
    """The first ``batch_size`` rows of ``x`` (each array of a dict), repeating rows when there are fewer."""
    if isinstance(x, Mapping):
        return {k: batch_inputs(v, batch_size) for k, v in x.items()}
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("inputs need a batch axis")
    rows = np.arange(batch_size) % x.shape[0]
    return np.ascontiguousarray(x[rows])


def feeds_for(
    session: ort.InferenceSession, x: np.ndarray | Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A feed dict for ``session``: an array goes to the only input, a dict must name every input."""
    names = [i.name for i in session.get_inputs()]
    if isinstance(x, Mapping):
        if sorted(x) != sorted(names):
            raise ValueError(f"inputs name {sorted(x)}, the model takes {names}")
        return {k: np.ascontiguousarray(v) for k, v in x.items()}
    if len(names) != 1:
        raise ValueError(f"the model takes inputs {names}; pass a dict of arrays")
    return {names[0]: np.ascontiguousarray(x)}


def ort_runner(
    session: ort.InferenceSession,
    x: np.ndarray | Mapping[str, np.ndarray],
    make_session: Callable[[], ort.InferenceSession] | None = None,
) -> Runner:
    """A runner doing one ``session.run`` on ``x`` (feed dict built once, outside the timed call).

    With ``make_session`` the runner also has ``renew()``: the same runner on a freshly created session (see
    ``HarnessSettings.renew_sessions``).
    """
    feeds = feeds_for(session, x)
    run = session.run

    def runner():
        return run(None, feeds)

    if make_session is not None:
        runner.renew = lambda: ort_runner(make_session(), x, make_session)
    return runner


# ---------------------------------------------------------------------------------------------------------
# measurement


def schedule(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The model order of each round: round r rotates ``names`` left by r (AB, BA, AB for two models)."""
    n = len(names)
    return [list(names[r % n :]) + list(names[: r % n]) for r in range(rounds)] if n else []


def count_windows(runners: Mapping[str, Mapping[int, Runner]], settings: HarnessSettings) -> int:
    """How many windows :func:`measure` will run (a progress bar's total)."""
    return sum(len(by_batch) for by_batch in runners.values()) * settings.rounds


def run_window(runner: Runner, settings: HarnessSettings) -> tuple[np.ndarray, float, bool]:
    """Warms up, then times single calls of ``runner``.

    Returns:
        Latencies in nanoseconds (int64), seconds spent in timed calls (warm-up excluded; the loop's own
        bookkeeping between calls included), and whether ``max_window_s`` cut the window short.
    """
    self_timed = bool(getattr(runner, "self_timed", False))
    clock = time.perf_counter_ns
    warm_ns = int(settings.warmup_s * 1e9)
    min_ns = int(settings.min_duration_s * 1e9)
    min_runs = settings.min_runs
    short = False
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        deadline = start + int(settings.max_window_s * 1e9)
        done = 0
        while done < settings.warmup_runs or clock() - start < warm_ns:
            runner()
            done += 1
            if clock() > deadline:
                short = True
                break
        latencies: list[int] = []
        append = latencies.append
        t_begin = clock()
        while True:
            t0 = clock()
            out = runner()
            t1 = clock()
            append(out if self_timed else t1 - t0)
            if t1 - t_begin >= min_ns and len(latencies) >= min_runs:
                break
            if t1 > deadline:
                short = True
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(latencies, dtype=np.int64), (t1 - t_begin) / 1e9, short


def measure(
    runners: Mapping[str, Mapping[int, Runner]],
    settings: HarnessSettings,
    progress: Callable[[str], object] | None = None,
    *,
    keep_samples: bool = False,
) -> list[dict]:
    """Measures every (model, batch size), interleaving the models round by round.

    Args:
        runners: ``{model name: {batch size: runner}}``.
        settings: warm-up, window and bootstrap settings.
        progress: called once per finished window with a label such as ``"student batch 32 round 2/3"``.
        keep_samples: add ``samples_us`` (pooled latencies, a float64 array) and ``rounds_us`` (one array per
            round) to each result, for
            :func:`ratios`; drop it with :func:`strip_samples` before writing JSON.

    Returns:
        One dict per (model, batch size), models in the order given: model, batch_size, runs, rounds,
        measured_s, p50_us, p90_us, p99_us, mean_us, min_us, max_us, std_us, p50_ci95_us [lo, hi],
        throughput_sps, timer, window_short.
    """
    batch_sizes: list[int] = []
    for by_batch in runners.values():
        batch_sizes += [b for b in by_batch if b not in batch_sizes]
    pooled: dict[tuple[str, int], list[np.ndarray]] = {}
    seconds: dict[tuple[str, int], float] = {}
    short: dict[tuple[str, int], bool] = {}
    for batch in batch_sizes:
        names = [name for name, by_batch in runners.items() if batch in by_batch]
        for r, order in enumerate(schedule(names, settings.rounds)):
            for name in order:
                runner = runners[name][batch]
                if r > 0 and settings.renew_sessions and hasattr(runner, "renew"):
                    runner = runner.renew()  # the fresh session lives for this window only
                lat_ns, secs, cut = run_window(runner, settings)
                del runner
                key = (name, batch)
                pooled.setdefault(key, []).append(lat_ns)
                seconds[key] = seconds.get(key, 0.0) + secs
                short[key] = short.get(key, False) or cut
                if progress is not None:
                    progress(f"{name} batch {batch} round {r + 1}/{settings.rounds}")
    results = []
    for name, by_batch in runners.items():
        for batch in by_batch:
            key = (name, batch)
            rounds_us = [r / 1e3 for r in pooled[key]]
            lat_us = np.concatenate(rounds_us)
            timer = "self" if getattr(by_batch[batch], "self_timed", False) else "perf_counter_ns"
            res = summarize(rounds_us, settings, model=name, batch_size=batch, measured_s=seconds[key])
            res.update(timer=timer, window_short=short[key])
            if keep_samples:
                res["samples_us"] = lat_us
                res["rounds_us"] = rounds_us
            results.append(res)
    return results


def summarize(
    lat_us: Samples, settings: HarnessSettings, *, model: str, batch_size: int, measured_s: float
) -> dict:
    """Statistics of the latencies (microseconds) of one (model, batch size): pooled, or one array per round."""
    rounds = _rounds(lat_us)
    lat_us = np.concatenate(rounds)
    p50, p90, p99 = np.percentile(lat_us, [50, 90, 99])
    mean = float(lat_us.mean())
    lo, hi = median_ci(rounds, settings.bootstrap, settings.seed)
    return {
        "model": model,
        "batch_size": batch_size,
        "runs": int(lat_us.size),
        "rounds": settings.rounds,
        "measured_s": round(measured_s, 6),
        "p50_us": _r(p50),
        "p90_us": _r(p90),
        "p99_us": _r(p99),
        "mean_us": _r(mean),
        "min_us": _r(lat_us.min()),
        "max_us": _r(lat_us.max()),
        "std_us": _r(lat_us.std(ddof=1) if lat_us.size > 1 else 0.0),
        "p50_ci95_us": [_r(lo), _r(hi)],
        "throughput_sps": _r(batch_size * 1e6 / mean) if mean > 0 else None,
    }


def strip_samples(results: Sequence[dict]) -> list[dict]:
    """Copies of ``results`` without ``samples_us`` (JSON-able)."""
    return [{k: v for k, v in r.items() if k not in ("samples_us", "rounds_us")} for r in results]


def _r(x: float) -> float:
    return round(float(x), 3)


# ---------------------------------------------------------------------------------------------------------
# bootstrap


def bootstrap_medians(x: np.ndarray, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``bootstrap`` resamples (with replacement, size n) of ``x``, drawn exactly and fast.

    Resampling index ceil(n*U) from sorted data is monotone in the uniform U, so the k-th smallest value of
    a resample is ``sorted_x[ceil(n * U_(k))]`` where U_(k), the k-th smallest of n uniforms, is
    Beta(k, n-k+1). The next one is U_(k) + (1 - U_(k)) * Beta(1, n-k). This costs O(n log n + bootstrap)
    instead of O(n * bootstrap), which matters with hundreds of thousands of latencies.
    """
    xs = np.sort(np.asarray(x, dtype=np.float64))
    n = xs.size
    if n == 0:
        raise ValueError("no samples")
    if n == 1:
        return np.full(bootstrap, xs[0])
    k = (n + 1) // 2  # 1-based rank of the (lower) median
    u_k = rng.beta(k, n - k + 1, size=bootstrap)
    lower = xs[_rank_index(u_k, n)]
    if n % 2:
        return lower
    u_next = u_k + (1.0 - u_k) * rng.beta(1, n - k, size=bootstrap)
    return (lower + xs[_rank_index(u_next, n)]) / 2


def _rank_index(u: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.ceil(u * n).astype(np.int64), 1, n) - 1


Samples = np.ndarray | Sequence[np.ndarray]  # pooled latencies, or one array per round


def _rounds(x: Samples) -> list[np.ndarray]:
    if isinstance(x, np.ndarray) and x.ndim == 1:
        return [x.astype(np.float64)]
    return [np.asarray(r, dtype=np.float64) for r in x]


def round_medians(rounds: Sequence[np.ndarray], picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Medians of two-level bootstrap resamples: rounds drawn with replacement (``picks``, one row of round
    indices per resample), then latencies drawn from the chosen rounds.

    The second level uses :func:`bootstrap_medians`' order-statistic draw on the chosen rounds' weighted
    distribution (each round weighs as often as it was picked), so a resample costs O(n) per distinct set of
    picks. Drift between rounds (frequency, cache, a neighbour's load) widens the interval, as it should:
    resampling single latencies alone treats them as independent and gives intervals that the next run misses.
    """
    data = np.concatenate(rounds)
    ids = np.concatenate([np.full(r.size, i) for i, r in enumerate(rounds)])
    order = np.argsort(data, kind="stable")
    xs, ids = data[order], ids[order]
    n, n_rounds = xs.size, len(rounds)
    sizes = np.array([r.size for r in rounds], dtype=np.float64)
    counts = np.stack([np.bincount(p, minlength=n_rounds) for p in picks])
    k = (n + 1) // 2
    u = rng.beta(k, n - k + 1, size=len(picks))
    out = np.empty(len(picks))
    uniq, inv = np.unique(counts, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    for j, c in enumerate(uniq):
        cdf = np.cumsum(c[ids] / float(c @ sizes))
        rows = inv == j
        out[rows] = xs[np.minimum(np.searchsorted(cdf, u[rows]), n - 1)]
    return out


def _medians(x: Samples, bootstrap: int, rng: np.random.Generator, picks: np.ndarray | None) -> np.ndarray:
    rounds = _rounds(x)
    if len(rounds) == 1:
        return bootstrap_medians(rounds[0], bootstrap, rng)
    return round_medians(rounds, picks, rng)


# t quantiles (0.975) for 1..30 degrees of freedom: this file must not need scipy on an edge device
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a table to 30, then Cornish-Fisher)."""
    if df < 1:
        raise ValueError(f"t975: df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


MIN_T_ROUNDS = 3  # with 2 rounds (1 degree of freedom, t = 12.7) the interval would be uselessly wide


def rounds_log_halfwidth(log_values: Sequence[float]) -> float | None:
    """Half-width, in log units, of the t 95 % interval of the mean of per-round log values; None under
    ``MIN_T_ROUNDS`` rounds (then only the bootstrap interval applies: it misses session-to-session spread)."""
    v = np.asarray(log_values, dtype=np.float64)
    if v.size < MIN_T_ROUNDS:
        return None
    return t975(v.size - 1) * float(v.std(ddof=1)) / float(np.sqrt(v.size))


def _hull(point: float, lo: float, hi: float, half_log: float | None) -> tuple[float, float]:
    """The wider of the bootstrap interval and ``point * exp(+-half_log)``."""
    if half_log is None:
        return lo, hi
    return min(lo, point * float(np.exp(-half_log))), max(hi, point * float(np.exp(half_log)))


def median_ci(x: Samples, bootstrap: int, seed: int) -> tuple[float, float]:
    """95 % interval of the median of ``x``: pooled latencies (bootstrap, percentile method), or one array per
    round: the wider of the two-level bootstrap (:func:`round_medians`) and the t interval over the rounds' log
    medians (see the module docstring: that one holds its coverage when sessions differ)."""
    rng = np.random.default_rng(seed)
    rounds = _rounds(x)
    n_rounds = len(rounds)
    picks = rng.integers(0, n_rounds, size=(bootstrap, n_rounds))
    lo, hi = np.percentile(_medians(x, bootstrap, rng, picks), [2.5, 97.5])
    if n_rounds < 2:
        return float(lo), float(hi)
    point = float(np.median(np.concatenate(rounds)))
    half = rounds_log_halfwidth([np.log(np.median(r)) for r in rounds]) if point > 0 else None
    return _hull(point, float(lo), float(hi), half)


def ratio_ci(lat_a_us: Samples, lat_b_us: Samples, bootstrap: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """p50(a) / p50(b) and its bootstrap 95 % interval.

    Given one array per round for both (measured in the same alternating rounds), the rounds are resampled
    as pairs, so drift that slows both models alike cancels in the ratio while drift that does not widens
    the interval, and the interval is at least the t interval of the per-round log ratios (rounds - 1 degrees
    of freedom); given pooled arrays, a and b are resampled independently.

    Returns:
        (ratio, lo, hi).
    """
    ra, rb = _rounds(lat_a_us), _rounds(lat_b_us)
    rng = np.random.default_rng(seed)
    picks = None
    if len(ra) == len(rb) > 1:
        picks = rng.integers(0, len(ra), size=(bootstrap, len(ra)))
    else:
        ra, rb = [np.concatenate(ra)], [np.concatenate(rb)]
    boot = _medians(ra, bootstrap, rng, picks) / _medians(rb, bootstrap, rng, picks)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    a, b = np.concatenate(ra), np.concatenate(rb)
    ratio = float(np.median(a) / np.median(b))
    if picks is not None and ratio > 0 and all(np.median(r) > 0 for r in (*ra, *rb)):
        # paired rounds: the t interval of the mean per-round log ratio (drift common to both cancels)
        half = rounds_log_halfwidth([np.log(np.median(x) / np.median(y)) for x, y in zip(ra, rb, strict=True)])
        lo, hi = _hull(ratio, float(lo), float(hi), half)
    return ratio, float(lo), float(hi)


def ratios(
    results: Sequence[dict], numerator: str, denominator: str, *, bootstrap: int = 1000, seed: int = 0
) -> list[dict]:
    """Per batch size, p50(numerator) / p50(denominator) with a bootstrap 95 % interval.

    ``results`` must come from ``measure(..., keep_samples=True)``. With numerator = teacher and
    denominator = student the ratio is the student's speed-up.

    Returns:
        ``[{"batch_size": b, "ratio_p50": r, "ci95": [lo, hi]}, ...]`` for batch sizes both models ran.
    """
    by_key = {(r["model"], r["batch_size"]): r for r in results}
    if any("samples_us" not in r for r in results):
        raise ValueError("ratios() needs results from measure(..., keep_samples=True)")
    out = []
    for (model, batch), res in by_key.items():
        if model != numerator or (denominator, batch) not in by_key:
            continue
        other = by_key[(denominator, batch)]
        ratio, lo, hi = ratio_ci(res.get("rounds_us", res["samples_us"]),
                                 other.get("rounds_us", other["samples_us"]), bootstrap, seed)
        out.append({"batch_size": batch, "ratio_p50": round(ratio, 4), "ci95": [round(lo, 4), round(hi, 4)]})
    return out


# ---------------------------------------------------------------------------------------------------------
# machine probes


def peak_flops_probe(duration_s: float = 0.5, n: int = 256, threads: int | None = None) -> float:
    """FLOP/s of repeated float32 ``n x n @ n x n`` numpy matmuls (2 n^3 FLOPs each) over ``duration_s``.

    It measures numpy's BLAS (sgemm), a practical dense-compute ceiling to put a model's FLOPs per
    latency against, not the chip's datasheet peak. The harness settings do not reach BLAS: its threads come
    from OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS when numpy is first imported, or from
    ``threads`` here when the optional ``threadpoolctl`` package is installed (see :func:`peak_flops`).
    This matters: on a 2-vCPU VM, 2-thread OpenBLAS ran a 256 matmul 25x slower than 1 thread.
    """
    with _blas_threads(threads):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        out = np.empty((n, n), dtype=np.float32)
        for _ in range(3):
            np.matmul(a, b, out=out)
        calls = 0
        t0 = time.perf_counter()
        while True:
            np.matmul(a, b, out=out)
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= duration_s and calls >= 3:
                break
    return 2.0 * n**3 * calls / elapsed


def peak_flops(duration_s: float = 0.5, threads: int | None = None) -> dict:
    """:func:`peak_flops_probe` with a record of how it ran: flops_per_s, blas_threads, method."""
    limited = threads is not None and threads > 0 and _threadpoolctl() is not None
    flops = peak_flops_probe(duration_s, threads=threads)
    blas = (
        f"BLAS limited to {threads} thread(s) by threadpoolctl" if limited else "BLAS threads as configured"
    )
    env = {k: os.environ[k] for k in _THREAD_VARS if k in os.environ}
    return {
        "flops_per_s": round(flops),
        "blas_threads": threads if limited else None,
        "method": f"numpy float32 256x256 matmul over {duration_s} s; {blas}" + (f" ({env})" if env else ""),
    }


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def _blas_threads(threads: int | None):
    tpc = _threadpoolctl() if threads is not None and threads > 0 else None
    if tpc is None:
        return contextlib.nullcontext()
    return tpc.threadpool_limits(limits=threads, user_api="blas")


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this whole process so far (``getrusage`` ru_maxrss), or None without it.

    Process-wide and monotone: it includes Python, the runtimes and every model loaded before, so it bounds
    a model's memory from above; compare models in separate processes for per-model figures.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Where the numbers came from: Python, OS, CPU, core counts, library versions, thread variables."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
        "thread_env": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ},
    }
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    return env


def file_info(path: str | os.PathLike) -> dict:
    """Path, size in bytes and sha256 of a model file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": os.fspath(path), "size_bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def unique_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short model names: file stems, or full paths where stems collide."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else os.fspath(p) for s, p in zip(stems, paths, strict=True)]


# ---------------------------------------------------------------------------------------------------------
# command line


def format_table(results: Sequence[dict]) -> str:
    """A plain-text table of results (one row per model and batch size)."""
    head = ["model", "batch", "p50 us", "p90 us", "p99 us", "mean us", "p50 95% CI us", "samples/s", "runs"]
    rows = [
        [
            r["model"],
            str(r["batch_size"]),
            f"{r['p50_us']:.1f}",
            f"{r['p90_us']:.1f}",
            f"{r['p99_us']:.1f}",
            f"{r['mean_us']:.1f}",
            f"{r['p50_ci95_us'][0]:.1f}-{r['p50_ci95_us'][1]:.1f}",
            f"{r['throughput_sps']:.0f}" if r["throughput_sps"] is not None else "-",
            str(r["runs"]) + (" (short)" if r.get("window_short") else ""),
        ]
        for r in results
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = []
    for row in [head, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _load_inputs(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    data = np.load(path)
    if isinstance(data, np.ndarray):
        return data
    return {k: data[k] for k in data.files}


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmarks ONNX files with onnxruntime; prints a table and optionally writes JSON."""
    d = HarnessSettings()
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("models", nargs="+", type=Path, help="ONNX files; ratios compare the first with others")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    p.add_argument("--threads", type=int, default=d.intra_op_threads, help="intra-op threads (0: default)")
    p.add_argument("--inter-threads", type=int, default=d.inter_op_threads)
    p.add_argument("--graph-opt", choices=list(GRAPH_OPTIMIZATION_LEVELS), default=d.graph_optimization)
    p.add_argument("--provider", default=d.provider)
    p.add_argument("--warmup-s", type=float, default=d.warmup_s)
    p.add_argument("--warmup-runs", type=int, default=d.warmup_runs)
    p.add_argument("--min-duration", type=float, default=d.min_duration_s, help="seconds per window")
    p.add_argument("--min-runs", type=int, default=d.min_runs, help="timed calls per window")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--max-window", type=float, default=d.max_window_s)
    p.add_argument("--one-session", action="store_true",
                   help="time one session throughout (default: a fresh session from the second round on)")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--inputs", type=Path, help=".npy (one input) or .npz (named inputs); default random")
    p.add_argument("--no-flops-probe", action="store_true", help="skip the numpy matmul FLOP/s probe")
    p.add_argument("--json", type=Path, help="write settings, environment, models and results here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)

    import onnxruntime as ort

    settings = HarnessSettings(
        intra_op_threads=a.threads,
        inter_op_threads=a.inter_threads,
        graph_optimization=a.graph_opt,
        provider=a.provider,
        warmup_s=a.warmup_s,
        warmup_runs=a.warmup_runs,
        min_duration_s=a.min_duration,
        min_runs=a.min_runs,
        rounds=a.rounds,
        bootstrap=a.bootstrap,
        seed=a.seed,
        max_window_s=a.max_window,
        renew_sessions=not a.one_session,
    )
    given = _load_inputs(a.inputs) if a.inputs else None
    models: list[dict] = []
    ratio_rows: list[dict] = []
    runners: dict[str, dict[int, Runner]] = {}
    for label, path in zip(unique_labels(a.models), a.models, strict=True):
        session, create_s = create_ort_session(path, settings)
        models.append(
            {
                "name": label,
                **file_info(path),
                "session_create_s": round(create_s, 4),
                "providers": session.get_providers(),
            }
        )
        specs = session_input_specs(session)
        runners[label] = {}
        for b in a.batch_sizes:
            x = batch_inputs(given, b) if given is not None else random_feeds(specs, b, a.seed)
            runners[label][b] = ort_runner(session, x, lambda path=path: create_ort_session(path, settings)[0])
    total = count_windows(runners, settings)
    done = [0]

    def progress(label: str) -> None:
        done[0] += 1
        if not a.quiet:
            print(f"[{done[0]}/{total}] {label}", file=sys.stderr, flush=True)

    results = measure(runners, settings, progress, keep_samples=True)
    names = list(runners)
    for other in names[1:]:
        per_batch = ratios(results, names[0], other, bootstrap=settings.bootstrap, seed=settings.seed)
        ratio_rows.append({"numerator": names[0], "denominator": other, "per_batch": per_batch})
    results = strip_samples(results)
    flops = None if a.no_flops_probe else peak_flops(threads=settings.intra_op_threads)

    print(
        f"onnxruntime {ort.__version__}, {settings.provider}, intra-op threads {settings.intra_op_threads}, "
        f"inter-op threads {settings.inter_op_threads}, graph optimisation {settings.graph_optimization}; "
        f"one session.run per timed call, {settings.rounds} interleaved rounds pooled"
    )
    print(format_table(results))
    for ratio in ratio_rows:
        for row in ratio["per_batch"]:
            lo, hi = row["ci95"]
            print(
                f"p50 {ratio['numerator']} / {ratio['denominator']} at batch {row['batch_size']}: "
                f"{row['ratio_p50']:.2f}x (95% CI {lo:.2f}-{hi:.2f})"
            )
    rss = peak_rss_bytes()
    if flops is not None:
        print(f"peak FLOP/s probe: {flops['flops_per_s'] / 1e9:.1f} GFLOP/s ({flops['method']})")
    if rss is not None:
        print(f"peak RSS of this process: {rss / 2**20:.0f} MiB")
    if a.json:
        doc = {
            "settings": asdict(settings),
            "environment": environment(),
            "models": models,
            "results": results,
            "ratios": ratio_rows,
            "peak_flops": flops,
            "peak_rss_bytes": rss,
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
