"""Search of the distillation settings on the VALIDATION split, as an Optuna study (Akiba et al. 2019).

One study per arm family: ``kd`` (method, T, alpha, the method's own weights, the transfer set, the teacher's
calibration, epochs, learning rate) and each control (``label_smoothing``: its strength, epochs, learning rate;
``scratch``: epochs, learning rate). Every family gets the same budget (time or trials), so the comparison stays
fair. A trial trains the family's arm once per seed, all seeds stacked into one model (``batched.py``), and its
value is the seeds' mean validation accuracy (ties broken by the lower mean validation loss, weighted 1e-4: less
than one validation sample's worth of accuracy). The test split is never given to this module.

Pruning: after every epoch a trial reports its seeds' mean validation accuracy at the step "percent of its
schedule done" (schedules of different lengths are compared at the same point of their one-cycle schedule), and
Optuna's median pruner stops a trial that is below the median of earlier trials at that step.

The studies live in one SQLite file; a search that is interrupted (Ctrl-C) and started again with the same
storage continues the same studies: finished trials stay, and the budget counts the time they took.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kd2deploy.errors import ConfigError, Kd2DeployError

log = logging.getLogger(__name__)

FAMILIES = ("kd", "label_smoothing", "scratch")
SAMPLERS = ("auto", "tpe", "grid")
AUTO_GRID_MAX = 12  # "auto": every combination when a family's grid has at most this many, else TPE
# What the search tries for a setting the pipeline file leaves unset (a setting the file sets stays fixed unless
# its search list names candidates): Hinton's T and alpha over their usual range (Hinton et al. 2015 used T up to
# 20 on MNIST; 1-4 is where small students do best, Cho & Hariharan 2019), and label-smoothing strengths around
# Szegedy et al.'s 0.1 (Mueller et al. 2019).
UNSET_CANDIDATES = {"temperature": [1.0, 2.0, 4.0], "alpha": [0.5, 0.9],
                    "control_label_smoothing": [0.05, 0.1, 0.2]}
TIE_WEIGHT = 1e-4  # value = mean val accuracy - TIE_WEIGHT * mean val loss


class Pruned(Kd2DeployError):
    """Raised from the per-epoch callback to stop a trial (a Kd2DeployError, so the batched trainer re-raises it
    instead of retrying the arms one by one)."""


@dataclass
class Problem:
    """What a trial trains: the student builder, the training and validation tensors (never the test split), the
    teacher, the base training settings and the seeds.

    Attributes:
        labelled: indices of the training samples that keep a label (few labels), or None (all).
        munge_seed: seeds the MUNGE transfer set.
        train_logits: the teacher's logits on ``x_train`` if already computed (else computed once here).
    """

    build: Callable[[], Any]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    teacher: Any
    train: Any  # a config.TrainConfig
    seeds: list[int]
    labelled: torch.Tensor | None = None
    munge_seed: int = 0
    train_logits: torch.Tensor | None = None  # the teacher's logits on x_train, when the caller has them
    _logits: dict = field(default_factory=dict)

    def teacher_logits(self, x: torch.Tensor, key: str) -> torch.Tensor:
        from kd2deploy.distill.teacher import teacher_logits_of

        if key == "train" and self.train_logits is not None:
            return self.train_logits
        if key not in self._logits:
            self._logits[key] = teacher_logits_of(self.teacher, x)
        return self._logits[key]

    def calibration(self) -> float:
        """The teacher's temperature fitted on validation (``synthetic.fit_temperature``), computed once."""
        from kd2deploy.distill.synthetic import fit_temperature

        if "T_cal" not in self._logits:
            self._logits["T_cal"] = fit_temperature(self.teacher_logits(self.x_val, "val"), self.y_val)
        return self._logits["T_cal"]


def default_space(d) -> dict[str, dict[str, list]]:
    """The search space per family, from a DistillConfig: its ``search`` lists; a setting without one keeps the
    pipeline's own value (a one-value list is not searched), except T, alpha and the label-smoothing strength when
    the pipeline file leaves them unset: those get :data:`UNSET_CANDIDATES`."""
    s = d.search

    def unset_or(name: str, listed: list) -> list:
        if listed:
            return list(listed)
        return [getattr(d, name)] if name in d.model_fields_set else list(UNSET_CANDIDATES[name])

    kd = {
        "method": s.methods or [d.loss],
        "temperature": unset_or("temperature", s.temperatures),
        "alpha": unset_or("alpha", s.alphas),
        "nontarget_weight": s.nontarget_weights or [d.options.get("nontarget_weight", 8.0)],
        "standardize_logits": s.standardize_logits or [bool(d.options.get("standardize_logits", False))],
        "hard_label_smoothing": s.hard_label_smoothing or [d.options.get("label_smoothing", 0.0)],
        "munge_passes": s.munge_passes or [d.munge.passes],
        "calibrate_teacher": s.calibrate_teacher or [d.calibrate_teacher],
        "epochs": s.epochs or [d.train.epochs],
        "lr": s.lrs or [d.train.lr],
    }
    ls = d.control_train.get("label_smoothing")
    sc = d.control_train.get("scratch")
    return {
        "kd": kd,
        "label_smoothing": {"label_smoothing": unset_or("control_label_smoothing", s.control_label_smoothing),
                            "epochs": s.epochs or [ls.epochs if ls and ls.epochs else d.train.epochs],
                            "lr": s.lrs or [ls.lr if ls and ls.lr else d.train.lr]},
        "scratch": {"epochs": s.epochs or [sc.epochs if sc and sc.epochs else d.train.epochs],
                    "lr": s.lrs or [sc.lr if sc and sc.lr else d.train.lr]},
    }


def grid_size(space: dict[str, list]) -> int:
    return math.prod(len(v) for v in space.values())


def kd_options(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The loss options a kd trial's parameters stand for (only those its method takes)."""
    from kd2deploy.distill.losses import loss_options

    allowed = loss_options(params["method"])
    opts = {"label_smoothing": params["hard_label_smoothing"], "standardize_logits": params["standardize_logits"],
            "nontarget_weight": params["nontarget_weight"]}
    return tuple((k, v) for k, v in opts.items() if k in allowed and v != allowed[k])


def run_trial(problem: Problem, family: str, params: dict[str, Any],
              report: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Trains ``family`` with ``params`` once per seed (stacked) and returns its validation figures.

    ``report(step, mean_val_acc)`` is called after every epoch (step = percent of the schedule done); it may raise
    :class:`Pruned`. Returns ``{"val_acc", "val_loss", "per_seed", "curve", "wall_s"}``.
    """
    from kd2deploy.distill.arms import Arm
    from kd2deploy.distill.batched import train_arms_batched
    from kd2deploy.distill.synthetic import Munge, with_munge
    from kd2deploy.distill.train import evaluate

    cfg = problem.train.model_copy(update={"epochs": int(params["epochs"]), "lr": float(params["lr"])})
    x, y, labelled, tl = problem.x_train, problem.y_train, problem.labelled, None
    if family == "kd":
        opts = kd_options(params)
        arms = [Arm("kd", s, loss=params["method"], temperature=float(params["temperature"]),
                    alpha=float(params["alpha"]), options=opts) for s in problem.seeds]
        tl = problem.teacher_logits(x, "train")
        passes = int(params["munge_passes"])
        if passes:
            x, y, tl, real = with_munge(x, y, tl, problem.teacher, Munge(passes=passes), problem.munge_seed)
            labelled = real if labelled is None else labelled
        if params["calibrate_teacher"]:
            tl = tl / problem.calibration()
    elif family == "label_smoothing":
        arms = [Arm("label_smoothing", s, label_smoothing=float(params["label_smoothing"])) for s in problem.seeds]
    elif family == "scratch":
        arms = [Arm("scratch", s) for s in problem.seeds]
    else:
        raise ConfigError(f"unknown arm family {family!r}; allowed: {', '.join(FAMILIES)}")
    curve: dict[int, list[float]] = {}
    reported: set[int] = set()

    def on_epoch(_arm, epoch, metrics):
        got = curve.setdefault(epoch, [])
        got.append(metrics["val_acc"])
        step = round(100 * epoch / cfg.epochs)
        if len(got) == len(arms) and report is not None and step not in reported:  # > 100 epochs share a step
            reported.add(step)
            report(step, sum(got) / len(got))

    t0 = time.perf_counter()
    trained = train_arms_batched(problem.build, arms, (x, y, problem.x_val, problem.y_val), tl, cfg,
                                 on_epoch=on_epoch, labelled=labelled, teacher=problem.teacher)
    per_seed = [evaluate(model, problem.x_val, problem.y_val) for model, _ in trained]
    acc = sum(r["acc"] for r in per_seed) / len(per_seed)
    loss = sum(r["loss"] for r in per_seed) / len(per_seed)
    return {"val_acc": acc, "val_loss": loss, "per_seed": [r["acc"] for r in per_seed],
            "curve": [sum(v) / len(v) for _, v in sorted(curve.items())], "wall_s": time.perf_counter() - t0}


def resolve_sampler(kind: str, space: dict[str, list]) -> str:
    """``auto``: ``grid`` for a family's grid of at most :data:`AUTO_GRID_MAX` combinations, else ``tpe``."""
    if kind == "auto":
        return "grid" if grid_size(space) <= AUTO_GRID_MAX else "tpe"
    return kind


def _sampler(kind: str, space: dict[str, list], seed: int):
    import optuna

    if kind == "grid":
        return optuna.samplers.GridSampler(space, seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    raise ConfigError(f"sampler {kind!r} is not allowed; allowed: {', '.join(SAMPLERS)}")


def _finished(study) -> list:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False) if t.state in done]


def _spent_s(study) -> float:
    return sum(t.duration.total_seconds() for t in study.get_trials(deepcopy=False)
               if t.duration is not None)


def search(problem: Problem, space: dict[str, dict[str, list]], storage: Path, *, families=FAMILIES,
           budget_s: float | None = None, n_trials: int | None = None, sampler: str = "auto", seed: int = 0,
           study_prefix: str = "kd2deploy", on_trial: Callable[[str, dict], None] | None = None,
           skip_fixed: bool = False) -> dict[str, Any]:
    """Runs (or continues) one study per family in the SQLite file ``storage``; returns :func:`summarise`.

    Args:
        space: per family, the candidate values of each setting (``default_space``).
        budget_s: total seconds per family, counted over every run of the study (a rerun spends what is left);
            a trial that has started finishes.
        n_trials: total finished (complete or pruned) trials per family, over every run of the study.
        sampler: "tpe" (Optuna's TPE, seeded), "grid" (every combination once, in a seeded order) or "auto" (grid
            for a small grid, else TPE: :func:`resolve_sampler`).
        on_trial: called as ``on_trial(family, record)`` after each trial.
        skip_fixed: leave out a family with one combination (the run trains it anyway); the sweep keeps it, as
            the reference its table compares with.

    A trial whose training fails (diverged loss) scores -inf with its error kept; it is never the best.

    Raises:
        KeyboardInterrupt: passes through; the trial that was running is marked failed, the finished ones stay.
    """
    import optuna

    if budget_s is None and n_trials is None:
        raise ConfigError("search: give a time budget or a number of trials")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{storage.resolve()}"
    for family in families:
        fam_space = space[family]
        if skip_fixed and grid_size(fam_space) == 1:  # nothing to choose: the run trains it as written
            continue
        fam_sampler = resolve_sampler(sampler, fam_space)
        name = f"{study_prefix}-{family}"
        before = len(optuna.load_study(study_name=name, storage=url).trials) if _exists(url, study_prefix,
                                                                                          family) else 0
        study = optuna.create_study(  # a rerun loads the stored study; the sampler's seed moves on with it
            storage=url, study_name=name, direction="maximize", load_if_exists=True,
            sampler=_sampler(fam_sampler, fam_space, seed + before),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=25))
        study.set_user_attr("space", {k: list(v) for k, v in fam_space.items()})
        left_n = None if n_trials is None else n_trials - len(_finished(study))
        left_s = None if budget_s is None else budget_s - _spent_s(study)
        if fam_sampler == "grid":
            grid_left = grid_size(fam_space) - len(_finished(study))
            left_n = grid_left if left_n is None else min(left_n, grid_left)
        if (left_n is not None and left_n <= 0) or (left_s is not None and left_s <= 0):
            continue

        def objective(trial, family=family, fam_space=fam_space):
            params = {k: trial.suggest_categorical(k, v) for k, v in fam_space.items()}

            def report(step, value):
                trial.report(value, step)
                if trial.should_prune():
                    raise Pruned(f"trial {trial.number}: below the median at {step} % of its schedule")

            try:
                got = run_trial(problem, family, params, report)
            except Pruned:
                raise optuna.TrialPruned() from None
            except Kd2DeployError as e:  # e.g. the loss diverged: these settings failed, the others may not
                trial.set_user_attr("error", str(e))
                log.info("search: %s trial %d failed: %s", family, trial.number, e)
                return float("-inf")
            for k in ("val_acc", "val_loss", "per_seed", "wall_s"):
                trial.set_user_attr(k, got[k])
            if on_trial is not None:
                on_trial(family, {"number": trial.number, "params": params, **got})
            return got["val_acc"] - TIE_WEIGHT * got["val_loss"]

        study.optimize(objective, n_trials=left_n, timeout=left_s, catch=(), gc_after_trial=False)
    return summarise(storage, study_prefix, families)


def _exists(url: str, prefix: str, family: str) -> bool:
    import optuna

    return f"{prefix}-{family}" in {s.study_name for s in optuna.get_all_study_summaries(storage=url)}


def summarise(storage: Path, study_prefix: str, families=FAMILIES) -> dict[str, Any]:
    """Every trial of the stored studies and each family's best (validation only)."""
    import optuna

    url = f"sqlite:///{storage.resolve()}"
    out: dict[str, Any] = {"storage": str(storage), "families": {}}
    for family in families:
        if not _exists(url, study_prefix, family):
            continue
        study = optuna.load_study(study_name=f"{study_prefix}-{family}", storage=url)
        trials = []
        for t in study.get_trials(deepcopy=False):
            trials.append({
                "number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
                "val_accuracy": t.user_attrs.get("val_acc"), "val_loss": t.user_attrs.get("val_loss"),
                "val_accuracy_per_seed": t.user_attrs.get("per_seed"),
                "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                "duration_s": None if t.duration is None else t.duration.total_seconds(),
                **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
            })
        complete = [t for t in trials if t["state"] == "COMPLETE" and "error" not in t]
        best = max(complete, key=lambda t: (t["value"], -t["number"])) if complete else None
        out["families"][family] = {
            "study": study.study_name, "space": study.user_attrs.get("space"), "trials": trials,
            "n_complete": len(complete), "n_pruned": sum(t["state"] == "PRUNED" for t in trials),
            "spent_s": _spent_s(study), "best": best,
        }
    out["selection"] = ("per family, the complete trial with the highest mean validation accuracy over seeds "
                        f"(value = accuracy - {TIE_WEIGHT:g} x validation loss: ties go to the lower loss)")
    return out


def best_overrides(summary: dict[str, Any]) -> dict[str, Any]:
    """The ``distill`` section changes that apply the best settings found (for a pipeline file)."""
    fams = summary["families"]
    d: dict[str, Any] = {}
    kd = (fams.get("kd") or {}).get("best")
    if kd:
        p = kd["params"]
        from kd2deploy.distill.losses import loss_options

        allowed = loss_options(p["method"])
        opts = {k: v for k, v in dict(kd_options(p)).items() if k in allowed}
        d.update({"loss": p["method"], "temperature": float(p["temperature"]), "alpha": float(p["alpha"]),
                  "options": opts, "munge": {"passes": int(p["munge_passes"])},
                  "calibrate_teacher": bool(p["calibrate_teacher"]),
                  "train": {"epochs": int(p["epochs"]), "lr": float(p["lr"])}})
    ct: dict[str, Any] = {}
    for fam in ("label_smoothing", "scratch"):
        best = (fams.get(fam) or {}).get("best")
        if best:
            ct[fam] = {"epochs": int(best["params"]["epochs"]), "lr": float(best["params"]["lr"])}
            if fam == "label_smoothing":
                d["control_label_smoothing"] = float(best["params"]["label_smoothing"])
    if ct:
        d["control_train"] = ct
    return d


def plot_study(storage: Path, study_prefix: str, folder: Path, families=FAMILIES) -> dict[str, str]:
    """Optimisation history and parameter importances per family as PNGs; ``{name: file}`` of those written
    (importances need two complete trials with a varied setting; a plot that cannot be drawn is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    url = f"sqlite:///{storage.resolve()}"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    import warnings

    for family in families:
        if not _exists(url, study_prefix, family):
            continue
        study = optuna.load_study(study_name=f"{study_prefix}-{family}", storage=url)
        for name, fn in (("history", plot_optimization_history), ("importances", plot_param_importances)):
            try:
                with warnings.catch_warnings():  # optuna marks its matplotlib plots experimental
                    warnings.simplefilter("ignore")
                    ax = fn(study)
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                path = folder / f"study_{family}_{name}.png"
                fig.savefig(path, dpi=90, bbox_inches="tight")
                plt.close(fig)
                written[f"{family}_{name}"] = path.name
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                log.info("study plot %s/%s not drawn: %s", family, name, e)
    return written
