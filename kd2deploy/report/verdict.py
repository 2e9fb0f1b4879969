"""The headline and verdict about the file that ships (``ship/student.onnx``), with calibrated uncertainty.

The shipped file is the shipping guard's pick (the FP32 student or one of its variants). It is compared with two
teacher baselines: the FP32 teacher ("what you run today") and the teacher build the guard would ship without
distillation, the fastest teacher variant that keeps the teacher's accuracy ("the best you could run without
distillation"; the FP32 teacher when no variant pays).

- Accuracy: every test accuracy with its Wilson 95 % interval; shipped vs FP32 teacher paired per test sample
  (McNemar, Agresti–Min interval of the difference, :mod:`kd2deploy.stats`).
- Speed: teacher p50 / shipped p50 per batch size with the harness's calibrated interval, and the A/A noise floor
  ``f``: the largest ratio the FP32 file showed against itself in a second session (as the shipping guard uses
  it). "Faster" needs the interval's lower end above ``f``.
- Verdict: "ship" when the accuracy interval lies above ``-max_accuracy_drop_pp`` and the speed-up
  interval above the A/A floor (and 1); "do not ship" when the accuracy interval lies wholly below the
  allowed drop or the speed-up interval wholly below 1; otherwise "inconclusive", with the number of
  test samples that would resolve the allowed drop. A handful of samples cannot flip it: a point
  estimate alone decides nothing.

Per-sample correctness and latency samples are not in results.json; :func:`build_headline` takes them from the
pipeline and stores what it derived, so a re-rendered report shows the same verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd2deploy import stats

SHIP, NO_SHIP, INCONCLUSIVE = "ship", "do not ship", "inconclusive"


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return default
        d = d[k]
    return d


def onnx_correct(path: Path, x: np.ndarray, y: np.ndarray, batch: int = 256) -> np.ndarray:
    """Per-sample correctness (argmax of the logits == label) of an ONNX classifier, onnxruntime CPU."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
    pred = np.concatenate([sess.run(None, {name: x[i:i + batch].astype(dtype)})[0].argmax(-1)
                           for i in range(0, len(x), batch)])
    return pred == np.asarray(y)


def shipped_label(results: Mapping[str, Any]) -> str:
    """The benchmark label of what ships: ``student`` or ``student.<variant>``."""
    return _get(results, "variants", "student", "selection", "shipped", default="student")


def teacher_best_label(results: Mapping[str, Any]) -> str:
    """The guard's pick among the FP32 teacher and its variants (``teacher`` when none pays)."""
    return _get(results, "variants", "teacher", "selection", "shipped", default="teacher")


def _accuracy_of(results: Mapping[str, Any], label: str) -> float | None:
    model = label.split(".", 1)[0]
    if label == model:
        return _get(results, "export", model, "parity", "accuracy_onnx")
    for v in _get(results, "variants", model, "variants", default=[]):
        if v["label"] == label:
            return v["accuracy"]
    return None


def aa_floor(results: Mapping[str, Any]) -> tuple[float, str | None]:
    """The largest ratio an A/A control showed (FP32 against itself, within its 95 % CI), and its name."""
    worst, name = 1.0, None
    for entry in (results.get("variants") or {}).values():
        for c in entry.get("candidates", []):
            r = c.get("ratio_vs_source")
            if c.get("source") != "control" or not r:
                continue
            lo, hi = r["ci95"]
            apparent = max(hi, 1 / lo if lo > 0 else float("inf"))
            if apparent > worst:
                worst, name = apparent, c["name"]
    return worst, name


def speedups(latency: Sequence[dict], numerator: str, denominator: str, bootstrap: int = 1000,
             seed: int = 0) -> list[dict]:
    """numerator p50 / denominator p50 per batch size (the harness's calibrated interval); [] when either is
    missing."""
    from kd2deploy.bench.harness import ratios

    names = {r["model"] for r in latency}
    if numerator not in names or denominator not in names:
        return []
    mine = [r for r in latency if r["model"] in (numerator, denominator)]
    rows = ratios(mine, numerator, denominator, bootstrap=bootstrap, seed=seed)
    shape = {k: mine[0][k] for k in ("seq_len",) if k in mine[0]}  # the text task's timed sequence length
    return [{"numerator": numerator, "denominator": denominator, **shape, **r} for r in rows]


def _with_floor(row: dict, floor: float) -> dict:
    return {**row, "aa_floor": round(floor, 4)}


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def _x(r: float) -> str:
    return f"{r:.2f}x" if r < 1.1 else f"{r:.1f}x"


def build_headline(results: dict[str, Any], *, latency: Sequence[dict] = (), correct: Mapping[str, Any] | None
                   = None, budget_pp: float | None = None, batch: int | None = None,
                   bootstrap: int = 1000, seed: int = 0, ship_file: str | None = None) -> dict[str, Any]:
    """The headline about ``ship/student.onnx`` (keys of the old headline kept), with ``verdict`` inside.

    Args:
        results: the run's results so far (export, variants with the guard's selections, benchmark, energy,
            distill).
        latency: the benchmark's results with their samples (``measure(..., keep_samples=True)``); without them
            the ratio rows already in ``results["headline"]`` (a re-render) are kept.
        correct: per-sample test correctness by benchmark label (``student``, ``student.int8-static``,
            ``teacher``, ...), for the paired test; without it the stored paired record is kept.
        budget_pp: ``report.max_accuracy_drop_pp`` (default: from the resolved config, else 1.0).
        batch: the batch size the verdict judges (default: ``ship.batch_size``, else 1).
        ship_file: the shipped file, relative to the run folder (the task's ``ship_file``; default: the stored
            one, else ``ship/student.onnx``).
    """
    old = results.get("headline") or {}
    budget = budget_pp if budget_pp is not None else _get(
        results, "pipeline", "resolved", "report", "max_accuracy_drop_pp", default=1.0)
    batch = batch or _get(results, "pipeline", "resolved", "ship", "batch_size", default=1)
    ship, best = shipped_label(results), teacher_best_label(results)
    n_test = _get(results, "export", "student", "parity", "n_samples") or _get(results, "data", "n_test")
    floor, floor_name = aa_floor(results)

    def acc(label: str) -> dict[str, Any] | None:
        a = _accuracy_of(results, label)
        return None if a is None else {"label": label, **(stats.accuracy_record(a, n_test) if n_test else
                                                           {"accuracy": a})}

    accuracy = {"shipped": acc(ship), "teacher": acc("teacher"), "teacher_best": acc(best)}
    paired = _get(old, "paired_vs_teacher")
    if correct is not None and ship in correct and "teacher" in correct:
        paired = stats.paired_samples(correct[ship], correct["teacher"])
    # latency: teacher / shipped, best teacher build / shipped, per batch size
    speed: dict[str, dict[str, dict]] = {}
    for key, num in (("teacher", "teacher"), ("teacher_best", best)):
        rows = speedups(latency, num, ship, bootstrap, seed) if latency else list(
            (_get(old, "speedups", key) or {}).values())
        speed[key] = {str(r["batch_size"]): _with_floor(r, floor) if latency else r for r in rows}
    h: dict[str, Any] = {
        "shipped": {"label": ship,
                    "file": ship_file or _get(old, "shipped", "file", default="ship/student.onnx"),
                    "variant": None if ship == "student" else ship.split(".", 1)[1],
                    "arm": _get(results, "distill", "shipped_arm", default="kd"),
                    "seed": _get(results, "distill", "shipped_seed")},
        "teacher_best": best, "accuracy": accuracy, "paired_vs_teacher": paired, "speedups": speed,
        "aa_floor": {"ratio": floor, "control": floor_name},
        "teacher_accuracy": _get(accuracy, "teacher", "accuracy"),
        "student_accuracy": _get(accuracy, "shipped", "accuracy"),
    }
    t_acc, s_acc = h["teacher_accuracy"], h["student_accuracy"]
    h["accuracy_delta_pp"] = None if t_acc is None or s_acc is None else 100.0 * (s_acc - t_acc)
    h["speedup_p50"] = {b: {k: r[k] for k in ("numerator", "denominator", "batch_size", "seq_len", "ratio_p50",
                                              "ci95") if k in r}
                        for b, r in speed["teacher"].items()}
    first = speed["teacher"].get(str(batch)) or next(iter(speed["teacher"].values()), None)
    h["speedup_p50_batch"] = first["batch_size"] if first else None
    h["speedup_p50_ratio"] = first["ratio_p50"] if first else None
    h["speedup_p50_seq_len"] = first.get("seq_len") if first else None
    energy = results.get("energy") or {}
    h["energy_basis"] = "active" if energy.get("ratio_active") else "gross"
    h["energy_ratio"] = energy.get("ratio_active") or energy.get("ratio_gross")
    h["energy_label"] = energy.get("label")
    h["energy_file"] = energy.get("student_file", "models/student.onnx")
    h["verdict"] = decide(h, budget, batch, n_test, h["shipped"]["file"])
    h["distillation"] = distillation(results)
    h["text"] = _text(h, batch, results)
    return h


def decide(h: Mapping[str, Any], budget_pp: float, batch: int, n_test: int | None,
           ship_file: str = "ship/student.onnx") -> dict[str, Any]:
    """"ship", "do not ship" or "inconclusive" from the intervals (see the module docstring)."""
    reasons, unresolved, good = [], [], []
    allowed = -budget_pp / 100
    paired = h.get("paired_vs_teacher")
    if paired is None:
        reasons.append("no per-sample accuracy comparison with the teacher")
        acc_state = None
    else:
        lo, hi = paired["ci95"]
        ci = f"{_pp(paired['diff'])}, 95 % CI {_pp(lo)} to {_pp(hi)}"
        if lo > allowed:
            acc_state = True
            good.append(f"accuracy {ci} vs the FP32 teacher, within the allowed {budget_pp:g} pp drop")
        elif hi < allowed:
            acc_state = False
            reasons.append(f"accuracy {ci} vs the FP32 teacher: beyond the allowed {budget_pp:g} pp drop")
        else:
            acc_state = None
            need = stats.samples_to_resolve(budget_pp / 100, paired["discordance"], paired["n"])
            unresolved.append(f"accuracy {ci} vs the FP32 teacher: {paired['n']} test samples cannot resolve a "
                              f"{budget_pp:g} pp drop; about {need:,} would")
    row = _get(h, "speedups", "teacher", str(batch))
    if row is None:
        reasons.append(f"no latency comparison at batch {batch}")
        speed_state = None
    else:
        lo, hi = row["ci95"]
        floor = max(1.0, row.get("aa_floor") or 1.0)
        ci = f"{_x(row['ratio_p50'])} (95 % CI {lo:.2f}–{hi:.2f}" + (f"; A/A noise floor {floor:.2f}" if floor > 1
                                                                      else "") + ")"
        if lo > floor:
            speed_state = True
            good.append(f"{ci} faster than the FP32 teacher at batch {batch}")
        elif hi < 1:
            speed_state = False
            reasons.append(f"p50 ratio {ci}: slower than the FP32 teacher at batch {batch}")
        else:
            speed_state = None
            unresolved.append(f"p50 ratio {ci} vs the FP32 teacher: not resolvably faster at batch {batch}"
                              + (" (the interval's lower end is under the A/A noise floor)" if lo > 1 else ""))
    if acc_state is False or speed_state is False:
        decision = NO_SHIP
    elif acc_state and speed_state:
        decision = SHIP
    else:
        decision = INCONCLUSIVE
    title = {SHIP: f"Ship {ship_file}", NO_SHIP: "Do not ship",
             INCONCLUSIVE: "Inconclusive: more evidence needed"}[decision]
    why = good if decision == SHIP else reasons + unresolved
    return {"decision": decision, "ship": decision == SHIP, "title": title, "reasons": reasons + unresolved,
            "evidence": good, "text": f"{title}: " + "; ".join(why or ["nothing to compare"]),
            "rule": f"ship when the 95 % interval of the accuracy change vs the FP32 teacher lies above "
                    f"-{budget_pp:g} pp and the 95 % interval of the p50 speed-up at batch {batch} lies above 1 "
                    "and above the A/A noise floor; do not ship when either lies wholly on the wrong side; "
                    "otherwise inconclusive"}


def distillation(results: Mapping[str, Any]) -> dict[str, Any]:
    """KD vs each control, paired over seeds (test accuracy), and whether distillation paid for the shipped
    student (it did not when a control was chosen on validation)."""
    d = results.get("distill") or {}
    arms = d.get("arms") or []
    out: dict[str, Any] = {"shipped_arm": d.get("shipped_arm", "kd"), "vs": {}}
    for ctrl in ("scratch", "label_smoothing"):
        if ctrl not in arms or "kd" not in arms:
            continue
        rows = [s for s in d.get("per_seed", []) if "kd" in s and ctrl in s]
        kd = [s["kd"]["test_accuracy"] for s in rows]
        other = [s[ctrl]["test_accuracy"] for s in rows]
        if rows:
            out["vs"][ctrl] = stats.paired_seeds(kd, other, "kd", ctrl)
    out["paid"] = out["shipped_arm"] == "kd"
    out["text"] = ("distillation paid: the KD student had the best validation accuracy" if out["paid"] else
                   f"distillation did not pay here: the {out['shipped_arm']} control had the best validation "
                   "accuracy and ships")
    return out


def _text(h: Mapping[str, Any], batch: int, results: Mapping[str, Any] | None = None) -> str:
    parts = []
    layers = [_get(results or {}, "benchmark", "models", m, "layers") for m in ("student", "teacher")]
    if all(layers):
        parts.append(f"{layers[0]} of {layers[1]} layers")
    ship = h["shipped"]
    what = f"{ship['file']} ({ship['label']}" + (f", {ship['arm']} seed {ship['seed']}" if ship["seed"] is not None
                                                    else "") + ")"
    for key, name in (("teacher", "the FP32 teacher"), ("teacher_best", h["teacher_best"])):
        if key == "teacher_best" and h["teacher_best"] == "teacher":
            continue
        row = _get(h, "speedups", key, str(batch))
        if row:
            lo, hi = row["ci95"]
            r = row["ratio_p50"]
            words = f"{_x(r)} faster than" if r >= 1 else f"{_x(1 / r)} slower than"
            shape = f", {row['seq_len']} tokens" if row.get("seq_len") else ""
            parts.append(f"{words} {name} at batch {batch}{shape} (p50 ratio 95 % CI {lo:.2f}–{hi:.2f})")
    if h.get("accuracy_delta_pp") is not None:
        p = h.get("paired_vs_teacher")
        parts.append(f"accuracy {h['accuracy_delta_pp']:+.2f} pp vs the FP32 teacher"
                     + (f" (95 % CI {_pp(p['ci95'][0])} to {_pp(p['ci95'][1])})" if p else ""))
    if h.get("energy_ratio"):
        parts.append(f"{h['energy_ratio']:.1f}x less energy per inference than the FP32 teacher "
                     f"({h['energy_label']}, {h['energy_basis']}; measured on {h['energy_file']})")
    return what + ": " + ", ".join(parts) if parts else "no comparison available"
