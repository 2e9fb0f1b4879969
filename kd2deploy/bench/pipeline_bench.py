"""The pipeline's benchmark and inference-energy stages: the harness applied to a run's exported models."""

from __future__ import annotations

from typing import Any

from kd2deploy import ui
from kd2deploy.errors import StageError

# Models compared in every run: the exported teacher and the shipped student.
COMPARED = ("teacher", "student")


def harness_settings(cfg) -> Any:
    from kd2deploy.bench.harness import HarnessSettings

    return HarnessSettings(
        intra_op_threads=cfg.intra_op_threads, inter_op_threads=cfg.inter_op_threads,
        graph_optimization=cfg.graph_optimization, warmup_s=cfg.warmup_s, warmup_runs=cfg.warmup_runs,
        min_duration_s=cfg.min_duration_s, min_runs=cfg.min_runs, rounds=cfg.rounds,
        renew_sessions=cfg.renew_sessions, max_window_s=cfg.max_window_s,
    )


def _runners(state, settings, inputs) -> tuple[dict[str, dict[int, Any]], dict[str, Any], list[dict]]:
    """Runners per (model label, batch size) for every configured backend; skipped backends with reasons."""
    from kd2deploy.bench.backends import BACKENDS

    cfg = state.cfg.benchmark
    runners: dict[str, dict[int, Any]] = {}
    setup: dict[str, Any] = {}
    skipped: list[dict] = []
    for backend_name in cfg.backends:
        backend = BACKENDS.get(backend_name)
        ok, reason = backend.available()
        if not ok:
            if cfg.required:
                raise StageError(f"benchmark.backends: {backend_name} is unavailable here: {reason}")
            skipped.append({"backend": backend_name, "reason": reason})
            ui.warn(f"benchmark: skipped {backend_name}: {reason}")
            continue
        for model in COMPARED:
            label = model if backend_name == "onnxruntime-cpu" else f"{model}@{backend_name}"
            source = state.onnx[model] if not backend_name.startswith("torch") else getattr(state, model)
            loaded = backend.load(source, settings, batch_sizes=tuple(inputs))
            runners[label] = {b: loaded.runner(x) for b, x in inputs.items()}
            setup[label] = {"backend": backend_name, "model": model, "setup_s": loaded.setup_s, **loaded.info}
    if state.variants:
        # Compressed variants on onnxruntime's CPU provider (the target of INT8); an A/A control per FP32 model
        # with variants (the same file in a second session) at the batch the shipping guard judges, so the
        # guard knows how far two identical models differ here.
        ort_cpu = BACKENDS.get("onnxruntime-cpu")
        for label, (_, path) in state.variants.items():
            loaded = ort_cpu.load(path, settings, batch_sizes=tuple(inputs))
            runners[label] = {b: loaded.runner(x) for b, x in inputs.items()}
            setup[label] = {"backend": "onnxruntime-cpu", "model": label, "setup_s": loaded.setup_s, **loaded.info}
        b = state.cfg.ship.batch_size
        for model in dict.fromkeys(m for m, _ in state.variants.values()):
            loaded = ort_cpu.load(state.onnx[model], settings, batch_sizes=(b,))
            runners[f"{model}@aa"] = {b: loaded.runner(inputs[b])}
            setup[f"{model}@aa"] = {"backend": "onnxruntime-cpu", "model": model, "setup_s": loaded.setup_s,
                                    "control": "A/A: the FP32 file again in a second session", **loaded.info}
    if cfg.torch_baseline:
        label = "teacher@torch-eager-cpu"
        loaded = BACKENDS.get("torch-eager-cpu").load(state.teacher, settings, batch_sizes=tuple(inputs))
        runners[label] = {b: loaded.runner(x) for b, x in inputs.items()}
        setup[label] = {"backend": "torch-eager-cpu", "model": "teacher", "setup_s": loaded.setup_s, **loaded.info}
    return runners, setup, skipped


def benchmark_models(state, progress) -> dict[str, Any]:
    """Latency of teacher and student (and variants, baselines), interleaved round by round, at every configured
    batch size and every input shape the task sweeps (the first shape is the primary one)."""
    from kd2deploy.bench.harness import count_windows, measure, peak_flops_probe, ratios, strip_samples
    from kd2deploy.bench.memory import METHOD, measure_memory

    cfg = state.cfg.benchmark
    task = state.task
    settings = harness_settings(cfg)
    shapes = task.bench_shapes()
    files = {**{name: state.onnx[name] for name in COMPARED},
             **{label: p for label, (_, p) in state.variants.items()}}
    biggest = max(cfg.batch_sizes)
    biggest_batch = task.bench_inputs(biggest, shapes[0])  # real inputs: text models have a dynamic sequence axis
    memory = {label: measure_memory(path, settings, biggest, inputs=biggest_batch) for label, path in files.items()}
    results, ratio_rows, setup, skipped = [], [], {}, []
    for shape in shapes:
        inputs = {b: task.bench_inputs(b, shape) for b in cfg.batch_sizes}
        runners, setup, skipped = _runners(state, settings, inputs)
        desc = "".join(f" {k} {v}" for k, v in shape.items())
        ptask = progress.add_task("benchmark" + desc, total=count_windows(runners, settings), info="")
        rows = measure(runners, settings, keep_samples=True,
                       progress=lambda label, ptask=ptask: progress.update(ptask, advance=1, info=label))
        for r in rows:
            r.update(shape)
        pairs = [("teacher", "student")]
        if "teacher@torch-eager-cpu" in runners:
            pairs.append(("teacher@torch-eager-cpu", "student"))
        pairs += [(model, label) for label, (model, _) in state.variants.items()]
        for num, den in pairs:
            for r in ratios(rows, num, den, bootstrap=settings.bootstrap, seed=settings.seed):
                ratio_rows.append({"numerator": num, "denominator": den, **shape, **r})
        results += rows
    primary = shapes[0]

    def is_primary(r: dict[str, Any]) -> bool:
        return all(r.get(k) == v for k, v in primary.items())

    peak = peak_flops_probe(threads=settings.intra_op_threads)
    models = {}
    for name in COMPARED:
        facts = task.facts(state, name, getattr(state, name))
        flops = facts.get("flops_per_sample")
        models[name] = {**facts, "size_bytes": state.onnx[name].stat().st_size,
                        "floor_us": flops / peak * 1e6 if peak and flops else None, "memory": memory[name]}
    for label, (model, path) in state.variants.items():
        models[label] = {**models[model], "variant_of": model, "size_bytes": path.stat().st_size,
                         "floor_us": None, "memory": memory[label]}  # INT8/FP16 arithmetic: no FP32 floor
    state.latency = [r for r in results if is_primary(r)]
    short = [r for r in results if r.get("window_short")]
    warnings = [f"{len(short)} benchmark window(s) ended on the time budget (benchmark.max_window_s "
                f"{cfg.max_window_s:g} s) before min_runs {cfg.min_runs}, e.g. {short[0]['model']} at batch "
                f"{short[0]['batch_size']} after {short[0]['runs']} calls: its interval is wider"] if short else []
    warnings += [f"peak memory of {label} not measured: {m['error']}" for label, m in memory.items() if "error" in m]
    for w in warnings:
        state.warn(w)
    p50 = {(r["model"], r["batch_size"]): r["p50_us"] for r in state.latency}
    b0 = cfg.batch_sizes[0]
    ui.step(f"benchmark (onnxruntime CPU, {cfg.intra_op_threads} thread(s), batch {b0}"
            + "".join(f", {k} {v}" for k, v in primary.items()) + f", p50): "
            f"teacher {p50[('teacher', b0)]:.1f} µs, student {p50[('student', b0)]:.1f} µs")
    stripped = strip_samples(results)
    return {
        "settings": {**settings.__dict__, "backends": cfg.backends, "torch_baseline": cfg.torch_baseline,
                     "batch_sizes": cfg.batch_sizes, "shapes": shapes, "percentiles": [50, 90, 99],
                     "timer": "time.perf_counter_ns around each run call",
                     "inputs": "real test-split samples, prebuilt" + ("".join(
                         f"; {k} fixed per window" for k in primary))},
        "setup": setup,
        "skipped": skipped,
        "results": [r for r in stripped if is_primary(r)],
        "results_all": stripped,
        "ratios": [r for r in ratio_rows if is_primary(r)],
        "ratios_all": ratio_rows,
        "models": models,
        "memory_method": METHOD.format(runs=5),
        "peak_flops_per_s": peak,
        "peak_flops_method": f"float32 256x256 numpy matmul, {settings.intra_op_threads} BLAS thread(s)",
    }


def inference_energy(state, progress) -> dict[str, Any]:
    """Energy per inference of the FP32 teacher and the student that ships (the FP32 student or the variant the
    shipping guard picked; ``student_file`` says which), onnxruntime CPU, with an idle baseline."""
    from kd2deploy.bench.harness import create_ort_session, ort_runner
    from kd2deploy.energy.meter import measure_inference_energy

    cfg = state.cfg.energy
    if not cfg.enabled:
        return {"enabled": False}
    settings = harness_settings(state.cfg.benchmark)
    x = state.task.bench_inputs(cfg.batch_size, state.task.bench_shapes()[0])
    # "student" is the file that ships: the shipping guard's pick (stage "select") when it chose a variant
    shipped = ((state.results.get("variants") or {}).get("student") or {}).get("selection", {}).get("shipped")
    files = {name: state.onnx[name] for name in COMPARED}
    if shipped and shipped in state.variants:
        files["student"] = state.variants[shipped][1]
    runners = {}
    for name in COMPARED:
        session, _ = create_ort_session(files[name], settings)
        runners[name] = (ort_runner(session, x), cfg.batch_size)
    n_windows = (len(runners) + int(cfg.idle_baseline)) * cfg.repeats
    task = progress.add_task("energy windows", total=n_windows, info="")
    res = measure_inference_energy(
        state.meter, runners, cfg.window_s, cfg.repeats, idle=cfg.idle_baseline,
        progress=lambda done, total, label: progress.update(task, completed=done, info=label),
    )
    m = res["models"]
    res["student_file"] = files["student"].relative_to(state.dir).as_posix() if files["student"].is_relative_to(
        state.dir) else str(files["student"])

    def ratio(key: str) -> float | None:
        t, s = ((m[n].get(key) or {}).get("mean") for n in COMPARED)
        return t / s if t is not None and s is not None and t > 0 and s > 0 else None

    res["ratio_gross"] = ratio("j_per_inference_gross")
    res["ratio_active"] = ratio("j_per_inference_active")
    if cfg.idle_baseline and res["ratio_active"] is None:
        state.warn(
            "idle-subtracted (active) energy per inference was not above the idle baseline for every model "
            f"(windows of {cfg.window_s:g} s x {cfg.repeats}); the headline uses gross energy. Lengthen "
            "energy.window_s or energy.repeats to resolve it.")
    res["training"] = [r.as_dict() for r in state.meter.records if r.label.startswith("train:")]
    reused = [rec["energy"] for rec in (state.results["models"]["teacher"], state.results["distill"])
              if (rec.get("energy") or {}).get("reused")]  # trained in an earlier run: named, not counted
    order = ["train:teacher", "train:students"]
    res["training"] = sorted(res["training"] + reused, key=lambda t: order.index(t["label"])
                             if t["label"] in order else len(order))
    if res["label"] == "modelled":
        state.warn(
            "energy figures are modelled, not measured: " + res["explanation"])
    basis = "active" if res["ratio_active"] else "gross"
    ratio_v = res["ratio_active"] or res["ratio_gross"]
    ui.step(f"energy ({res['label']}, {basis}): teacher/student energy per inference "
            + (f"{ratio_v:.1f}x" if ratio_v else "not resolvable") + f" (batch {cfg.batch_size})")
    return res
