"""The shipped student: ``ship/student.onnx`` with its key facts in the file, and a MODEL_CARD.md beside it.

A copied ONNX file loses its report; the facts stamped into ``metadata_props`` travel with it (Netron shows
them, ``onnxruntime`` exposes them as ``session.get_modelmeta().custom_metadata_map``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kd2deploy.report.view import _get, verdict

PREPROCESSING = "inputs are raw; standardisation is inside the graph"
PREPROCESSING_NONE = "inputs are raw; the graph applies no standardisation (data.standardize: false)"


def onnx_io(path: Path) -> dict[str, Any]:
    """Name, shape (``"batch"`` for a symbolic axis) and dtype of an ONNX file's first input and output."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(v) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        return {
            "name": v.name,
            "shape": shape,
            "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)),
        }

    return {"input": describe(model.graph.input[0]), "output": describe(model.graph.output[0])}


def stamp_onnx(path: Path, facts: dict[str, str]) -> None:
    """Writes ``facts`` into the ONNX file's ``metadata_props`` (same keys replaced, others kept), atomically.

    The graph and weights are untouched, so outputs are bit-identical; the file (and its sha256) changes.

    Raises:
        TypeError: a key or value is not a string (ONNX metadata holds strings only).
    """
    import onnx

    from kd2deploy.rundir import write_atomic

    bad = next(((k, v) for k, v in facts.items() if not isinstance(k, str) or not isinstance(v, str)), None)
    if bad is not None:
        raise TypeError(
            f"stamp_onnx: metadata keys and values must be str, got {bad[0]!r}: {type(bad[1]).__name__}"
        )
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # external data (if any) stays where it is
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in facts]
    del model.metadata_props[:]
    for key, value in [*kept, *facts.items()]:
        model.metadata_props.add(key=key, value=value)
    write_atomic(path, model.SerializeToString())  # temp file in the same folder + os.replace


def shipped(results: dict[str, Any]) -> dict[str, Any]:
    """What ships: the shipping guard's pick among the student and its variants (the FP32 student without one).

    Returns ``label`` (its benchmark label), ``file`` (relative to the run folder), ``accuracy`` (ONNX, test),
    ``variant`` (None for the FP32 export) and ``sha256`` of the unstamped file.
    """
    label = _get(results, "variants", "student", "selection", "shipped", default="student")
    if label == "student":
        return {"label": "student", "file": "models/" + _get(results, "export", "student", "path",
                                                            default="student.onnx"), "variant": None,
                "accuracy": _get(results, "export", "student", "parity", "accuracy_onnx"),
                "sha256": _get(results, "export", "student", "sha256")}
    v = next(v for v in results["variants"]["student"]["variants"] if v["label"] == label)
    return {"label": label, "file": f"models/variants/{v['path']}", "variant": v["name"],
            "accuracy": v["accuracy"], "sha256": v["sha256"]}


def _student_latency(results: dict[str, Any]) -> dict[str, Any] | None:
    """The shipped student's latency row at batch 1, or at its smallest batch size when batch 1 was not timed."""
    label = shipped(results)["label"]
    rows = [r for r in _get(results, "benchmark", "results", default=[]) if r["model"] == label]
    return min(rows, key=lambda r: r["batch_size"], default=None)


def _row(results: dict[str, Any], model: str, batch: int) -> dict[str, Any] | None:
    rows = _get(results, "benchmark", "results", default=[])
    return next((r for r in rows if r["model"] == model and r["batch_size"] == batch), None)


def _labels(results: dict[str, Any]) -> str:
    names = _get(results, "data", "class_names")
    n = _get(results, "data", "num_classes", default=0)
    if names:
        return ", ".join(f"{i}={name}" for i, name in enumerate(names))
    return f"class index 0..{n - 1} (argmax of the logits)" if n else "class index (argmax of the logits)"


def _preprocessing(results: dict[str, Any]) -> str:
    if _get(results, "data", "preprocessing"):  # the task says how its inputs are made
        return _get(results, "data", "preprocessing")
    standardize = _get(results, "pipeline", "resolved", "data", "standardize", default=True)
    return PREPROCESSING if standardize else PREPROCESSING_NONE


def _shape(io: dict[str, Any]) -> str:
    return "[" + ", ".join(str(d) for d in io["shape"]) + "]"


def _bench_context(results: dict[str, Any]) -> str:
    s = _get(results, "benchmark", "settings", default={})
    ort = " ".join(filter(None, ["onnxruntime", _get(results, "environment", "packages", "onnxruntime")]))
    return (
        f"{ort} {s.get('provider')}, {s.get('intra_op_threads')} intra-op / {s.get('inter_op_threads')} "
        f"inter-op thread(s), {_get(results, 'environment', 'cpu')}"
    )


def ship_facts(results: dict[str, Any], io: dict[str, Any]) -> dict[str, str]:
    """The key facts stamped into the shipped file (strings, as ONNX metadata requires)."""
    h = results.get("headline") or {}
    teacher = _get(results, "models", "teacher", default={})
    lat = _student_latency(results)
    ship = shipped(results)
    n_test = _get(results, "export", "student", "parity", "n_samples")
    acc_ci = _get(h, "accuracy", "shipped", "ci95")
    facts = {
        "model": f"kd2deploy student {_get(results, 'distill', 'student_arch')} of pipeline "
        f"{results['pipeline']['name']}" + (f", {ship['variant']} variant" if ship["variant"] else ", FP32"),
        "accuracy": f"{ship['accuracy']:.4f} test accuracy (ONNX, {n_test} samples of "
        f"{_get(results, 'data', 'source')}"
        + (f"; Wilson 95 % CI {acc_ci[0]:.4f}-{acc_ci[1]:.4f}" if acc_ci else "")
        + f"); teacher {h.get('teacher_accuracy'):.4f}",
        "verdict": _get(h, "verdict", "text") or verdict(results)["text"],
        "latency_p50": "not measured"
        if lat is None
        else f"{lat['p50_us']:.1f} us at batch {lat['batch_size']} ({_bench_context(results)})",
        "teacher": f"{teacher.get('arch')} ({teacher.get('params'):,} params)",
        "config_hash": results["pipeline"]["config_hash"],
        "kd2deploy_version": str(results.get("kd2deploy_version")),
        "input_name": io["input"]["name"],
        "input_shape": _shape(io["input"]),
        "input_dtype": io["input"]["dtype"],
        "output": f"{io['output']['name']} {_shape(io['output'])} {io['output']['dtype']}",
        "preprocessing": _preprocessing(results),
        "labels": _labels(results),
    }
    if h.get("energy_ratio"):
        facts["energy_ratio"] = (
            f"teacher/student energy per inference {h['energy_ratio']:.2f} (> 1: the student uses less; "
            f"{h.get('energy_label')}, {h.get('energy_basis') or 'gross'})"
        )
    return facts


def _sha256(path: Path) -> str:
    from kd2deploy.export.onnx_export import sha256_file

    return sha256_file(path)


def _run_snippet(file: str, io: dict[str, Any]) -> str:
    shape = tuple(1 if isinstance(d, str) else d for d in io["input"]["shape"])
    return (
        "import numpy as np, onnxruntime as ort\n"
        f'session = ort.InferenceSession("{file}", providers=["CPUExecutionProvider"])\n'
        f"x = np.zeros({shape}, dtype=np.{io['input']['dtype']})  # raw inputs, as in training\n"
        f'logits = session.run(None, {{"{io["input"]["name"]}": x}})[0]\n'
        "print(logits.argmax(-1))  # predicted class index per sample\n"
    )


def _ci(rec: dict[str, Any] | None) -> str:
    return "" if not rec or not rec.get("ci95") else f" [{100 * rec['ci95'][0]:.1f}–{100 * rec['ci95'][1]:.1f}]"


def card_numbers(h: dict[str, Any]) -> dict[str, str]:
    """The headline numbers as the model card (and the report's tiles) print them: ``speedup``, ``speedup_ci``,
    ``accuracy_delta``, ``accuracy_delta_ci``, ``decision``."""
    out: dict[str, str] = {"decision": _get(h, "verdict", "title", default="")}
    b = h.get("speedup_p50_batch")
    row = _get(h, "speedup_p50", str(b)) if b is not None else None
    if row:
        out["speedup"] = f"{row['ratio_p50']:.2f}"
        out["speedup_ci"] = f"{row['ci95'][0]:.2f}–{row['ci95'][1]:.2f}"
    if h.get("accuracy_delta_pp") is not None:
        out["accuracy_delta"] = f"{h['accuracy_delta_pp']:+.2f}"
    p = h.get("paired_vs_teacher")
    if p:
        out["accuracy_delta_ci"] = f"{100 * p['ci95'][0]:+.2f} to {100 * p['ci95'][1]:+.2f}"
    return out


def _headline_rows(h: dict[str, Any]) -> list[str]:
    """Rows of the card's table that repeat the report's headline for this file (same numbers, same rounding)."""
    n = card_numbers(h)
    rows = []
    if "accuracy_delta" in n:
        rows.append(f"| accuracy change vs the FP32 teacher (paired, test) | {n['accuracy_delta']} pp"
                    + (f" [95 % CI {n['accuracy_delta_ci']} pp]" if "accuracy_delta_ci" in n else "") + " | |")
    if "speedup" in n:
        rows.append(f"| p50 speed-up vs the FP32 teacher at batch {h.get('speedup_p50_batch')} | {n['speedup']}× "
                    f"[95 % CI {n['speedup_ci']}] | |")
    best = h.get("teacher_best")
    row = _get(h, "speedups", "teacher_best", str(h.get("speedup_p50_batch")))
    if best and best != "teacher" and row:
        rows.append(f"| p50 speed-up vs {best} (the best teacher build without distillation) | "
                    f"{row['ratio_p50']:.2f}× [95 % CI {row['ci95'][0]:.2f}–{row['ci95'][1]:.2f}] | |")
    return rows


def write_model_card(dir: Path, results: dict[str, Any], file: str = "student.onnx") -> Path:
    """Writes ``dir/MODEL_CARD.md`` for ``dir/<file>``.

    The card says what the model is, its intended input, accuracy vs the teacher, latency (threads, batch,
    provider), energy with its measured/modelled label, five lines to run it, and the file's sha256.
    """
    from kd2deploy.rundir import write_atomic

    dir = Path(dir)
    onnx_path = dir / file
    io = onnx_io(onnx_path)
    h = results.get("headline") or {}
    d = results.get("distill") or {}
    teacher = _get(results, "models", "teacher", default={})
    lat_s = _student_latency(results)
    ship = shipped(results)
    b = lat_s["batch_size"] if lat_s else None
    lat_t = _row(results, "teacher", b) if b else None
    s = _get(results, "benchmark", "settings", default={})
    env = results.get("environment") or {}
    data = results.get("data") or {}

    def pct(v):
        return "–" if v is None else f"{100 * v:.2f} %"

    def us(r):
        return (
            "–"
            if r is None
            else f"{r['p50_us']:,.1f} µs [{r['p50_ci95_us'][0]:,.1f}–{r['p50_ci95_us'][1]:,.1f}]"
        )

    lines = [
        f"# {file} — student model of pipeline `{results['pipeline']['name']}`",
        "",
        f"**What it is.** A {d.get('student_params', 0):,}-parameter `{d.get('student_arch')}` classifier "
        f"distilled ({d.get('loss')} loss, T = {d.get('temperature')}, alpha = {d.get('alpha')}) from a "
        f"{teacher.get('params', 0):,}-parameter `{teacher.get('arch')}` teacher by kd2deploy "
        f"{results.get('kd2deploy_version')}, on {data.get('description') or data.get('source')}."
        f" Report verdict: {verdict(results)['text']}.",
        "",
        f"**Intended input.** `{io['input']['name']}`: {io['input']['dtype']} {_shape(io['input'])}; "
        f"{_preprocessing(results)}. Output `{io['output']['name']}`: {_shape(io['output'])}; labels: "
        f"{_labels(results)}.",
        "",
        "| | student (this file) | FP32 teacher |",
        "|---|---:|---:|",
        f"| test accuracy (ONNX, {_get(results, 'export', 'student', 'parity', 'n_samples')} samples) [95 % CI] | "
        f"{pct(ship['accuracy'])}{_ci(_get(h, 'accuracy', 'shipped'))} | "
        f"{pct(h.get('teacher_accuracy'))}{_ci(_get(h, 'accuracy', 'teacher'))} |",
        f"| p50 latency at batch {b} [95 % CI] | {us(lat_s)} | {us(lat_t)} |",
    ]
    lines += _headline_rows(h)
    energy = results.get("energy") or {}
    basis = h.get("energy_basis", "gross")
    if energy.get("models"):
        mj = [
            ((_get(energy, "models", m, f"j_per_inference_{basis}") or {}).get("mean"))
            for m in ("student", "teacher")
        ]
        cells = " | ".join("–" if j is None else f"{1e3 * j:.4g} mJ" for j in mj)
        lines.append(
            f"| energy per inference ({energy.get('label')}, {basis}, batch "
            f"{_get(energy, 'models', 'student', 'batch_size')}) | {cells} |"
        )
    lines += [
        "",
        f"Latency: per call, onnxruntime {env.get('packages', {}).get('onnxruntime')} {s.get('provider')}, "
        f"{s.get('intra_op_threads')} intra-op / {s.get('inter_op_threads')} inter-op thread(s), graph "
        f"optimisation {s.get('graph_optimization')}, on {env.get('cpu')} "
        f"({env.get('logical_cores')} logical cores).",
    ]
    if energy.get("models"):
        lines.append(f"Energy: **{energy.get('label')}**. {energy.get('explanation', '')}")
    elif energy.get("enabled") is False:
        lines.append("Energy: not measured (energy.enabled: false).")
    lines += [
        "",
        "## Run it",
        "",
        "```python",
        _run_snippet(file, io).rstrip("\n"),
        "```",
        "",
        "## Provenance",
        "",
        f"- `{file}` sha256 `{_sha256(onnx_path)}` (with the metadata above stamped in)",
        f"- made from `{ship['file']}`, sha256 `{ship['sha256']}`"
        + (f" ({ship['variant']} variant of `models/student.onnx`, picked by the shipping guard)"
           if ship["variant"] else ""),
        f"- config hash `{results['pipeline']['config_hash']}`; run started "
        f"{_get(results, 'run', 'started')}",
    ]
    if results.get("warnings"):
        lines += ["", "## Caveats", "", *[f"- {w}" for w in results["warnings"]]]
    return write_atomic(dir / "MODEL_CARD.md", "\n".join(lines) + "\n")


def ship_student(results: dict[str, Any], run_dir: Path, folder_name: str | None = None) -> Path:
    """Copies the shipped student (see :func:`shipped`) to ship/student.onnx, stamps its key facts, writes
    ship/MODEL_CARD.md.

    Records ``results["ship"] = {"model", "variant", "source", "selection", "path", "sha256", "source_sha256",
    "model_card", "metadata"}`` (paths
    relative to ``run_dir``; sha256 of the stamped file). Returns the stamped file's path.
    """
    from kd2deploy.rundir import write_atomic

    run_dir = Path(run_dir)
    ship = shipped(results)
    src = run_dir / ship["file"]
    dst = run_dir / "ship" / (f"{folder_name}/model.onnx" if folder_name else "student.onnx")
    write_atomic(dst, src.read_bytes())  # a reader sees the old file or the whole copy, never a part
    facts = ship_facts(results, onnx_io(dst))
    stamp_onnx(dst, facts)
    results["ship"] = {
        "model": ship["label"],
        "variant": ship["variant"],
        "source": ship["file"],
        "selection": _get(results, "variants", "student", "selection"),
        "path": dst.relative_to(run_dir).as_posix(),
        "sha256": _sha256(dst),
        "source_sha256": _sha256(src),
        "model_card": (dst.parent / "MODEL_CARD.md").relative_to(run_dir).as_posix(),
        "metadata": facts,
    }
    write_model_card(dst.parent, results, dst.name)
    return dst
