"""Peak memory of an inference process: a fresh Python process loads one ONNX file and runs it.

An RSS delta inside the benchmark process says little (freed memory is reused, the libraries are loaded
already), so each model gets its own process. It records the peak resident set (VmHWM) after importing
numpy and onnxruntime, and again after creating the session and running one batch ``runs`` times: the second
is the inference process's peak, the difference is what the model and its session added. Like the harness it
needs only numpy and onnxruntime, so it runs on an edge device too (copied there next to harness.py):

    python -m kd2deploy.bench.memory model.onnx --batch-size 1 --threads 1
    python memory.py model.onnx --batch-size 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

METHOD = (
    "peak resident set size (VmHWM) of a fresh Python process that imports numpy + onnxruntime, creates "
    "the session (same threads and graph optimisation as the benchmark) and runs one batch {runs} times; "
    "'session' is the peak minus the peak after the imports"
)


def _peak_bytes() -> int:
    """This process's peak resident set in bytes: Linux's VmHWM, else ``ru_maxrss``.

    VmHWM belongs to the process's own address space. ``ru_maxrss`` survives ``exec``: a child started from a
    big parent (pytest, a training run) reports the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


peak_bytes = _peak_bytes  # the public name (other tasks' memory probes)


def probe(path: str, batch_size: int, threads: int, graph_optimization: str, runs: int = 5,
          inputs: str | None = None) -> dict[str, Any]:
    """Runs in the child process: imports, session, ``runs`` runs; returns the two peaks in bytes.

    ``inputs``: a .npz (one array per input name) or .npy (the model's one input) holding the batch to run, for
    models whose inputs have dynamic axes besides the batch (a text model's sequence length); else random feeds.
    """
    import numpy  # noqa: F401 - counted in the baseline, as in any inference process
    import onnxruntime  # noqa: F401

    try:
        from kd2deploy.bench.harness import HarnessSettings, create_ort_session, random_feeds, session_input_specs
    except ImportError:  # copied to a device next to harness.py, without kd2deploy
        from harness import HarnessSettings, create_ort_session, random_feeds, session_input_specs

    baseline = _peak_bytes()
    settings = HarnessSettings(intra_op_threads=threads, graph_optimization=graph_optimization)
    session, _ = create_ort_session(path, settings)
    if inputs is None:
        feeds = random_feeds(session_input_specs(session), batch_size)
    elif inputs.endswith(".npz"):
        with numpy.load(inputs) as data:
            feeds = {k: data[k] for k in data.files}
    else:
        feeds = {session.get_inputs()[0].name: numpy.load(inputs)}
    for _ in range(runs):
        session.run(None, feeds)
    peak = _peak_bytes()
    return {"peak_rss_bytes": peak, "baseline_peak_rss_bytes": baseline, "session_peak_bytes": peak - baseline}


def measure_memory(path: Path, settings: Any, batch_size: int, runs: int = 5, timeout_s: float = 120,
                   inputs: Any = None) -> dict:
    """Peak memory of ``path`` in a fresh process (see the module doc); ``inputs`` (an array, or a dict of arrays
    by input name) is the batch it runs, random feeds when None.

    Returns:
        ``peak_rss_bytes``, ``baseline_peak_rss_bytes``, ``session_peak_bytes``, ``batch_size``, ``method``;
        on failure ``error`` (a one-line reason) instead of the numbers.
    """
    cmd = [
        sys.executable, "-m", "kd2deploy.bench.memory", os.fspath(path), "--batch-size", str(batch_size),
        "--threads", str(settings.intra_op_threads), "--graph-optimization", settings.graph_optimization,
        "--runs", str(runs),
    ]
    out: dict[str, Any] = {"batch_size": batch_size, "method": METHOD.format(runs=runs)}
    with tempfile.TemporaryDirectory(prefix="kd2deploy-mem-") as tmp:
        if inputs is not None:
            import numpy as np

            feed = Path(tmp) / ("inputs.npz" if isinstance(inputs, dict) else "inputs.npy")
            np.savez(feed, **inputs) if isinstance(inputs, dict) else np.save(feed, inputs)
            cmd += ["--inputs", os.fspath(feed)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {**out, "error": f"memory probe did not finish: {type(e).__name__}"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**out, "error": f"memory probe failed: {last[:300]}"}
    return {**out, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--inputs", default=None, help=".npz (arrays by input name) or .npy: the batch to run")
    a = p.parse_args(argv)
    print(json.dumps(probe(a.model, a.batch_size, a.threads, a.graph_optimization, a.runs, a.inputs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
