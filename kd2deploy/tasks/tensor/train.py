"""The tensor task's teacher and students: training (with resume), cache restore, arms and their summary."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kd2deploy import ui
from kd2deploy.engine.state import writes
from kd2deploy.errors import StageError
from kd2deploy.rundir import save_torch_atomic

if TYPE_CHECKING:
    from kd2deploy.engine.state import RunState
    from kd2deploy.tasks.tensor.adapter import TensorTask

log = logging.getLogger("kd2deploy")


def guarded(state: RunState, train):
    """Runs ``train()``; if the loss diverges, saves the diverged model's last good weights (inner model, as the
    other checkpoints) to ``checkpoints/<model>.last_good.pt`` and re-raises naming the model, epoch and file."""
    from kd2deploy.distill.train import DivergedError

    try:
        return train()
    except DivergedError as e:
        path = state.path("checkpoints", f"{e.name.replace(' ', '_').replace('/', '_')}.last_good.pt")
        if e.state is not None and writes():
            prefix = "model."  # the Standardized wrapper's prefix: checkpoints hold the inner model
            save_torch_atomic({k.removeprefix(prefix): v for k, v in e.state.items() if k.startswith(prefix)}, path)
        raise StageError(f"{e} The last good weights are in {path.relative_to(state.dir)}.") from e


def teacher_files(task: TensorTask) -> list[str]:
    n = len(task.cfg.teacher.ensemble)
    return [f"teacher_member{i}.pt" for i in range(n)] if n else ["teacher.pt"]


def _train_member(task: TensorTask, state: RunState, progress, m: dict[str, Any], label: str,
                  labelled) -> tuple[Any, dict]:
    """Builds one teacher (or ensemble member), trains it or loads its checkpoint; returns (module, record)."""
    import torch

    from kd2deploy.distill.train import evaluate, fit
    from kd2deploy.models.nets import count_params
    from kd2deploy.tasks.tensor.models import load_checkpoint

    x_tr, _, x_va, y_va, x_te, y_te = task.tensors
    torch.manual_seed(m["seed"])
    inner = task.build_arch(m["arch"], m["kwargs"], "teacher")
    record: dict[str, Any] = {"arch": m["arch"], "seed": m["seed"], "params": count_params(inner)}
    if m["checkpoint"] is not None:
        load_checkpoint(inner, m["checkpoint"])
        model = task.wrap(inner)
        task.check_logits(model, "teacher", m["arch"])
        record.update(source="checkpoint", checkpoint=str(m["checkpoint"]), curve=[])
    else:
        model = task.wrap(inner)
        task.check_logits(model, "teacher", m["arch"])
        own = labelled if task.cfg.distill.teacher_labels == "labelled" else None
        ptask = progress.add_task(label, total=m["train"].epochs, info="")
        resume = state.resumes.get("teacher")
        hist = guarded(state, lambda: fit(
            model, x_tr, task.masked_labels(own), x_va, y_va, m["train"], m["seed"], name=label, pool=own,
            checkpoint=resume.slot(label) if resume is not None else None,
            on_epoch=lambda e, mt: progress.update(ptask, completed=e, info=f"val acc {mt['val_acc']:.3f}")))
        record.update(source="trained", curve=hist.epochs, train_time_s=hist.train_time_s)
    record["test_accuracy_torch"] = evaluate(model, x_te, y_te)["acc"]
    record["val_accuracy_torch"] = evaluate(model, x_va, y_va)["acc"]
    return model, record


def train_teacher(task: TensorTask, state: RunState, progress) -> list[str]:
    """Trains (or loads) the teacher — or every member of an ensemble — and records what it saw."""
    from kd2deploy.distill.teacher import EnsembleTeacher
    from kd2deploy.distill.train import evaluate

    cfg = task.cfg.teacher
    labelled = task.labelled()
    members = cfg.members(task.cfg.seed)
    single = not cfg.ensemble
    trains = any(m["checkpoint"] is None for m in members)
    modules, records = [], []
    names = teacher_files(task)
    with (state.meter.track("train:teacher") if trains else nullcontext()) as energy:
        for m, name in zip(members, names, strict=True):
            model, rec = _train_member(task, state, progress, m, "teacher" if single else name[:-3].replace(
                "_member", " member "), labelled)
            modules.append(model)
            records.append(rec)
            if writes():
                save_torch_atomic(model.model.state_dict(), state.path("checkpoints", name))
    n_train = len(task.tensors[1])
    seen = "all" if labelled is None or task.cfg.distill.teacher_labels == "all" else "labelled"
    trained_on = {"labels": seen, "n_labelled": n_train if seen == "all" else len(labelled), "n_train": n_train}
    if single:
        record = records[0]
        record.pop("seed")
        teacher = modules[0]
    else:
        _, _, x_va, y_va, x_te, y_te = task.tensors
        teacher = EnsembleTeacher(modules)
        record = {
            "arch": "ensemble(" + ", ".join(r["arch"] for r in records) + ")",
            "params": sum(r["params"] for r in records),
            "source": "trained" if trains else "checkpoint", "curve": [], "members": records,
            "train_time_s": sum(r.get("train_time_s", 0.0) for r in records),
            "test_accuracy_torch": evaluate(teacher, x_te, y_te)["acc"],
            "val_accuracy_torch": evaluate(teacher, x_va, y_va)["acc"],
            "combine": "mean of the members' softmax probabilities (at T for distillation, T=1 for prediction)",
        }
    if trains:
        record["energy"] = energy.as_dict()
        record["trained_on"] = trained_on
    state.teacher = teacher
    state.results.setdefault("models", {})["teacher"] = record
    say_teacher(task, record)
    return names


def say_teacher(task: TensorTask, record: dict[str, Any], reused: str = "") -> None:
    members_text = "" if "members" not in record else " = " + ", ".join(
        f"{r['arch']}/seed{r['seed']} {r['test_accuracy_torch']:.2%}" for r in record["members"])
    seen = (record.get("trained_on") or {}).get("labels") if task.cfg.distill.labelled_fraction < 1 else None
    ui.step(f"teacher {record['arch']} ({record['params']:,} params, {record['source']}"
            f"{', labels: ' + seen if seen else ''}): "
            f"test acc {record['test_accuracy_torch']:.2%}{members_text}{reused}")


def teacher_modules(task: TensorTask, folder: Path | None = None) -> Any:
    """The teacher module (single or ensemble) built for this run's data, loaded from ``folder`` if given."""
    import torch

    from kd2deploy.distill.teacher import EnsembleTeacher

    members = task.cfg.teacher.members(task.cfg.seed)
    with torch.random.fork_rng(devices=[]):  # leave the global RNG as it was
        inner = [task.build_arch(m["arch"], m["kwargs"], "teacher") for m in members]
    if folder is not None:
        for module, name in zip(inner, teacher_files(task), strict=True):
            module.load_state_dict(torch.load(folder / name, map_location="cpu", weights_only=True))
    modules = [task.wrap(m).eval() for m in inner]
    return modules[0] if len(modules) == 1 else EnsembleTeacher(modules).eval()


def restore_students(task: TensorTask, state: RunState, folder: Path, record: dict[str, Any]) -> None:
    import torch

    seed = record["shipped_seed"]
    arm = record.get("shipped_arm", "kd")
    with torch.random.fork_rng(devices=[]):
        state.student = task.load_student(folder / f"student_{arm}_seed{seed}.pt")
        state.scratch = (task.load_student(folder / f"student_scratch_seed{seed}.pt")
                         if "scratch" in record["arms"] and arm != "scratch" else None)


def kd_terms(d) -> list[dict[str, Any]]:
    """The KD student's loss terms, resolved: ``distill.terms``, or the one term ``loss/temperature/alpha``."""
    if not d.terms:
        return [{"loss": d.loss, "weight": 1.0, "temperature": d.temperature, "alpha": d.alpha}]
    out = []
    for t in d.terms:
        if t.loss == "hint":
            out.append({"loss": "hint", "weight": t.weight, "student_layer": t.student_layer,
                        "teacher_layer": t.teacher_layer})
        elif t.loss == "ce":
            out.append({"loss": "ce", "weight": t.weight})
        else:
            out.append({"loss": t.loss, "weight": t.weight,
                        "temperature": d.temperature if t.temperature is None else t.temperature,
                        "alpha": d.alpha if t.alpha is None else t.alpha})
    return out


def arms_of(d):
    """The (arm, seed) students of the comparison: KD and each control, per seed."""
    from kd2deploy.distill.arms import Arm
    from kd2deploy.distill.terms import Term

    terms = kd_terms(d)
    logit = [t for t in terms if t["loss"] not in ("hint", "ce")]
    simple = len(terms) == 1 and logit and terms[0]["weight"] == 1.0
    arms = []
    for seed in d.seeds:
        if simple:
            arms.append(Arm("kd", seed, loss=logit[0]["loss"], temperature=logit[0]["temperature"],
                            alpha=logit[0]["alpha"], options=tuple(sorted(d.options.items()))))
        else:
            first = logit[0] if logit else {"loss": "hint", "temperature": 1.0, "alpha": 0.0}
            arms.append(Arm("kd", seed, loss=first["loss"], temperature=first["temperature"], alpha=first["alpha"],
                            terms=tuple(Term(**t) for t in terms)))
        if "scratch" in d.controls:
            arms.append(Arm("scratch", seed))
        if "label_smoothing" in d.controls:
            arms.append(Arm("label_smoothing", seed, label_smoothing=d.control_label_smoothing))
    return arms


def teacher_logits(task: TensorTask, state: RunState, perturb) -> tuple[Any, dict[str, Any]]:
    """The teacher's outputs on the transfer set: from the on-disk store (``distill.teacher_store``), computed
    once in memory (store off, or no cache), or None when per-step perturbations make the teacher run per batch."""
    from kd2deploy.distill import dist
    from kd2deploy.distill.store import teacher_outputs
    from kd2deploy.distill.teacher import teacher_logits_of

    cfg = task.cfg.distill.teacher_store
    if perturb.active:
        if cfg.enabled:
            log.info("teacher store not used: per-step shifts / mixup make the teacher run on every batch")
        return None, {"used": False, "reason": "per-step shifts / mixup: the teacher runs on every batch"}
    x_tr = task.tensors[0]
    if not cfg.enabled or not state.use_cache:
        why = "distill.teacher_store.enabled is false" if not cfg.enabled else "the cache is off"
        return teacher_logits_of(state.teacher, x_tr), {"used": False, "reason": f"{why}: computed once in memory"}
    root = Path(state.out) / ".cache" / "teacher_outputs"
    outputs, record = teacher_outputs(state.teacher, x_tr, root, task.cfg.resolved()["data"], cfg.top_k)
    record["used"] = True
    record["shards"] = dist.context().world_size
    return outputs, record


def train_students(task: TensorTask, state: RunState, progress) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Trains every (arm, seed) student; returns (arms, trained [(model, history)], the task's distill record)."""
    import torch

    from kd2deploy.distill.arms import train_arms
    from kd2deploy.distill.transfer import Perturb

    try:
        from kd2deploy.distill.batched import train_arms_batched as trainer
    except ImportError:  # pragma: no cover - the batched trainer is optional
        trainer = train_arms
    cfg = task.cfg.distill
    x_tr, y_tr, x_va, y_va, _, _ = task.tensors
    perturb = Perturb(cfg.transfer.shift_px, cfg.transfer.mixup_alpha)
    logits, store_record = teacher_logits(task, state, perturb)
    labelled = task.labelled()
    arms = arms_of(cfg)
    task.check_logits(task.new_student(), "student", task.cfg.student.arch)
    tasks = {arm.key: progress.add_task(f"student {arm.key}", total=cfg.train.epochs, info="") for arm in arms}

    def on_epoch(arm, epoch, m):
        progress.update(tasks[arm.key], completed=epoch, info=f"val acc {m['val_acc']:.3f}")

    extra = {}
    search = None
    unsearched = why_not_searched(cfg, perturb) if cfg.search.enabled else None
    searching = cfg.search.enabled and unsearched is None
    if (searching or cfg.calibrate_teacher or cfg.munge.passes) and hasattr(logits, "dense"):
        logits = logits.dense()  # the teacher-output store's entry, as one tensor the plug-ins can transform
    if searching:
        search = search_settings(task, state, logits, labelled)
        cfg = apply_search(cfg, search)
        arms = arms_of(cfg)
    elif unsearched:
        search = {"skipped": unsearched}
        log.info("distill.search not run: %s", unsearched)
    y_used, x_used = task.masked_labels(labelled), x_tr
    if cfg.calibrate_teacher and isinstance(logits, torch.Tensor):
        from kd2deploy.distill.synthetic import fit_temperature
        from kd2deploy.distill.teacher import teacher_logits_of

        t_cal = fit_temperature(teacher_logits_of(state.teacher, x_va), y_va)
        logits = logits / t_cal
        extra["teacher_calibration"] = {"temperature": t_cal, "fitted_on": "validation NLL (Guo et al. 2017)"}
    if cfg.munge.passes and isinstance(logits, torch.Tensor):
        from kd2deploy.distill.synthetic import Munge, with_munge

        how = Munge(cfg.munge.passes, cfg.munge.p, cfg.munge.s)
        x_used, y_used, full, real = with_munge(x_tr, y_used, logits, state.teacher, how, task.cfg.seed)
        if calibrated := extra.get("teacher_calibration"):  # the synthetic samples' logits, calibrated alike
            full = torch.cat([logits, full[len(x_tr):] / calibrated["temperature"]])
        logits, labelled = full, real if labelled is None else labelled
        extra["munge"] = {"passes": how.passes, "p": how.p, "s": how.s, "n_transfer": len(x_used),
                          "controls": "real samples only, same number of steps"}
    groups = {}  # arms that share a training config train together
    for arm in arms:
        groups.setdefault(arm.name if arm.name in cfg.control_train else "", []).append(arm)
    done = {}
    for name, group in groups.items():
        ct = cfg.control_train.get(name)
        train_cfg = cfg.train if ct is None else cfg.train.model_copy(
            update={k: v for k, v in (("epochs", ct.epochs), ("lr", ct.lr)) if v is not None})
        got = guarded(state, lambda group=group, train_cfg=train_cfg: trainer(
            task.new_student, group, (x_used, y_used, x_va, y_va),
            logits, train_cfg, on_epoch=on_epoch, labelled=labelled, teacher=state.teacher,
            perturb=perturb, resume=state.resumes.get("students")))
        done.update(zip(group, got, strict=True))
    trained = [done[a] for a in arms]
    n_train = len(y_tr)
    n_lab = n_train if labelled is None else len(labelled)
    teacher_rec = state.results["models"]["teacher"]
    record = {
        "loss": cfg.loss if not cfg.terms else "+".join(t["loss"] for t in kd_terms(cfg)),
        "temperature": cfg.temperature, "alpha": cfg.alpha, "terms": kd_terms(cfg), "options": dict(cfg.options),
        "control_train": {k: v.model_dump() for k, v in cfg.control_train.items()},
        "control_label_smoothing": cfg.control_label_smoothing, **extra,
        "student_arch": task.cfg.student.arch,
        "teacher": {
            "kind": "ensemble" if task.cfg.teacher.ensemble else "single",
            "members": len(teacher_rec.get("members", [])) or 1,
            "labels_seen": (teacher_rec.get("trained_on") or {}).get("labels", "unknown (checkpoint)"),
        },
        "labels": {
            "labelled_fraction": cfg.labelled_fraction, "n_labelled": n_lab, "n_train": n_train,
            "kd": "soft term on every training sample, hard-label term on the labelled ones only",
            "controls": "labelled samples only, same number of steps and batch size as KD",
        },
        "transfer": {"shift_px": perturb.shift_px, "mixup_alpha": perturb.mixup_alpha,
                     "teacher_outputs": "per batch, on the student's view" if perturb.active else
                     ("from the teacher-output store" if store_record.get("key") else "computed once"),
                     "teacher_store": store_record},
    }
    if search is not None:
        record["search"] = search
    return arms, trained, record


def why_not_searched(cfg, perturb) -> str | None:
    """Why ``distill.search`` (on) cannot run for this pipeline; None when it can."""
    from kd2deploy.distill import dist

    if dist.context().active:
        return "not run under --nproc (every rank would run its own study); the settings as written were used"
    if perturb.active:
        return "per-step shifts / mixup (distill.transfer) are outside the search; the settings as written were used"
    if cfg.terms:
        return "hint terms (distill.terms) are outside the search; the settings as written were used"
    return None


def search_settings(task: TensorTask, state: RunState, logits, labelled) -> dict[str, Any]:
    """``distill.search``: an Optuna study per arm family on the validation split (``distill/study.py``), stored in
    the run folder; returns its summary with the settings it chose."""
    import torch

    from kd2deploy.distill import study

    cfg = task.cfg.distill
    x_tr, _, x_va, y_va, _, _ = task.tensors
    problem = study.Problem(build=task.new_student, x_train=x_tr, y_train=task.masked_labels(labelled), x_val=x_va,
                            y_val=y_va, teacher=state.teacher, train=cfg.train, seeds=cfg.search.seeds or cfg.seeds,
                            labelled=labelled, munge_seed=task.cfg.seed,
                            train_logits=logits if isinstance(logits, torch.Tensor) else None)
    families = ["kd", *cfg.controls]
    summary = study.search(problem, study.default_space(cfg), state.path("search", "study.db"), families=families,
                           budget_s=cfg.search.budget_s, n_trials=cfg.search.trials, sampler=cfg.search.sampler,
                           seed=task.cfg.seed, study_prefix=task.cfg.name, skip_fixed=True)
    summary["chosen"] = study.best_overrides(summary)
    summary["plots"] = study.plot_study(state.path("search", "study.db"), task.cfg.name, state.dir / "search")
    return summary


def apply_search(cfg, search: dict[str, Any]):
    """``cfg`` (a DistillConfig) with the settings the search chose."""
    chosen = dict(search["chosen"])
    update: dict[str, Any] = {}
    for key in ("loss", "temperature", "alpha", "options", "calibrate_teacher", "control_label_smoothing"):
        if key in chosen:
            update[key] = chosen[key]
    if "munge" in chosen:
        update["munge"] = cfg.munge.model_copy(update=chosen["munge"])
    if "train" in chosen:
        update["train"] = cfg.train.model_copy(update=chosen["train"])
    if "control_train" in chosen:
        from kd2deploy.config import ControlTrain

        update["control_train"] = {k: ControlTrain(**v) for k, v in chosen["control_train"].items()}
    return cfg.model_copy(update=update)
