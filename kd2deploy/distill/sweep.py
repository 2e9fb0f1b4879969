"""``kd2deploy sweep``: the distillation settings searched on the VALIDATION split by an Optuna study.

``kd2deploy sweep PIPELINE --budget 20m`` (or ``--trials N``) runs the pipeline's data and teacher stages, then
one study per arm family (KD and each control, the same budget each; see ``distill/study.py``) into
``<out>/<name>-sweep/study.db``. Stopped (Ctrl-C) and run again, it continues the same studies. It writes
``sweep.json`` (every trial: settings, validation accuracy, curve, state), ``best.yaml`` (the pipeline with the
best settings) and plots of the studies. The test split is never read.
"""

from __future__ import annotations

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


def sweep_pipeline(cfg, source: Path, out: Path = Path("runs"), *, budget_s: float | None = None,
                   n_trials: int | None = None, sampler: str | None = None, overrides: dict[str, list] | None = None,
                   progress=None) -> dict[str, Any]:
    """Runs (or continues) the study of ``cfg`` in ``out/<name>-sweep/``; returns the summary (``sweep.json``).

    Args:
        source: the pipeline file (``best.yaml`` is it with the chosen settings).
        budget_s, n_trials: per arm family; default: ``distill.search``'s.
        sampler: "auto", "tpe" or "grid"; default ``distill.search.sampler``.
        overrides: candidate lists that replace the pipeline's search lists (e.g. ``{"temperatures": [2, 4]}``).
    """
    import torch

    from kd2deploy import ui
    from kd2deploy.distill import study
    from kd2deploy.energy.meter import EnergyMeter
    from kd2deploy.engine.state import RunState
    from kd2deploy.rundir import write_json
    from kd2deploy.tasks.tensor.adapter import TensorTask

    d = cfg.distill
    if d.terms:
        raise ConfigError("sweep: distill.terms is set; the sweep searches the single-term loss (remove terms)")
    if d.transfer.shift_px or d.transfer.mixup_alpha:
        raise ConfigError("sweep: distill.transfer shifts / mixup are on; the sweep trains without them "
                          "(set distill.transfer.shift_px: 0 and mixup_alpha: 0)")
    search_cfg = d.search.model_copy(update=overrides or {})
    d = d.model_copy(update={"search": search_cfg})
    run_dir = Path(out) / f"{cfg.name}-sweep"
    run_dir.mkdir(parents=True, exist_ok=True)
    task = TensorTask(cfg)
    run = RunState(cfg=cfg, task=task, dir=run_dir, meter=EnergyMeter(run_dir / "energy", enabled=False))
    budget = search_cfg.budget_s if budget_s is None and n_trials is None else budget_s
    trials = search_cfg.trials if budget_s is None and n_trials is None else n_trials
    own_progress = progress is None
    progress = progress or ui.progress()
    with progress if own_progress else nullcontext():
        run.results["data"] = task.load_data(run)
        task.train_teacher(run, progress)
        x_tr, _, x_va, y_va, _x_te, _y_te = task.tensors  # the test split stays unread
        labelled = task.labelled()
        problem = study.Problem(
            build=task.new_student, x_train=x_tr, y_train=task.masked_labels(labelled),
            x_val=x_va, y_val=y_va, teacher=run.teacher, train=d.train, seeds=search_cfg.seeds or d.seeds,
            labelled=labelled, munge_seed=cfg.seed)
        space = study.default_space(d)
        ptask = progress.add_task("sweep", total=None, info="")

        def on_trial(family, rec):
            progress.update(ptask, info=f"{family} #{rec['number']}: val {rec['val_acc']:.2%}")

        torch.manual_seed(cfg.seed)
        prefix = f"{cfg.name}-{_space_key(cfg)}"
        interrupted = False
        try:
            study.search(problem, space, run_dir / "study.db", budget_s=budget, n_trials=trials,
                         sampler=sampler or search_cfg.sampler, seed=cfg.seed, study_prefix=prefix,
                         on_trial=on_trial)
        except KeyboardInterrupt:
            interrupted = True
    result = study.summarise(run_dir / "study.db", prefix)
    teacher = run.results["models"]["teacher"]
    result.update({
        "pipeline": cfg.name, "dir": str(run_dir), "seeds": problem.seeds, "interrupted": interrupted,
        "sampler": sampler or search_cfg.sampler, "budget_s_per_family": budget, "trials_per_family": trials,
        "teacher": {"arch": teacher["arch"], "val_accuracy": teacher["val_accuracy_torch"]},
        "test_split": "never read by the sweep",
    })
    result["best_overrides"] = study.best_overrides(result)
    result["plots"] = study.plot_study(run_dir / "study.db", prefix, run_dir / "plots")
    if result["best_overrides"]:
        result["best_pipeline"] = str(write_best_pipeline(source, result["best_overrides"], run_dir / "best.yaml"))
    write_json(run_dir / "sweep.json", result)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _space_key(cfg) -> str:
    """A short hash of what a trial's result depends on besides its settings (data, teacher, student, seeds):
    a changed pipeline starts a new study instead of mixing results."""
    import hashlib
    import json

    r = cfg.resolved()
    keep = {k: r[k] for k in ("seed", "data", "teacher", "student")}
    keep["distill"] = {k: r["distill"][k] for k in ("seeds", "labelled_fraction", "teacher_labels", "controls")}
    keep["train"] = {k: v for k, v in r["distill"]["train"].items() if k not in ("epochs", "lr")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:8]


def write_best_pipeline(source: Path, distill: dict[str, Any], dest: Path) -> Path:
    """``source`` with the ``distill`` changes applied (comments are not kept), validated before it is written."""
    import yaml

    from kd2deploy.config import load_config

    data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    section = data.setdefault("distill", {})
    for key, value in distill.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    base = Path(source).resolve().parent
    for sec in ("data", "teacher"):  # relative paths stay valid from the new folder
        for key in ("path", "checkpoint"):
            v = (data.get(sec) or {}).get(key)
            if isinstance(v, str) and not Path(v).is_absolute():
                data[sec][key] = str(base / v)
    text = "# written by kd2deploy sweep: the settings chosen on the validation split\n" + yaml.safe_dump(
        data, sort_keys=False)
    dest.write_text(text, encoding="utf-8")
    load_config(dest)
    return dest


def format_sweep(result: dict[str, Any]) -> str:
    """Each family's trials in brief and its best setting (validation accuracy, mean over seeds)."""
    t = result["teacher"]
    lines = [f"teacher {t['arch']}: val {100 * t['val_accuracy']:.2f} %"]
    for family, fam in result["families"].items():
        lines.append(f"{family}: {len(fam['trials'])} trials ({fam['n_complete']} complete, {fam['n_pruned']} "
                     f"pruned), {fam['spent_s']:.0f} s")
        b = fam["best"]
        if b:
            lines.append(f"  best on validation: {100 * b['val_accuracy']:.2f} % (trial {b['number']}): "
                         + ", ".join(f"{k}={v}" for k, v in b["params"].items()))
    lines.append(f"chosen on validation: {result['selection']}")
    if result.get("best_pipeline"):
        lines.append(f"wrote {result['best_pipeline']}")
    lines.append(f"wrote {result['dir']}/sweep.json")
    return "\n".join(lines)
