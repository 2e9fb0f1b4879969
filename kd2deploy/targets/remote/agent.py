"""Runs on the target, inside the temporary folder the bootstrap made: ``python agent.py job.json result.json``.

Imports only the standard library until the job needs more; the benchmark imports numpy, onnxruntime and the
copied ``harness.py`` / ``memory.py`` / ``sensors.py`` next to it. Writes one JSON document to result.json:

- ``{"action": "probe"}``: the target's facts (CPU, cores, OS, Python, numpy, onnxruntime and its providers,
  memory, free disk, energy sensors).
- ``{"action": "bench", ...}``: facts, then every model's sha256, latency (the harness: interleaved rounds,
  bootstrap intervals, teacher/student ratios), peak memory in a fresh process, and energy windows read from a
  sensor around each window with idle windows of the same length.
- ``{"error": "missing", "modules": [...]}`` when numpy or onnxruntime cannot be imported.
"""
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_PYTHON = (3, 9)  # harness.py subscripts builtin generics at import time
sys.path.insert(0, HERE)


def _version(module):
    try:
        mod = __import__(module)
    except Exception as e:  # noqa: BLE001 - an ImportError, or a broken build that fails while importing
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return mod, getattr(mod, "__version__", "?")


def _meminfo():
    out = {}
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return {"total_bytes": out.get("MemTotal"), "available_bytes": out.get("MemAvailable")}


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def facts(sensor_choice="auto"):
    """What the target is and has."""
    import sensors

    numpy, numpy_v = _version("numpy")
    ort, ort_v = _version("onnxruntime") if numpy is not None else (None, "not tried (numpy is missing)")
    sensor, notes = sensors.discover(sensor_choice)
    disk = shutil.disk_usage(os.path.dirname(HERE))
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": _meminfo(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "numpy": numpy_v if numpy is not None else None,
        "onnxruntime": ort_v if ort is not None else None,
        "onnxruntime_providers": ort.get_available_providers() if ort is not None else [],
        "import_errors": {k: v for k, (m, v) in (("numpy", (numpy, numpy_v)), ("onnxruntime", (ort, ort_v)))
                          if m is None},
        "workdir": os.path.dirname(HERE),
        "free_disk_bytes": disk.free,
        "energy_sensor": None if sensor is None else {"kind": sensor.kind, "source": sensor.source},
        "energy_sensors_found": notes,
        "nvidia_smi": shutil.which("nvidia-smi"),
    }


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _memory(path, batch_size, threads, graph_opt, providers):
    cmd = [sys.executable, os.path.join(HERE, "memory.py"), path, "--batch-size", str(batch_size), "--threads",
           str(threads), "--graph-optimization", graph_opt]
    if providers[0] != "CPUExecutionProvider":
        return {"error": f"memory probe runs on CPUExecutionProvider only; skipped for {providers[0]}"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=HERE)
    if done.returncode != 0:
        return {"error": "memory probe failed: " + ((done.stderr.strip().splitlines() or ["?"])[-1])[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _energy(runners, plan, log):
    """Interleaved fixed-length windows per model and idle windows, each read from the sensor around it."""
    import sensors

    sensor, notes = sensors.discover(plan["sensor"])
    window_s, repeats = plan["window_s"], plan["repeats"]
    slots = list(runners) + (["__idle__"] if plan["idle"] else [])
    got = {s: [] for s in slots}
    for fn, _ in runners.values():
        for _ in range(3):
            fn()
    for r in range(repeats):
        k = r % len(slots)
        for name in slots[k:] + slots[:k]:
            token = sensor.begin() if sensor is not None else None
            t0 = time.perf_counter()
            calls = 0
            if name == "__idle__":
                time.sleep(window_s)
            else:
                fn, batch = runners[name]
                end = t0 + window_s
                while True:
                    fn()
                    calls += 1
                    if time.perf_counter() >= end:
                        break
            duration = time.perf_counter() - t0
            joules = sensor.end(token) if sensor is not None else None
            got[name].append({"energy_j": joules, "duration_s": duration,
                              "inferences": 0 if name == "__idle__" else calls * runners[name][1]})
            log(f"energy {'idle' if name == '__idle__' else name} round {r + 1}/{repeats}")
    return {
        "sensor": None if sensor is None else {"kind": sensor.kind, "source": sensor.source},
        "sensors_found": notes,
        "window_s": window_s,
        "repeats": repeats,
        "batch_size": plan["batch_size"],
        "windows": {k: v for k, v in got.items() if k != "__idle__"},
        "idle": got.get("__idle__"),
    }


def bench(job):
    import harness
    import numpy as np

    def log(msg):
        print(f"[target] {msg}", file=sys.stderr, flush=True)

    s = harness.HarnessSettings(**job["settings"])
    providers = list(job["providers"])
    if providers[-1] != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    given = None
    if job.get("inputs"):
        data = np.load(os.path.join(HERE, job["inputs"]), allow_pickle=False)
        given = data if isinstance(data, np.ndarray) else {k: data[k] for k in data.files}
    models, runners = [], {}
    for m in job["models"]:
        path = os.path.join(HERE, m["file"])
        session, create_s = harness.create_ort_session(path, s, providers=providers)
        info = {"name": m["name"], "file": m["file"], "size_bytes": os.path.getsize(path), "sha256": _sha256(path),
                "session_create_s": round(create_s, 4), "providers": session.get_providers()}
        models.append(info)
        specs = harness.session_input_specs(session)
        runners[m["name"]] = {}
        for b in job["batch_sizes"]:
            x = harness.batch_inputs(given, b) if given is not None else harness.random_feeds(specs, b, s.seed)
            runners[m["name"]][b] = harness.ort_runner(
                session, x, lambda path=path: harness.create_ort_session(path, s, providers=providers)[0])
    total = harness.count_windows(runners, s)
    done = [0]

    def progress(label):
        done[0] += 1
        log(f"[{done[0]}/{total}] {label}")

    results = harness.measure(runners, s, progress, keep_samples=True)
    ratios = [{"numerator": a, "denominator": b,
               "per_batch": harness.ratios(results, a, b, bootstrap=s.bootstrap, seed=s.seed)}
              for a, b in job.get("pairs", []) if a in runners and b in runners]
    out = {"models": models, "results": harness.strip_samples(results), "ratios": ratios}
    if job.get("memory_batch_size"):
        out["memory"] = {m["name"]: _memory(os.path.join(HERE, m["file"]), job["memory_batch_size"],
                                            s.intra_op_threads, s.graph_optimization, providers)
                         for m in job["models"]}
    plan = job.get("energy")
    if plan:
        b = plan["batch_size"]
        by_model = {}
        for m in job["models"]:
            r = runners[m["name"]].get(b)
            if r is None:
                path = os.path.join(HERE, m["file"])
                sess = harness.create_ort_session(path, s, providers=providers)[0]
                x = (harness.batch_inputs(given, b) if given is not None
                     else harness.random_feeds(harness.session_input_specs(sess), b, s.seed))
                r = harness.ort_runner(sess, x)
            by_model[m["name"]] = (r, b)
        out["energy"] = _energy(by_model, plan, log)
    out["peak_flops"] = harness.peak_flops(threads=s.intra_op_threads) if job.get("flops_probe") else None
    out["environment"] = harness.environment()
    return out


def main():
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    t0 = time.perf_counter()
    doc = {"facts": facts(job.get("sensor", "auto"))}
    missing = sorted(doc["facts"]["import_errors"])
    if sys.version_info < MIN_PYTHON:
        doc["error"] = "python_version"
    elif missing:
        doc["error"] = "missing"
        doc["modules"] = missing
    elif job["action"] == "bench":
        try:
            doc.update(bench(job))
        except (ValueError, RuntimeError) as e:  # a file onnxruntime refuses, a provider it lacks
            doc["error"] = "bench"
            doc["detail"] = (str(e).strip().splitlines() or [type(e).__name__])[0][:500]
        except Exception as e:  # noqa: BLE001 - anything else still comes back as one line
            doc["error"] = "agent"
            doc["detail"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:400]}"
    doc["agent_wall_s"] = round(time.perf_counter() - t0, 3)
    tmp = result_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, result_path)


if __name__ == "__main__":
    main()
