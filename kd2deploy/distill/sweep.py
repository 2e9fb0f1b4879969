"""A grid over the distillation temperature and alpha, judged on the VALIDATION split only.

``kd2deploy sweep PIPELINE --temperature 1,2,4 --alpha 0.5,0.9`` runs the pipeline's data and teacher stages
(ensembles, few labels and transfer options included), then trains, per seed, the controls and one KD student
per (T, alpha) — all arms of one seed from the same initial weights, on the same batches — and picks the
setting whose KD students have the best mean validation accuracy (ties: lower mean validation loss). Test
accuracy is printed next to it for the record, never used to choose.
"""

from __future__ import annotations

import itertools
import math
import statistics
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def mean_sd_text(values: list[float]) -> str:
    """``'98.50 ± 0.32'`` (percent) over seeds."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):6.2f} ± {100 * sd:4.2f}"


def rank(acc: dict[str, list[float]]) -> tuple[float, float]:
    """Validation ranking of an arm over seeds: mean accuracy, then (ties are common on a few hundred samples)
    lower mean loss. ``acc`` holds lists ``val`` and optionally ``val_loss``."""
    return (mean(acc["val"]), -mean(acc["val_loss"]) if acc.get("val_loss") else -math.inf)


def evaluate_arms(arms, trained, val, test) -> dict[str, dict[str, list[float]]]:
    """Per arm name, over its seeds: validation accuracy and loss, and test accuracy (never used to choose)."""
    from kd2deploy.distill.train import evaluate

    per_arm: dict[str, dict[str, list[float]]] = {}
    for arm, (model, _) in zip(arms, trained, strict=True):
        got = per_arm.setdefault(arm.name, {"val": [], "val_loss": [], "test": []})
        v = evaluate(model, *val)
        got["val"].append(v["acc"])
        got["val_loss"].append(v["loss"])
        got["test"].append(evaluate(model, *test)["acc"])
    return per_arm


def arm_name(temperature: float, alpha: float) -> str:
    return f"kd T={temperature:g} a={alpha:g}"


def sweep_pipeline(cfg, temperatures: list[float], alphas: list[float], out: Path = Path("runs"),
                   progress=None) -> dict[str, Any]:
    """Trains the grid for ``cfg`` and returns the table and the validation-chosen setting.

    Writes ``sweep.json`` and the teacher checkpoint(s) into ``out/<name>-sweep/<timestamp>/``.
    """
    from kd2deploy import ui
    from kd2deploy.distill.arms import Arm
    from kd2deploy.distill.batched import train_arms_batched
    from kd2deploy.distill.teacher import teacher_logits_of
    from kd2deploy.distill.transfer import Perturb
    from kd2deploy.energy.meter import EnergyMeter
    from kd2deploy.engine.state import RunState
    from kd2deploy.rundir import new_run_dir, write_json
    from kd2deploy.tasks.tensor.adapter import TensorTask

    d = cfg.distill
    if d.terms:
        raise ConfigError("sweep: distill.terms is set; the sweep varies distill.temperature and distill.alpha of "
                          "the single-term loss (remove terms, or sweep with --set)")
    bad = [t for t in temperatures if not t > 0] + [a for a in alphas if not 0 <= a <= 1]
    if bad or not temperatures or not alphas:
        raise ConfigError(f"sweep: temperatures must be > 0 and alphas in [0, 1]; got {temperatures}, {alphas}")
    run_dir = new_run_dir(Path(out), f"{cfg.name}-sweep")
    task = TensorTask(cfg)
    run = RunState(cfg=cfg, task=task, dir=run_dir, meter=EnergyMeter(run_dir / "energy", enabled=False))
    own_progress = progress is None
    progress = progress or ui.progress()
    with progress if own_progress else nullcontext():
        run.results["data"] = task.load_data(run)
        task.train_teacher(run, progress)
        x_tr, _, x_va, y_va, x_te, y_te = task.tensors
        perturb = Perturb(d.transfer.shift_px, d.transfer.mixup_alpha)
        labelled = task.labelled()
        arms = []
        for seed in d.seeds:
            if "scratch" in d.controls:
                arms.append(Arm("scratch", seed))
            if "label_smoothing" in d.controls:
                arms.append(Arm("label_smoothing", seed, label_smoothing=d.control_label_smoothing))
            for t, a in itertools.product(temperatures, alphas):
                arms.append(Arm(arm_name(t, a), seed, loss=d.loss, temperature=t, alpha=a))
        ptask = progress.add_task(f"sweep: {len(arms)} students", total=len(arms) * d.train.epochs, info="")
        trained = train_arms_batched(
            task.new_student, arms, (x_tr, task.masked_labels(labelled), x_va, y_va),
            None if perturb.active else teacher_logits_of(run.teacher, x_tr), d.train,
            on_epoch=lambda arm, e, m: progress.update(ptask, advance=1), labelled=labelled, teacher=run.teacher,
            perturb=perturb)
    per_arm = evaluate_arms(arms, trained, (x_va, y_va), (x_te, y_te))
    teacher = run.results["models"]["teacher"]
    kd_names = [arm_name(t, a) for t, a in itertools.product(temperatures, alphas)]
    best = max(kd_names, key=lambda n: rank(per_arm[n]))
    result: dict[str, Any] = {
        "pipeline": cfg.name, "dir": str(run_dir), "seeds": d.seeds, "loss": d.loss,
        "temperatures": temperatures, "alphas": alphas,
        "teacher": {"arch": teacher["arch"], "val_accuracy": teacher["val_accuracy_torch"],
                    "test_accuracy": teacher["test_accuracy_torch"]},
        "arms": per_arm, "best": best,
        "best_setting": dict(zip(("temperature", "alpha"),
                                 next((t, a) for t, a in itertools.product(temperatures, alphas)
                                      if arm_name(t, a) == best), strict=True)),
        "selection": "highest mean validation accuracy over seeds (ties: lower mean validation loss)",
    }
    if "scratch" in per_arm:
        kd, sc = per_arm[best]["test"], per_arm["scratch"]["test"]
        spread = max(statistics.stdev(kd), statistics.stdev(sc)) if len(kd) > 1 else 0.0
        gap = teacher["test_accuracy_torch"] - mean(sc)
        result["best_vs_scratch"] = {
            "diff_pp": 100 * (mean(kd) - mean(sc)), "spread_pp": 100 * spread,
            "beats": mean(kd) - mean(sc) > spread,
            "gap_closed": (mean(kd) - mean(sc)) / gap if gap > 1e-9 else None,
        }
    write_json(run_dir / "sweep.json", result)
    return result


def format_sweep(result: dict[str, Any]) -> str:
    """The sweep as a text table (accuracy in %, mean ± sd over seeds), then the validation-only choice."""
    t = result["teacher"]
    lines = [f"teacher {t['arch']}: val {100 * t['val_accuracy']:.2f} %, test {100 * t['test_accuracy']:.2f} %",
             f"{'arm':<22} {'val':>14} {'test':>14}", "-" * 52]
    for name, acc in result["arms"].items():
        mark = " <- best on validation" if name == result["best"] else ""
        lines.append(f"{name:<22} {mean_sd_text(acc['val']):>14} {mean_sd_text(acc['test']):>14}{mark}")
    s = result["best_setting"]
    lines.append(f"chosen on validation: T={s['temperature']:g}, alpha={s['alpha']:g} ({result['selection']})")
    b = result.get("best_vs_scratch")
    if b:
        gap = "n/a" if b["gap_closed"] is None else f"{100 * b['gap_closed']:.0f} %"
        lines.append(f"its test accuracy vs scratch: {b['diff_pp']:+.2f} pp (larger seed sd {b['spread_pp']:.2f} pp: "
                     f"{'MORE' if b['beats'] else 'not more'} than the spread); gap closed {gap}")
    lines.append(f"wrote {result['dir']}/sweep.json")
    return "\n".join(lines)

