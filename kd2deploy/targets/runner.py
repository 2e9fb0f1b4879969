"""Checking and benchmarking a target: bundles, jobs, and the entry that results.json keeps per target.

``check_target`` connects, runs the agent's probe and returns the target's facts. ``bench_on_target`` checks
first (a missing numpy / onnxruntime, or too little free disk, is one line before any model is sent), then sends
the harness, the models and real inputs, and returns the latency, memory and energy measured there with the
sha256 of every file timed (compared with the local file's).
"""

from __future__ import annotations

import io
import json
import statistics
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kd2deploy.targets.config import TargetConfig
from kd2deploy.targets.ssh import REMOTE, TargetError, run_job

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
PROBE_TIMEOUT_S = 60.0


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def make_bundle(job: dict[str, Any], files: Mapping[str, bytes | Path] = {}) -> bytes:  # noqa: B006
    """A .tar.gz of the remote code (agent, sensors, harness, memory probe), ``job.json`` and ``files``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name in ("agent.py", "sensors.py"):
            _add(tar, name, (REMOTE / name).read_bytes())
        for name in ("harness.py", "memory.py"):
            _add(tar, name, (BENCH_DIR / name).read_bytes())
        _add(tar, "job.json", json.dumps(job).encode())
        for name, data in files.items():
            _add(tar, name, data if isinstance(data, bytes) else Path(data).read_bytes())
    return buf.getvalue()


def _missing_line(t: TargetConfig, facts: dict[str, Any]) -> str:
    errs = facts.get("import_errors") or {}
    why = "; ".join(f"{k}: {v}" for k, v in errs.items())
    return (f"{t.python} on the target ({facts.get('python_executable')}, Python {facts.get('python')}) cannot "
            f"import {' and '.join(sorted(errs))} ({why}); install them there: {t.python} -m pip install numpy "
            "onnxruntime")


def _remote_error(t: TargetConfig, doc: dict[str, Any], stderr: str = "") -> TargetError:
    err = doc["error"]
    if err == "python_version":
        facts = doc.get("facts") or {}
        return TargetError(t.name, f"{t.python} on the target is Python {facts.get('python')}; the harness needs "
                           "Python 3.9 or newer (set python: to a newer one)", "python")
    if err == "missing":
        return TargetError(t.name, _missing_line(t, doc.get("facts") or {}), "python")
    if err == "timeout":
        return TargetError(t.name, f"the remote benchmark exceeded its timeout of {doc['timeout_s']:g} s "
                           "(timeout_s); it was stopped and its temporary folder removed", "timeout")
    if err == "killed":
        return TargetError(t.name, f"the remote benchmark process was killed ({doc['signal']}; out of memory, or "
                           "stopped by someone on the target); its temporary folder was removed", "killed")
    if err == "disk_full":
        free = doc.get("free_bytes")
        return TargetError(t.name, f"the target's disk is full ({doc.get('detail')}"
                           + (f"; {free / 2**20:.1f} MiB free, {doc.get('bundle_bytes', 0) / 2**20:.1f} MiB "
                              "needed" if free is not None else "") + "); set workdir: to a folder with room",
                           "disk_full")
    if err == "bench":
        return TargetError(t.name, f"onnxruntime on the target refused: {doc.get('detail')}", "bench")
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    detail = doc.get("detail") or (f"exit {doc.get('returncode')}" + (f": {last[:300]}" if last else ""))
    return TargetError(t.name, f"the remote job failed ({err}: {detail})", "remote")


def check_target(t: TargetConfig) -> dict[str, Any]:
    """Connects and returns the target's facts (``import_errors`` lists a missing numpy / onnxruntime).

    Raises:
        TargetError: the target cannot be reached or the probe failed.
    """
    reply = run_job(t, make_bundle({"action": "probe", "sensor": t.energy.sensor}), PROBE_TIMEOUT_S)
    doc = reply.doc
    if "facts" not in doc or doc.get("error") == "python_version":
        raise _remote_error(t, doc, reply.stderr)
    return doc["facts"]


def format_facts(t: TargetConfig, facts: dict[str, Any]) -> list[str]:
    """``targets check``'s lines for one target."""
    mem = facts.get("memory") or {}

    def gib(b: int | None) -> str:
        return f"{b / 2**30:.1f} GiB" if b else "?"

    sensor = facts.get("energy_sensor")
    lines = [
        f"target {t.name} ({t.ssh}): reachable",
        f"  cpu: {facts.get('cpu_model')} ({facts.get('machine')}), {facts.get('usable_cpus')} usable of "
        f"{facts.get('logical_cpus')} logical cores; memory {gib(mem.get('total_bytes'))} "
        f"({gib(mem.get('available_bytes'))} available)",
        f"  os: {facts.get('os')}",
        f"  python: {facts.get('python')} ({facts.get('python_executable')}); numpy {facts.get('numpy') or 'MISSING'}"
        f"; onnxruntime {facts.get('onnxruntime') or 'MISSING'}"
        + (f" ({', '.join(facts.get('onnxruntime_providers') or [])})" if facts.get("onnxruntime") else ""),
        f"  free disk: {gib(facts.get('free_disk_bytes'))} in {facts.get('workdir')}",
        "  energy: " + (f"measured ({sensor['source']})" if sensor else
                        (f"modelled (cpu_power_w {t.energy.cpu_power_w:g} W); " if t.energy.cpu_power_w else
                         "none (no sensor and no energy.cpu_power_w); ")
                        + "sensors: " + "; ".join(f"{k}: {v}" for k, v in
                                                 (facts.get("energy_sensors_found") or {}).items())),
    ]
    if facts.get("import_errors"):
        lines.append(f"  problem: {_missing_line(t, facts)}")
    return lines


def _energy_summary(raw: dict[str, Any] | None, cpu_power_w: float | None,
                    pairs: Sequence[tuple[str, str]]) -> dict[str, Any] | None:
    """Energy per inference with its spread, labelled measured (a sensor read there) or modelled (a profile)."""
    if raw is None:
        return None
    from kd2deploy.energy.meter import mean_sd

    sensor = raw.get("sensor")
    base = {"window_s": raw["window_s"], "repeats": raw["repeats"], "batch_size": raw["batch_size"],
            "sensors_found": raw.get("sensors_found")}
    if sensor is not None:
        label, how = "measured", f"measured ({sensor['source']})"
        method = (f"{sensor['source']} read around each {raw['window_s']:g} s window of back-to-back inferences "
                  "on the target, interleaved with idle windows of the same length; gross = window energy / "
                  "inferences, active = (window energy - idle power x window time) / inferences")
    elif cpu_power_w is not None:
        label, how = "modelled", f"modelled (cpu_power_w {cpu_power_w:g} W profile, no sensor read on the target)"
        method = (f"the target's profile power {cpu_power_w:g} W x each {raw['window_s']:g} s window's time on the "
                  "target / inferences run in it; no idle subtraction (a constant power has none)")
    else:
        return {**base, "label": None, "label_text": "not available", "models": {}, "ratios": {},
                "reason": "no energy sensor readable on the target and no energy.cpu_power_w for it; sensors: "
                + "; ".join(f"{k}: {v}" for k, v in (raw.get("sensors_found") or {}).items())}

    def joules(w: dict[str, Any]) -> float:
        return w["energy_j"] if sensor is not None else cpu_power_w * w["duration_s"]

    idle = raw.get("idle") or []
    p_idle = mean_sd([joules(w) / w["duration_s"] for w in idle]) if idle and sensor is not None else None
    models = {}
    for name, windows in raw["windows"].items():
        gross = mean_sd([joules(w) / w["inferences"] for w in windows])
        active = None
        if p_idle is not None and p_idle["mean"] is not None:
            active = mean_sd([(joules(w) - p_idle["mean"] * w["duration_s"]) / w["inferences"] for w in windows])
        models[name] = {"j_per_inference_gross": gross, "j_per_inference_active": active,
                        "mean_power_w": statistics.fmean(joules(w) / w["duration_s"] for w in windows),
                        "inferences_per_window": [w["inferences"] for w in windows], "windows": windows}
    ratios = {}
    for a, b in pairs:
        if a in models and b in models:
            ma, mb = models[a], models[b]
            row = {"gross": ma["j_per_inference_gross"]["mean"] / mb["j_per_inference_gross"]["mean"]}
            if ma["j_per_inference_active"] and mb["j_per_inference_active"] \
                    and mb["j_per_inference_active"]["mean"] > 0 and ma["j_per_inference_active"]["mean"] > 0:
                row["active"] = ma["j_per_inference_active"]["mean"] / mb["j_per_inference_active"]["mean"]
            ratios[f"{a}/{b}"] = row
    return {**base, "label": label, "label_text": how, "method": method, "sensor": sensor,
            "idle_power_w": p_idle, "models": models, "ratios": ratios}


def bench_on_target(
    t: TargetConfig,
    models: Mapping[str, str | Path],
    *,
    batch_sizes: Sequence[int],
    settings: Any,
    inputs: Any = None,
    pairs: Sequence[tuple[str, str]] = (),
    energy: Mapping[str, Any] | None = None,
    memory_batch_size: int | None = 1,
    flops_probe: bool = True,
    progress: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """Benchmarks ``models`` ({label: ONNX file}) on target ``t``; returns its results entry.

    Args:
        settings: a :class:`~kd2deploy.bench.harness.HarnessSettings` (its provider is replaced by the target's).
        inputs: real inputs (an array, or a dict of arrays for multi-input models), sent as .npy / .npz; None
            times random inputs.
        pairs: (numerator, denominator) labels whose p50 ratio (and energy ratio) to compute, e.g.
            ("teacher", "student") for the student's speed-up.
        energy: ``{"window_s", "repeats", "batch_size", "idle"}`` to measure energy there, or None.

    Raises:
        TargetError: one line naming the target (unreachable, refused key, unknown host key, missing
            onnxruntime, not enough disk, timeout, killed, a file onnxruntime refuses).
    """
    import numpy as np

    from kd2deploy.bench.harness import file_info

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    say(f"{t.name}: checking {t.ssh}")
    facts = check_target(t)
    if facts.get("import_errors"):
        raise TargetError(t.name, _missing_line(t, facts), "python")
    missing = [p for p in t.providers if p not in (facts.get("onnxruntime_providers") or [])]
    if missing:
        raise TargetError(t.name, f"onnxruntime {facts.get('onnxruntime')} on the target has no "
                          f"{', '.join(missing)} (it has {', '.join(facts.get('onnxruntime_providers') or [])})",
                          "bench")
    local = {name: file_info(path) for name, path in models.items()}
    files: dict[str, bytes | Path] = {f"models/m{i}.onnx": Path(p) for i, p in enumerate(models.values())}
    inputs_name = None
    if inputs is not None:
        buf = io.BytesIO()
        if isinstance(inputs, Mapping):
            np.savez(buf, **{k: np.asarray(v) for k, v in inputs.items()})
            inputs_name = "inputs.npz"
        else:
            np.save(buf, np.asarray(inputs), allow_pickle=False)
            inputs_name = "inputs.npy"
        files[inputs_name] = buf.getvalue()
    s = settings.__class__(**{**asdict(settings), "provider": t.providers[0],
                              "intra_op_threads": t.threads or settings.intra_op_threads})
    job = {"action": "bench", "sensor": t.energy.sensor, "settings": asdict(s), "providers": list(t.providers),
           "models": [{"name": n, "file": f"models/m{i}.onnx"} for i, n in enumerate(models)],
           "inputs": inputs_name, "batch_sizes": list(batch_sizes), "pairs": [list(p) for p in pairs],
           "energy": None if energy is None else {**energy, "sensor": t.energy.sensor},
           "memory_batch_size": memory_batch_size, "flops_probe": flops_probe}
    bundle = make_bundle(job, files)
    free = facts.get("free_disk_bytes")
    if free is not None and free < 2 * len(bundle) + (8 << 20):
        raise TargetError(t.name, f"the target's disk is full: {free / 2**20:.1f} MiB free in {facts.get('workdir')}"
                          f", about {2 * len(bundle) / 2**20 + 8:.1f} MiB needed; set workdir: to a folder with room",
                          "disk_full")
    say(f"{t.name}: sending {len(bundle) / 2**20:.1f} MiB and benchmarking {', '.join(models)}")
    reply = run_job(t, bundle, t.timeout_s, on_line=lambda line: say(f"{t.name}: {line}"))
    doc = reply.doc
    if "error" in doc:
        raise _remote_error(t, doc, reply.stderr)
    for m in doc["models"]:
        m["sha256_local"] = local[m["name"]]["sha256"]
        m["sha256_match"] = m["sha256"] == m["sha256_local"]
        if not m["sha256_match"]:
            raise TargetError(t.name, f"{m['name']}: the file timed on the target has sha256 {m['sha256'][:12]}, "
                              f"not the local file's {m['sha256_local'][:12]} (corrupted in transfer)", "remote")
    return {
        "name": t.name,
        "ssh": t.ssh,
        "status": "ok",
        "facts": doc["facts"],
        "environment": doc["environment"],
        "settings": {**asdict(s), "providers": list(t.providers), "batch_sizes": list(batch_sizes),
                     "inputs": "real test inputs" if inputs is not None else "random inputs"},
        "models": doc["models"],
        "results": doc["results"],
        "ratios": doc["ratios"],
        "memory": doc.get("memory"),
        "energy": _energy_summary(doc.get("energy"), t.energy.cpu_power_w, pairs),
        "peak_flops": doc.get("peak_flops"),
        "wall_s": round(time.perf_counter() - t0, 2),
        "transfer_bytes": len(bundle),
        "method": "the standalone harness (numpy + onnxruntime) ran on the target over ssh, in a fresh temporary "
                  "folder removed afterwards; per-call latency of session.run, interleaved rounds, bootstrap 95 % "
                  "intervals; the sha256 of each file timed was computed there and matched the local file",
    }


def missing_entry(t: TargetConfig, error: TargetError) -> dict[str, Any]:
    """The results entry of a target that failed (the report says which and why)."""
    return {"name": t.name, "ssh": t.ssh, "status": "missing", "reason": error.reason, "kind": error.kind}
