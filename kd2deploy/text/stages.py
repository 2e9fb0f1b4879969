"""The text pipeline (``task: text``): data -> teacher -> students -> export -> variants -> benchmark -> energy
-> ship -> report, over a run folder like the tensor pipeline's.

It reuses the tensor pipeline's pieces: the run folder and logging, the CodeCarbon meter, the latency harness,
the variant makers and the shipping guard. Not built for text: the stage cache / resume, controls, sweeps.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from kd2deploy import __version__, ui
from kd2deploy.errors import ConfigError, StageError
from kd2deploy.rundir import new_run_dir, write_atomic, write_json

log = logging.getLogger("kd2deploy")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "config.json")


def _require_hf() -> None:
    missing = []
    for mod in ("transformers", "tokenizers", "optimum.exporters.onnx"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod.split(".")[0])
    if missing:
        raise ConfigError(f"task: text needs {', '.join(missing)}: pip install -c constraints.txt -e '.[hf]'")


# ------------------------------------------------------------------------------------------- stages
def stage_data(run) -> None:
    from kd2deploy.text.data import load_text_data

    t = run.cfg.text
    data = load_text_data(t.data, ".", run.cfg.seed)
    run.data = data
    run.results["data"] = {
        "source": data.source, "path_as_given": t.data.path, "labels": data.labels,
        "train": len(data.train[0]), "val": len(data.val[0]), "test": len(data.test[0]),
        "max_seq_len": t.data.max_seq_len, "split_seed": run.cfg.seed,
        "split": f"stratified, seeded; val {t.data.val_fraction}, test {t.data.test_fraction}",
    }
    ui.step(f"data: {len(data.labels)} labels, train/val/test {len(data.train[0])}/{len(data.val[0])}/"
            f"{len(data.test[0])} from {data.source}")


def _encode(run, tokenizer) -> None:
    from kd2deploy.text.train import Encoded

    n = run.cfg.text.data.max_seq_len
    run.encoded = {name: Encoded(tokenizer, *getattr(run.data, name), n) for name in ("train", "val", "test")}


def stage_teacher(run, progress) -> None:
    from kd2deploy.text.config import resolve_location
    from kd2deploy.text.export import save_hf
    from kd2deploy.text.models import load_teacher, load_tokenizer
    from kd2deploy.text.train import accuracy, fine_tune

    t = run.cfg.text
    folder = resolve_location(t.teacher.model)
    run.tokenizer = load_tokenizer(folder)
    _encode(run, run.tokenizer)
    teacher, tune, why = load_teacher(folder, run.data.labels, t.teacher.fine_tune)
    record: dict[str, Any] = {"folder": str(folder), "as_given": t.teacher.model, "fine_tuned": tune, "why": why,
                              "architecture": type(teacher).__name__,
                              "num_layers": teacher.config.num_hidden_layers,
                              "hidden_size": teacher.config.hidden_size,
                              "params": sum(p.numel() for p in teacher.parameters())}
    if tune:
        task = progress.add_task("teacher fine-tune", total=t.teacher.train.epochs, info="")
        with run.meter.track("train:teacher") as energy:
            teacher, history = fine_tune(
                teacher, run.encoded["train"], run.encoded["val"], t.teacher.train, run.cfg.seed,
                on_epoch=lambda e, m: progress.update(task, completed=e, info=f"val acc {m['val_acc']:.3f}"))
        record.update(history=history, energy=energy.as_dict(), train=t.teacher.train.model_dump())
    teacher.eval()
    record["val_accuracy"] = accuracy(teacher, run.encoded["val"])
    record["test_accuracy_torch"] = accuracy(teacher, run.encoded["test"])
    run.teacher = teacher
    run.hf = {"teacher": save_hf(teacher, run.tokenizer, run.path("models", "teacher"))}
    run.results["models"] = {"teacher": record}
    ui.step(f"teacher: {record['architecture']}, {record['num_layers']} layers, {record['params']:,} params, "
            f"test acc {record['test_accuracy_torch']:.2%}" + (" (head fine-tuned)" if tune else ""))


def stage_students(run, progress) -> None:
    from kd2deploy.text.export import save_hf
    from kd2deploy.text.models import build_student
    from kd2deploy.text.train import accuracy, distil

    t = run.cfg.text
    d = t.distill
    students = []
    with run.meter.track("train:students") as energy:
        for seed in d.seeds:
            import torch

            torch.manual_seed(seed)
            student, info = build_student(run.teacher, t.student)
            task = progress.add_task(f"student seed {seed}", total=d.train.epochs, info="")
            student, history = distil(
                student, run.teacher, run.encoded["train"], run.encoded["val"], d, info["layer_map"], seed,
                on_epoch=lambda e, m, task=task: progress.update(task, completed=e,
                                                                 info=f"val acc {m['val_acc']:.3f}"))
            info.update(seed=seed, history=history, val_accuracy=accuracy(student, run.encoded["val"]),
                        test_accuracy_torch=accuracy(student, run.encoded["test"]))
            students.append((student, info))
    run.student = students[0][0]
    run.hf["student"] = save_hf(run.student, run.tokenizer, run.path("models", "student"))
    accs = [i["test_accuracy_torch"] for _, i in students]
    run.results["distill"] = {
        "terms": [x.model_dump() for x in d.terms], "temperature": d.temperature, "alpha": d.alpha,
        "train": d.train.model_dump(), "seeds": d.seeds, "students": [i for _, i in students],
        "student_params": students[0][1]["params"], "shipped_seed": d.seeds[0],
        "test_accuracy_mean": float(np.mean(accs)), "test_accuracy_sd": float(np.std(accs, ddof=1))
        if len(accs) > 1 else 0.0, "energy": energy.as_dict(),
    }
    info = students[0][1]
    ui.step(f"student: {info['num_layers']} layers (teacher layers {info['layer_map']}, init {info['init']}), "
            f"{info['params']:,} params, test acc {info['test_accuracy_torch']:.2%}")


def stage_export(run) -> None:
    from kd2deploy.text.export import export_folder, onnx_logits, parity
    from kd2deploy.text.train import predict_logits

    t = run.cfg.text
    out: dict[str, Any] = {}
    run.onnx_dirs = {}
    texts, labels = run.data.test
    for name, model in (("teacher", run.teacher), ("student", run.student)):
        folder = run.path("onnx", name, "model.onnx").parent
        info = export_folder(run.hf[name], folder, atol=t.export_atol, validate=t.validate_export)
        ref = predict_logits(model, run.encoded["test"])
        got = onnx_logits(folder / "model.onnx", run.tokenizer, texts, t.data.max_seq_len)
        info["parity"] = parity(ref, got, labels, t.export_atol)
        info["file"] = str((folder / "model.onnx").relative_to(run.dir))
        info["size_bytes"] = (folder / "model.onnx").stat().st_size
        if info["parity"]["argmax_agreement"] < run.cfg.export.min_argmax_agreement:
            raise StageError(f"export of {name}: ONNX and PyTorch disagree on "
                             f"{1 - info['parity']['argmax_agreement']:.2%} of test predictions")
        if not info["parity"]["within_atol"]:
            run.results["warnings"].append(
                f"{name} ONNX logits differ from PyTorch by up to {info['parity']['max_abs_diff']:.2g} "
                f"(atol {t.export_atol:g}); predictions agree on {info['parity']['argmax_agreement']:.2%}")
        run.onnx_dirs[name] = folder
        out[name] = info
    run.onnx = {name: d / "model.onnx" for name, d in run.onnx_dirs.items()}
    run.results["export"] = out
    ui.step("export: " + ", ".join(f"{n} {e['parity']['accuracy_onnx']:.2%} (max|Δ| "
                                    f"{e['parity']['max_abs_diff']:.2g}, {e['exporter'].split('.')[0]})"
                                    for n, e in out.items()))


def stage_variants(run, progress) -> None:
    from kd2deploy.export.variants import make_variant
    from kd2deploy.text.export import onnx_logits

    vc = run.cfg.variants
    texts, labels = run.data.test
    out: dict[str, Any] = {}
    run.variants = {}
    todo = [(m, s) for m in vc.apply_to for s in vc.variants]
    refs: dict[str, np.ndarray] = {}
    task = progress.add_task("variants", total=len(todo), info="")
    for model, spec in todo:
        progress.update(task, info=f"{model} {spec.name}")
        src = run.onnx[model]
        entry = out.setdefault(model, {"accuracy_fp32": run.results["export"][model]["parity"]["accuracy_onnx"],
                                       "variants": []})
        label = f"{model}.{spec.name}"
        try:
            path = make_variant(src, spec, run.path("variants", "x").parent, np.zeros((1, 1), np.float32))
        except StageError as e:
            run.results["warnings"].append(f"variant {label} not made: {e}")
            entry["variants"].append({"label": label, "kind": spec.kind, "error": str(e)})
            progress.update(task, advance=1)
            continue
        logits = onnx_logits(path, run.tokenizer, texts, run.cfg.text.data.max_seq_len)
        if model not in refs:
            refs[model] = onnx_logits(src, run.tokenizer, texts, run.cfg.text.data.max_seq_len)
        ref = refs[model]
        entry["variants"].append({
            "label": label, "kind": spec.kind, "spec": spec.model_dump(mode="json"),
            "file": str(path.relative_to(run.dir)), "size_bytes": path.stat().st_size,
            "accuracy": float((logits.argmax(-1) == labels).mean()),
            "parity": {"max_abs_diff": float(np.abs(logits - ref).max()),
                       "argmax_agreement": float((logits.argmax(-1) == ref.argmax(-1)).mean())},
        })
        run.variants[label] = (model, path)
        progress.update(task, advance=1)
    for e in out.values():
        e["variants"] = [v for v in e["variants"] if "error" not in v]
    run.results["variants"] = out
    ui.step("variants: " + ", ".join(f"{v['label']} acc {v['accuracy']:.2%}" for e in out.values()
                                     for v in e["variants"]))


def stage_benchmark(run, progress) -> None:
    from kd2deploy.bench.harness import ratios, strip_samples
    from kd2deploy.bench.pipeline_bench import harness_settings
    from kd2deploy.text.bench import latency, tokenizer_timing

    cfg, t = run.cfg.benchmark, run.cfg.text
    settings = harness_settings(cfg)
    files = {"teacher": run.onnx["teacher"], "student": run.onnx["student"],
             **{label: p for label, (_, p) in run.variants.items()}}
    for model in dict.fromkeys(m for m, _ in run.variants.values()):
        files[f"{model}@aa"] = run.onnx[model]  # A/A control: the FP32 file again, for the shipping guard
    texts = run.data.test[0]
    n_windows = len(files) * len(cfg.batch_sizes) * settings.rounds * len(t.bench.seq_lens)
    task = progress.add_task("benchmark", total=n_windows, info="")
    results = latency(files, run.tokenizer, texts, settings, cfg.batch_sizes, t.bench.seq_lens,
                      progress=lambda label: progress.update(task, advance=1, info=label))
    run.latency = results
    ratio_rows = []
    pairs = [("teacher", "student")] + [(m, label) for label, (m, _) in run.variants.items()]
    for s in t.bench.seq_lens:
        at = [r for r in results if r["seq_len"] == s]
        for num, den in pairs:
            for r in ratios(at, num, den, bootstrap=settings.bootstrap, seed=settings.seed):
                ratio_rows.append({"numerator": num, "denominator": den, "seq_len": s, **r})
    tok = tokenizer_timing(run.onnx_dirs["student"] / "tokenizer.json", texts[: t.bench.tokenizer_samples],
                           t.data.max_seq_len)
    s0 = t.bench.seq_lens[0]
    rows = strip_samples(results)
    run.results["benchmark"] = {
        "settings": {**settings.__dict__, "provider": "CPUExecutionProvider", "batch_sizes": cfg.batch_sizes,
                     "seq_lens": t.bench.seq_lens, "percentiles": [50, 90, 99],
                     "timer": "time.perf_counter_ns around each session.run call",
                     "inputs": "real test-split texts tokenised to exactly seq_len tokens (truncated or padded), "
                               "prebuilt; model time only, tokenisation excluded"},
        "results": [r for r in rows if r["seq_len"] == s0],  # the primary sequence length (summary table)
        "results_all": rows,
        "ratios": [r for r in ratio_rows if r["seq_len"] == s0],
        "ratios_all": ratio_rows,
        "tokenizer": tok,
        "models": {name: {"params": sum(p.numel() for p in m.parameters()), "layers": m.config.num_hidden_layers,
                          "embedding_params": _embedding_params(m)}
                   for name, m in (("teacher", run.teacher), ("student", run.student))},
    }
    p50 = {(r["model"], r["batch_size"]): r["p50_us"] for r in rows if r["seq_len"] == s0}
    b0 = cfg.batch_sizes[0]
    ui.step(f"benchmark (onnxruntime CPU, {cfg.intra_op_threads} thread(s), batch {b0}, {s0} tokens, p50): "
            f"teacher {p50[('teacher', b0)] / 1e3:.2f} ms, student {p50[('student', b0)] / 1e3:.2f} ms; "
            f"tokenisation {tok['p50_us'] / 1e3:.2f} ms/text")


def _embedding_params(model) -> int | None:
    """Parameters of the token/position embeddings: the share layer removal cannot shrink."""
    emb = getattr(model.base_model, "embeddings", None)
    return sum(p.numel() for p in emb.parameters()) if emb is not None else None


def stage_energy(run, progress) -> None:
    from kd2deploy.bench.harness import batch_inputs, create_ort_session, ort_runner
    from kd2deploy.bench.pipeline_bench import harness_settings
    from kd2deploy.energy.meter import measure_inference_energy
    from kd2deploy.text.bench import fixed_length_inputs
    from kd2deploy.text.export import onnx_feeds

    cfg = run.cfg.energy
    if not cfg.enabled:
        run.results["energy"] = {"enabled": False}
        return
    settings = harness_settings(run.cfg.benchmark)
    enc = fixed_length_inputs(run.tokenizer, run.data.test[0], run.cfg.text.bench.seq_lens[0])
    runners = {}
    for name in ("teacher", "student"):
        session, _ = create_ort_session(run.onnx[name], settings)
        runners[name] = (ort_runner(session, batch_inputs(onnx_feeds(session, enc), cfg.batch_size)),
                         cfg.batch_size)
    task = progress.add_task("energy windows", total=(len(runners) + int(cfg.idle_baseline)) * cfg.repeats,
                             info="")
    res = measure_inference_energy(
        run.meter, runners, cfg.window_s, cfg.repeats, idle=cfg.idle_baseline,
        progress=lambda done, total, label: progress.update(task, completed=done, info=label))
    m = res["models"]

    def ratio(key: str) -> float | None:
        a, b = ((m[n].get(key) or {}).get("mean") for n in ("teacher", "student"))
        return a / b if a and b and a > 0 and b > 0 else None

    res["ratio_gross"] = ratio("j_per_inference_gross")
    res["ratio_active"] = ratio("j_per_inference_active")
    res["seq_len"] = run.cfg.text.bench.seq_lens[0]
    res["training"] = [r.as_dict() for r in run.meter.records if r.label.startswith("train:")]
    if res.get("label") == "modelled":
        run.results["warnings"].append("energy figures are modelled, not measured: " + res.get("explanation", ""))
    run.results["energy"] = res
    r = res["ratio_active"] or res["ratio_gross"]
    ui.step(f"energy ({res.get('label')}): teacher/student energy per inference "
            + (f"{r:.1f}x" if r else "not resolvable"))


def stage_ship(run) -> None:
    """The shipping guard picks the fastest variant within the accuracy rule; the student's pick ships as a
    folder: model.onnx + tokenizer + config (loads with optimum and with plain onnxruntime + tokenizers)."""
    from kd2deploy.ship.guard import candidates_from_bench, select

    policy = run.cfg.ship
    s0 = run.cfg.text.bench.seq_lens[0]
    at = [r for r in run.latency if r["seq_len"] == s0]
    timed = {r["model"] for r in at}
    for model, entry in run.results.get("variants", {}).items():
        accuracies = {model: entry["accuracy_fp32"], **{v["label"]: v["accuracy"] for v in entry["variants"]}}
        control = f"{model}@aa"
        candidates = candidates_from_bench(at, model, accuracies, policy.batch_size,
                                           kinds={v["label"]: v["kind"] for v in entry["variants"]},
                                           controls=[control] if control in timed else [])
        entry["candidates"] = candidates
        entry["selection"] = select(candidates, policy)
        entry["judged_at"] = {"batch_size": policy.batch_size, "seq_len": s0}
    sel = run.results.get("variants", {}).get("student", {}).get("selection")
    chosen = sel["shipped"] if sel else "student"
    src = run.onnx["student"] if chosen == "student" else run.variants[chosen][1]
    dest = run.path("ship", "student", "model.onnx").parent
    shutil.copyfile(src, dest / "model.onnx")
    for f in run.onnx_dirs["student"].iterdir():
        if f.is_file() and f.name != "model.onnx" and f.suffix in (".json", ".txt"):
            shutil.copyfile(f, dest / f.name)
    acc = (run.results["export"]["student"]["parity"]["accuracy_onnx"] if chosen == "student" else
           next(v["accuracy"] for v in run.results["variants"]["student"]["variants"] if v["label"] == chosen))
    check = _check_shipped(dest, run.data.test[0][0], run.cfg.text.data.max_seq_len)
    run.results["ship"] = {"folder": str(dest.relative_to(run.dir)), "source": chosen, "accuracy": acc,
                           "selection": sel, "load_check": check,
                           "files": sorted(p.name for p in dest.iterdir())}
    ui.step(f"ship: {dest.relative_to(run.dir)} ← {chosen}" + (f" ({sel['reason']})" if sel else ""))


def _check_shipped(folder: Path, text: str, max_len: int) -> dict[str, Any]:
    """The shipped folder answers one prediction through plain onnxruntime + tokenizers and through optimum."""
    import json

    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    enc = tok.encode(text)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
    feeds = {i.name: np.asarray([arrays[i.name]], dtype=np.int64) for i in sess.get_inputs()}
    id2label = json.loads((folder / "config.json").read_text())["id2label"]
    plain = id2label[str(int(sess.run(None, feeds)[0].argmax(-1)[0]))]
    out = {"plain_onnxruntime": plain}
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import AutoTokenizer

        model = ORTModelForSequenceClassification.from_pretrained(str(folder))
        hf_tok = AutoTokenizer.from_pretrained(str(folder))
        logits = model(**hf_tok([text], truncation=True, max_length=max_len, return_tensors="np")).logits
        out["optimum"] = model.config.id2label[int(np.asarray(logits).argmax(-1)[0])]
    except Exception as e:  # noqa: BLE001 - say why, do not hide the shipped model
        out["optimum_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    out["agree"] = out.get("optimum") == plain
    return out


# ------------------------------------------------------------------------------------------- driver
def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Student vs teacher: layers, accuracy kept, p50 speed-up at the first batch size and sequence length."""
    exp = results.get("export", {})
    t_acc = exp.get("teacher", {}).get("parity", {}).get("accuracy_onnx")
    s_acc = exp.get("student", {}).get("parity", {}).get("accuracy_onnx")
    out: dict[str, Any] = {"teacher_accuracy": t_acc, "student_accuracy": s_acc,
                           "accuracy_delta_pp": None if t_acc is None or s_acc is None else 100 * (s_acc - t_acc),
                           "relative_accuracy": s_acc / t_acc if t_acc and s_acc is not None else None}
    bench = results.get("benchmark", {})
    rows = [r for r in bench.get("ratios", []) if r["numerator"] == "teacher" and r["denominator"] == "student"]
    first = rows[0] if rows else None
    out["speedup_p50_batch"] = first["batch_size"] if first else None
    out["speedup_p50_seq_len"] = first["seq_len"] if first else None
    out["speedup_p50_ratio"] = first["ratio_p50"] if first else None
    out["speedup_p50_ci95"] = first["ci95"] if first else None
    models = bench.get("models", {})
    parts = []
    if models:
        parts.append(f"{models['student']['layers']} of {models['teacher']['layers']} layers")
    if first:
        parts.append(f"{first['ratio_p50']:.2f}x faster p50 (model only) at batch {first['batch_size']}, "
                     f"{first['seq_len']} tokens")
    if out["relative_accuracy"] is not None:
        parts.append(f"keeps {out['relative_accuracy']:.1%} of the teacher's test accuracy "
                     f"({out['accuracy_delta_pp']:+.2f} pp)")
    energy = results.get("energy", {})
    out["energy_ratio"] = energy.get("ratio_active") or energy.get("ratio_gross")
    out["energy_label"] = energy.get("label")
    out["energy_basis"] = "active" if energy.get("ratio_active") else "gross"
    if out["energy_ratio"]:
        parts.append(f"{out['energy_ratio']:.1f}x less energy per inference ({out['energy_label']})")
    out["text"] = "student: " + ", ".join(parts) if parts else "no comparison available"
    return out


def run_text_pipeline(cfg, out: Path = Path("runs"), source: Path | None = None):
    """Runs every stage of a ``task: text`` pipeline into a new folder under ``out``; returns the Run."""
    from kd2deploy.energy.meter import EnergyMeter
    from kd2deploy.pipeline import RESULTS_SCHEMA_VERSION, Run, _setup_logging, _yaml, environment
    from kd2deploy.text.report import write_text_reports

    _require_hf()
    t0 = time.perf_counter()
    run_dir = new_run_dir(Path(out), cfg.name)
    handler = _setup_logging(run_dir)
    run = Run(cfg=cfg, dir=run_dir, source=source, cache=None)
    write_atomic(run.path("config.yaml"), _yaml(cfg.resolved()))
    if source is not None:
        shutil.copyfile(source, run.path("pipeline.yaml"))
    env = environment()
    from importlib import metadata

    for name in ("transformers", "optimum", "optimum-onnx", "tokenizers"):
        try:
            env["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env["packages"][name] = None
    run.results.update(
        schema_version=RESULTS_SCHEMA_VERSION, kd2deploy_version=__version__, task="text",
        pipeline={"name": cfg.name, "file": str(source) if source else None, "config_hash": cfg.config_hash(),
                  "resolved": cfg.resolved()},
        run={"dir": str(run_dir), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "reused": {}, "cache": "not used for task text"},
        environment=env, warnings=[],
    )
    ui.console.print(f"[bold]kd2deploy {__version__}[/bold] — text pipeline [cyan]{cfg.name}[/cyan] → {run_dir}")
    run.meter = EnergyMeter.from_config(cfg.energy, run.path("energy"), project=cfg.name)
    stages_t: dict[str, float] = {}
    try:
        with ui.progress() as progress:
            for name, fn, needs_progress in (
                ("data", stage_data, False), ("teacher", stage_teacher, True), ("students", stage_students, True),
                ("export", stage_export, False), ("variants", stage_variants, True),
                ("benchmark", stage_benchmark, True), ("energy", stage_energy, True),
            ):
                ts = time.perf_counter()
                log.info("stage %s started", name)
                fn(run, progress) if needs_progress else fn(run)
                stages_t[name] = time.perf_counter() - ts
                log.info("stage %s finished in %.1f s", name, stages_t[name])
        run.results["headline"] = headline(run.results)
        ts = time.perf_counter()
        stage_ship(run)
        stages_t["ship"] = time.perf_counter() - ts
        run.results["run"].update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  wall_s=time.perf_counter() - t0, stage_wall_s=stages_t)
        write_text_reports(run.results, run.dir, cfg.report.formats)
        run.results["run"]["wall_s"] = time.perf_counter() - t0
        write_json(run.path("results.json"), run.results)
    except BaseException as e:
        log.error("%s: %s", type(e).__name__, e)
        try:
            write_json(run.path("results.partial.json"), run.results)
        except Exception as e2:  # noqa: BLE001
            log.error("results.partial.json not written: %s", e2)
        raise
    finally:
        run.meter.close()
        log.removeHandler(handler)
        handler.close()
    return run
