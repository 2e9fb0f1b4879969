"""How much the latency harness adds to what it measures.

Interleaves, in one process, windows of ``kd2deploy.bench.harness.measure`` and windows of a bare loop::

    for _ in range(n):
        t0 = time.perf_counter_ns(); session.run(None, feeds); lat.append(time.perf_counter_ns() - t0)

on the same onnxruntime session and inputs, and prints both p50s, their difference with a bootstrap 95 %
interval, and the spread of the difference over adjacent window pairs (drift on a shared machine shows there).
A first row times an empty function in place of ``session.run``: the floor both loops add to any call.

Without ``--model`` it exports two small CNNs with random weights (a ~227k-parameter teacher and a
~10k-parameter student, 1x8x8 inputs, 10 classes) with ``torch.onnx.export(dynamo=True)``.

    python scripts/bench_overhead.py [--model a.onnx ...] [--batch-sizes 1] [--threads 1] [--pairs 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from kd2deploy.bench import harness


def export_demo_models(out_dir: Path) -> list[Path]:
    """Exports a teacher and a student CNN (random weights; latency does not depend on them)."""
    import torch
    from torch import nn

    def block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    torch.manual_seed(0)
    teacher = nn.Sequential(
        *block(1, 32, False), *block(32, 64, True), *block(64, 128, True),
        nn.Flatten(), nn.Linear(128 * 2 * 2, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip
    student = nn.Sequential(
        *block(1, 8, False),
        *block(8, 16, True),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    paths = []
    for name, net in (("teacher", teacher), ("student", student)):
        path = out_dir / f"{name}.onnx"
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, 1, 8, 8),),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["x"],
            output_names=["logits"],
            verbose=False,
        )
        params = sum(p.numel() for p in net.parameters())
        print(f"exported {name}: {params} parameters -> {path.name}")
        paths.append(path)
    return paths


def bare_window(run, feeds: dict, n: int, settings: harness.HarnessSettings) -> np.ndarray:
    """The loop a user would write: the harness's warm-up rule, then n timed ``run(None, feeds)`` calls."""
    clock = time.perf_counter_ns
    warm_ns = int(settings.warmup_s * 1e9)
    t0 = clock()
    done = 0
    while done < settings.warmup_runs or clock() - t0 < warm_ns:
        run(None, feeds)
        done += 1
    lat = []
    for _ in range(n):
        t = clock()
        run(None, feeds)
        lat.append(clock() - t)
    return np.asarray(lat, dtype=np.int64)


def compare(run, feeds: dict, settings: harness.HarnessSettings, pairs: int) -> dict:
    """Alternates harness windows (``measure`` on ``lambda: run(None, feeds)``) with bare-loop windows.

    The first harness window only calibrates: the bare loop then makes as many calls as it did.
    """
    runner = lambda: run(None, feeds)  # noqa: E731  (what harness.ort_runner builds)

    def via_harness() -> np.ndarray:
        (res,) = harness.measure({"m": {1: runner}}, settings, keep_samples=True)
        return res["samples_us"]

    n = via_harness().size
    h, b = [], []
    for i in range(pairs):
        for method in ("harness", "bare") if i % 2 == 0 else ("bare", "harness"):
            if method == "harness":
                h.append(via_harness())
            else:
                b.append(bare_window(run, feeds, n, settings) / 1e3)
    paired = [np.median(x) / np.median(y) for x, y in zip(h, b, strict=True)]
    h_all, b_all = np.concatenate(h), np.concatenate(b)
    ratio, lo, hi = harness.ratio_ci(h_all, b_all, bootstrap=1000, seed=0)
    return {
        "harness_p50": float(np.median(h_all)),
        "bare_p50": float(np.median(b_all)),
        "ratio": ratio,
        "ci": (lo, hi),
        "paired": (min(paired), float(np.median(paired)), max(paired)),
        "calls": (h_all.size, b_all.size),
    }


def noop(output_names, feeds):
    """Stands in for ``session.run``: the two loops then time only themselves."""
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", help="ONNX file (repeatable); default: demo CNNs")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--pairs", type=int, default=6, help="interleaved (harness, bare) window pairs per model")
    p.add_argument("--window", type=float, default=0.5, help="least seconds per window")
    a = p.parse_args()

    import onnxruntime as ort

    settings = harness.HarnessSettings(intra_op_threads=a.threads, min_duration_s=a.window, rounds=1)
    rows = [("no-op", "-", compare(noop, {}, settings, a.pairs))]
    with tempfile.TemporaryDirectory() as tmp:
        paths = a.model or export_demo_models(Path(tmp))
        for label, path in zip(harness.unique_labels(paths), paths, strict=True):
            session, _ = harness.create_ort_session(path, settings)
            specs = harness.session_input_specs(session)
            for batch in a.batch_sizes:
                feeds = harness.random_feeds(specs, batch, settings.seed)
                rows.append((label, batch, compare(session.run, feeds, settings, a.pairs)))

    print(
        f"\nonnxruntime {ort.__version__}, {settings.provider}, "
        f"intra-op threads {settings.intra_op_threads}, inter-op threads {settings.inter_op_threads}, "
        f"graph optimisation {settings.graph_optimization}. p50 latency per call, pooled over {a.pairs} "
        f"interleaved pairs of windows (>= {a.window:g} s each, warm-up >= {settings.warmup_s:g} s and "
        f">= {settings.warmup_runs} calls); the bare loop makes as many calls as a harness window. "
        "'no-op' times an empty Python function in place of session.run."
    )
    print(
        f"{'model':<9}{'batch':>6}{'harness p50 us':>16}{'bare p50 us':>13}{'diff':>9}  {'95% CI':<19}"
        f"{'per-pair diff min/median/max':<31}calls"
    )
    for label, batch, r in rows:
        pct = lambda x: f"{(x - 1) * 100:+.1f}%"  # noqa: E731
        lo, hi = r["ci"]
        pmin, pmed, pmax = r["paired"]
        print(
            f"{label:<9}{batch:>6}{r['harness_p50']:>16.3f}{r['bare_p50']:>13.3f}{pct(r['ratio']):>9}  "
            f"{pct(lo) + ' to ' + pct(hi):<19}{pct(pmin) + ' / ' + pct(pmed) + ' / ' + pct(pmax):<31}"
            f"{r['calls'][0]} / {r['calls'][1]}"
        )


if __name__ == "__main__":
    main()
