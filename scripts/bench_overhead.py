"""How much the latency harness adds to what it measures.

Interleaves, in one process, windows of ``kd2deploy.bench.harness.measure`` and windows of a bare loop::

    for _ in range(n):
        t0 = time.perf_counter_ns(); session.run(None, feeds); lat.append(time.perf_counter_ns() - t0)

on the same onnxruntime session and inputs, and prints both p50s and their difference with a bootstrap 95 %
interval. Without ``--model`` it exports two small CNNs with random weights (a ~227k-parameter teacher and a
~10k-parameter student, 1x8x8 inputs, 10 classes) with ``torch.onnx.export(dynamo=True)``.

    python scripts/bench_overhead.py [--model a.onnx ...] [--batch-sizes 1] [--threads 1] [--pairs 4]
"""

from __future__ import annotations

import argparse
import math
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


def bare_window(session, feeds: dict, n: int, settings: harness.HarnessSettings) -> np.ndarray:
    """The loop a user would write: same warm-up rule as the harness, then n timed ``session.run`` calls."""
    run = session.run
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", help="ONNX file (repeatable); default: demo CNNs")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--pairs", type=int, default=4, help="interleaved (harness, bare) window pairs per model")
    p.add_argument("--window", type=float, default=1.0, help="seconds per window")
    a = p.parse_args()

    import onnxruntime as ort

    settings = harness.HarnessSettings(intra_op_threads=a.threads, min_duration_s=a.window, rounds=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = a.model or export_demo_models(Path(tmp))
        rows = []
        for label, path in zip(harness.unique_labels(paths), paths, strict=True):
            session, _ = harness.create_ort_session(path, settings)
            specs = harness.session_input_specs(session)
            for batch in a.batch_sizes:
                feeds = harness.random_feeds(specs, batch, settings.seed)
                runner = harness.ort_runner(session, feeds)
                # calls per bare window: enough for the window's duration, like the harness's stopping rule
                probe = bare_window(session, feeds, 200, settings)
                n = max(settings.min_runs, math.ceil(a.window * 1e9 / probe.mean()))
                via_harness, bare = [], []
                for i in range(a.pairs):
                    for method in ("harness", "bare") if i % 2 == 0 else ("bare", "harness"):
                        if method == "harness":
                            (res,) = harness.measure({label: {batch: runner}}, settings, keep_samples=True)
                            via_harness.append(res["samples_us"])
                        else:
                            bare.append(bare_window(session, feeds, n, settings) / 1e3)
                h, b = np.concatenate(via_harness), np.concatenate(bare)
                ratio, lo, hi = harness.ratio_ci(h, b, bootstrap=1000, seed=0)
                rows.append((label, batch, np.median(h), np.median(b), ratio, lo, hi, h.size, b.size))

    print(
        f"\nonnxruntime {ort.__version__}, {settings.provider}, "
        f"intra-op threads {settings.intra_op_threads}, "
        f"inter-op threads {settings.inter_op_threads}, graph optimisation {settings.graph_optimization}; "
        f"p50 latency per session.run call, {a.pairs} interleaved window pairs of ~{a.window:g} s per model "
        f"and batch size (warm-up >= {settings.warmup_s:g} s and >= {settings.warmup_runs} calls per window)"
    )
    head = f"{'model':<10}{'batch':>6}{'harness p50 us':>16}{'bare p50 us':>13}{'difference':>12}  95% CI"
    print(head)
    for label, batch, hp50, bp50, ratio, lo, hi, nh, nb in rows:
        print(
            f"{label:<10}{batch:>6}{hp50:>16.2f}{bp50:>13.2f}{(ratio - 1) * 100:>+11.1f}%  "
            f"{(lo - 1) * 100:+.1f}% to {(hi - 1) * 100:+.1f}%   ({nh} vs {nb} calls)"
        )


if __name__ == "__main__":
    main()
