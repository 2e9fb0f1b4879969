"""Runs a pipeline over a run folder: data -> teacher -> students -> export -> benchmark -> energy -> report.

Every stage is a function of a :class:`Run`; each writes its part of ``results`` (the future results.json) and
its files into the run folder. ``run_pipeline`` is the Python API behind ``kd2deploy run``.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from kd2deploy import __version__, ui
from kd2deploy.config import PipelineConfig
from kd2deploy.errors import ConfigError, Kd2DeployError, StageError
from kd2deploy.rundir import new_run_dir, save_torch_atomic, write_atomic, write_json

log = logging.getLogger("kd2deploy")

RESULTS_SCHEMA_VERSION = 1


@dataclass
class Run:
    """State shared by the stages of one run."""

    cfg: PipelineConfig
    dir: Path
    source: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    tensors: tuple = ()
    teacher: Any = None
    student: Any = None
    scratch: Any = None
    onnx: dict[str, Path] = field(default_factory=dict)
    variants: dict[str, tuple[str, Path]] = field(default_factory=dict)  # label -> (FP32 model, file)
    latency: list[dict] = field(default_factory=list)  # the benchmark's results with their samples
    meter: Any = None
    cache: Any = None  # a kd2deploy.cache.StageCache, or None: every stage computes
    cache_keys: dict[str, tuple[str, dict]] = field(default_factory=dict)  # stage -> (key, inputs)
    resumes: dict[str, Any] = field(default_factory=dict)  # stage -> kd2deploy.distill.resume.Resume
    out: Path = Path("runs")  # the --out folder (its .cache/ holds the teacher-output store)
    use_cache: bool = True

    def path(self, *parts: str) -> Path:
        p = self.dir.joinpath(*parts)
        if _writes():
            p.parent.mkdir(parents=True, exist_ok=True)
        return p


def _writes() -> bool:
    """Only rank 0 of a distributed run writes files (the other ranks train, then exit)."""
    from kd2deploy.distill import dist

    return dist.is_main()


# ------------------------------------------------------------------------------------------- stages
def stage_data(run: Run) -> None:
    from kd2deploy.data import load_data
    from kd2deploy.distill.train import to_tensors

    d = load_data(run.cfg.data, run.cfg.seed)
    run.data = d
    run.tensors = tuple(to_tensors(d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test))
    run.results["data"] = d.summary()
    ui.step(f"data: {d.description} — train {len(d.y_train)}, val {len(d.y_val)}, test {len(d.y_test)}")


def _wrap(model, run: Run):
    from kd2deploy.models.nets import Standardized

    if run.cfg.data.standardize:
        x = run.data.x_train
        return Standardized(model, float(x.mean()), float(x.std()) or 1.0)
    return Standardized(model, 0.0, 1.0)


def _build(run: Run, role: str):
    from kd2deploy.models import build_model

    spec = getattr(run.cfg, role)
    return build_model(spec.arch, run.data.input_shape, run.data.num_classes, spec.kwargs, role)


def _check_logits(model, run: Run, role: str) -> None:
    import torch

    with torch.inference_mode():
        model.eval()
        out = model(run.tensors[0][:2])
    if out.ndim != 2 or out.shape[1] != run.data.num_classes:
        raise ConfigError(
            f"{role}.arch {getattr(run.cfg, role).arch!r}: the model outputs shape {tuple(out.shape)}, but the data "
            f"has {run.data.num_classes} classes; expected (batch, {run.data.num_classes})"
        )


def _load_checkpoint(model, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise ConfigError(
            f"{path}: teacher.checkpoint is not a readable PyTorch state_dict ({type(e).__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: teacher.checkpoint holds a {type(state).__name__}, expected a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(
            f"{path}: teacher.checkpoint does not fit teacher.arch (e.g. a different number of classes): {first}"
        ) from None


def _labelled(run: Run):
    """Indices of the training samples that keep their labels (``distill.labelled_fraction``), or None for all.

    Stratified and seeded by the pipeline seed, so the teacher and every arm and seed share one subset.
    """
    import torch

    from kd2deploy.distill.transfer import labelled_subset

    fraction = run.cfg.distill.labelled_fraction
    if fraction >= 1:
        return None
    return torch.from_numpy(labelled_subset(run.data.y_train, fraction, run.cfg.seed))


def _masked_labels(run: Run, labelled):
    """y_train with -1 (no label) outside ``labelled``."""
    import torch

    y = run.tensors[1]
    if labelled is None:
        return y
    out = torch.full_like(y, -1)
    out[labelled] = y[labelled]
    return out


def _check_hint_layers(run: Run) -> None:
    """Hint terms name modules of the student and the teacher: check them before anything trains."""
    import torch

    from kd2deploy.distill.teacher import find_layer
    from kd2deploy.models import build_model

    hints = [(i, t) for i, t in enumerate(run.cfg.distill.terms) if t.loss == "hint"]
    if not hints:
        return
    member = run.cfg.teacher.members(run.cfg.seed)[0]
    with torch.random.fork_rng(devices=[]):
        student = _build(run, "student")
        teacher = build_model(member["arch"], run.data.input_shape, run.data.num_classes, member["kwargs"], "teacher")
    for i, t in hints:
        find_layer(student, t.student_layer, f"distill.terms.{i}.student_layer: in {run.cfg.student.arch}")
        find_layer(teacher, t.teacher_layer, f"distill.terms.{i}.teacher_layer: in {member['arch']}")


def _train_member(run: Run, progress, i: int, m: dict[str, Any], label: str, labelled) -> tuple[Any, dict]:
    """Builds one teacher (or ensemble member), trains it or loads its checkpoint; returns (module, record)."""
    import torch

    from kd2deploy.distill.train import evaluate, fit
    from kd2deploy.models import build_model
    from kd2deploy.models.nets import count_params

    x_tr, _, x_va, y_va, x_te, y_te = run.tensors
    torch.manual_seed(m["seed"])
    inner = build_model(m["arch"], run.data.input_shape, run.data.num_classes, m["kwargs"], "teacher")
    record: dict[str, Any] = {"arch": m["arch"], "seed": m["seed"], "params": count_params(inner)}
    if m["checkpoint"] is not None:
        _load_checkpoint(inner, m["checkpoint"])
        model = _wrap(inner, run)
        _check_logits(model, run, "teacher")
        record.update(source="checkpoint", checkpoint=str(m["checkpoint"]), curve=[])
    else:
        model = _wrap(inner, run)
        _check_logits(model, run, "teacher")
        own = labelled if run.cfg.distill.teacher_labels == "labelled" else None
        task = progress.add_task(label, total=m["train"].epochs, info="")
        resume = run.resumes.get("teacher")
        hist = _guarded(run, lambda: fit(
            model, x_tr, _masked_labels(run, own), x_va, y_va, m["train"], m["seed"], name=label, pool=own,
            checkpoint=resume.slot(label) if resume is not None else None,
            on_epoch=lambda e, mt: progress.update(task, completed=e, info=f"val acc {mt['val_acc']:.3f}")))
        record.update(source="trained", curve=hist.epochs, train_time_s=hist.train_time_s)
    record["test_accuracy_torch"] = evaluate(model, x_te, y_te)["acc"]
    record["val_accuracy_torch"] = evaluate(model, x_va, y_va)["acc"]
    return model, record


def _guarded(run: Run, train):
    """Runs ``train()``; if the loss diverges, saves the diverged model's last good weights (inner model, as the
    other checkpoints) to ``checkpoints/<model>.last_good.pt`` and re-raises naming the model, epoch and file."""
    from kd2deploy.distill.train import DivergedError

    try:
        return train()
    except DivergedError as e:
        path = run.path("checkpoints", f"{e.name.replace(' ', '_').replace('/', '_')}.last_good.pt")
        if e.state is not None and _writes():
            prefix = "model."  # the Standardized wrapper's prefix: checkpoints hold the inner model
            save_torch_atomic({k.removeprefix(prefix): v for k, v in e.state.items() if k.startswith(prefix)}, path)
        raise StageError(f"{e} The last good weights are in {path.relative_to(run.dir)}.") from e


def stage_checks(run: Run) -> None:
    """What can be checked before any training: both models' output width, required backends."""
    from kd2deploy.bench.backends import BACKENDS

    for role in ("teacher", "student"):
        _check_logits(_wrap(_build(run, role), run), run, role)
    top_k = run.cfg.distill.teacher_store.top_k
    if top_k is not None and top_k >= run.data.num_classes:
        raise ConfigError(f"distill.teacher_store.top_k: {top_k} is not below the data's "
                          f"{run.data.num_classes} classes; use null to store the full logits")
    bench = run.cfg.benchmark
    for name in bench.backends:
        ok, reason = BACKENDS.get(name).available()
        if not ok and bench.required:
            raise ConfigError(f"benchmark.backends: {name} is unavailable here ({reason}) and benchmark.required "
                              "is true; nothing was trained")


def stage_teacher(run: Run, progress) -> None:
    """Trains (or loads) the teacher — or every member of an ensemble — and records what it saw."""
    from contextlib import nullcontext

    from kd2deploy.distill.teacher import EnsembleTeacher
    from kd2deploy.distill.train import evaluate

    cfg = run.cfg.teacher
    _check_hint_layers(run)
    if _reuse(run, "teacher", progress, _restore_teacher):
        return
    labelled = _labelled(run)
    members = cfg.members(run.cfg.seed)
    single = not cfg.ensemble
    trains = any(m["checkpoint"] is None for m in members)
    modules, records = [], []
    with (run.meter.track("train:teacher") if trains else nullcontext()) as energy:
        for i, m in enumerate(members):
            model, rec = _train_member(run, progress, i, m, "teacher" if single else f"teacher member {i}", labelled)
            modules.append(model)
            records.append(rec)
            name = "teacher.pt" if single else f"teacher_member{i}.pt"
            if _writes():
                save_torch_atomic(model.model.state_dict(), run.path("checkpoints", name))
    n_train = len(run.tensors[1])
    seen = "all" if labelled is None or run.cfg.distill.teacher_labels == "all" else "labelled"
    trained_on = {"labels": seen, "n_labelled": n_train if seen == "all" else len(labelled), "n_train": n_train}
    if single:
        record = records[0]
        record.pop("seed")
        teacher = modules[0]
    else:
        _, _, x_va, y_va, x_te, y_te = run.tensors
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
    run.teacher = teacher
    run.results.setdefault("models", {})["teacher"] = record
    _say_teacher(run, record)
    _store(run, "teacher", _teacher_files(run), record)


def _say_teacher(run: Run, record: dict[str, Any], reused: str = "") -> None:
    members_text = "" if "members" not in record else " = " + ", ".join(
        f"{r['arch']}/seed{r['seed']} {r['test_accuracy_torch']:.2%}" for r in record["members"])
    seen = (record.get("trained_on") or {}).get("labels") if run.cfg.distill.labelled_fraction < 1 else None
    ui.step(f"teacher {record['arch']} ({record['params']:,} params, {record['source']}"
            f"{', labels: ' + seen if seen else ''}): "
            f"test acc {record['test_accuracy_torch']:.2%}{members_text}{reused}")


def _teacher_files(run: Run) -> list[str]:
    n = len(run.cfg.teacher.ensemble)
    return [f"teacher_member{i}.pt" for i in range(n)] if n else ["teacher.pt"]


# ------------------------------------------------------------------------------- the stage cache hooks
REUSED_NOTE = "reused (trained in an earlier run)"


def _reuse(run: Run, stage: str, progress, restore) -> bool:
    """``_reuse_here`` on rank 0; in a distributed run rank 0 broadcasts its decision (and, for the teacher, the
    restored weights and record) so that every rank trains, or skips, the same stages."""
    from kd2deploy.distill import dist

    ctx = dist.context()
    if not ctx.active:
        return _reuse_here(run, stage, progress, restore)
    hit = _reuse_here(run, stage, progress, restore) if ctx.is_main else None
    payload = None
    if ctx.is_main and hit and stage == "teacher":
        payload = ({k: v.detach() for k, v in run.teacher.state_dict().items()}, run.results["models"]["teacher"])
    hit, payload = dist.broadcast_object((hit, payload))
    if hit and not ctx.is_main and stage == "teacher":
        run.teacher = _teacher_shell(run, payload[0])
        run.results.setdefault("models", {})["teacher"] = payload[1]
    return bool(hit)


def _teacher_shell(run: Run, state: dict[str, Any]):
    """The teacher module (single or ensemble) built for this run's data, with ``state`` loaded."""
    import torch

    from kd2deploy.distill.teacher import EnsembleTeacher
    from kd2deploy.models import build_model

    members = run.cfg.teacher.members(run.cfg.seed)
    with torch.random.fork_rng(devices=[]):
        modules = [_wrap(build_model(m["arch"], run.data.input_shape, run.data.num_classes, m["kwargs"], "teacher"),
                         run) for m in members]
    teacher = modules[0] if len(modules) == 1 else EnsembleTeacher(modules)
    teacher.load_state_dict(state)
    return teacher.eval()


def _reuse_here(run: Run, stage: str, progress, restore) -> bool:
    """On a cache hit: rebuilds the stage's modules from the entry (``restore``), copies its checkpoints into the
    run folder, restores its results record and notes the reuse; returns False (compute the stage) otherwise."""
    from kd2deploy import cache

    if run.cache is None:
        return False
    inputs = (cache.teacher_inputs(run.cfg) if stage == "teacher"
              else cache.students_inputs(run.cfg, run.cache_keys["teacher"][0]))
    key = cache.stage_key(inputs)
    run.cache_keys[stage] = (key, inputs)
    entry = run.cache.lookup(stage, key)
    if entry is None:
        _open_resume(run, stage, key)
        return False
    try:
        record = json.loads(json.dumps(entry.record))  # a private copy
        restore(run, entry, record)
    except Exception as e:  # noqa: BLE001 - e.g. a model that no longer fits its checkpoint: recompute
        run.cache.discard(stage, key, f"{type(e).__name__}: {e}")
        _open_resume(run, stage, key)
        return False
    for name in entry.files:
        write_atomic(run.path("checkpoints", name), (entry.dir / name).read_bytes())
    run.results["run"].setdefault("reused", {})[stage] = entry.provenance()
    progress.add_task(stage, total=1, completed=1, info="reused")
    log.info("stage %s reused cache entry %s (created %s)", stage, entry.dir, entry.created)
    return True


def _reused_energy(record: dict[str, Any]) -> None:
    """A reused stage did not train here: its energy is not counted again."""
    if "energy" in record:
        record["energy"] = {"label": record["energy"].get("label"), "duration_s": None, "energy_kwh": None,
                            "emissions_kg": None, "mode": None, "reused": True, "note": REUSED_NOTE}


def _load_inner(run: Run, model, path: Path):
    import torch

    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _wrap(model, run).eval()


def _restore_teacher(run: Run, entry, record: dict[str, Any]) -> None:
    import torch

    from kd2deploy.distill.teacher import EnsembleTeacher
    from kd2deploy.models import build_model

    members = run.cfg.teacher.members(run.cfg.seed)
    with torch.random.fork_rng(devices=[]):  # leave the global RNG as it was
        modules = [
            _load_inner(run, build_model(m["arch"], run.data.input_shape, run.data.num_classes, m["kwargs"],
                                         "teacher"), entry.dir / name)
            for m, name in zip(members, _teacher_files(run), strict=True)
        ]
    run.teacher = modules[0] if len(modules) == 1 else EnsembleTeacher(modules).eval()
    _reused_energy(record)
    run.results.setdefault("models", {})["teacher"] = record
    _say_teacher(run, record, f" — reused ({entry.key[:12]})")


def _restore_students(run: Run, entry, record: dict[str, Any]) -> None:
    import torch

    seed = record["shipped_seed"]
    with torch.random.fork_rng(devices=[]):
        arm = record.get("shipped_arm", "kd")
        run.student = _load_inner(run, _build(run, "student"), entry.dir / f"student_{arm}_seed{seed}.pt")
        run.scratch = (_load_inner(run, _build(run, "student"), entry.dir / f"student_scratch_seed{seed}.pt")
                       if "scratch" in record["arms"] and arm != "scratch" else None)
    _reused_energy(record)
    run.results["distill"] = record
    _say_students(record, f" — reused ({entry.key[:12]})")


def _open_resume(run: Run, stage: str, key: str) -> None:
    """The stage trains: its per-epoch checkpoints live beside its cache entry, so the same command resumes."""
    from kd2deploy.distill.resume import Resume

    resume = Resume(run.cache.root / stage / f"{key}.progress", fresh=stage in run.cache.force)
    if resume.acquire():
        run.resumes[stage] = resume


def _store(run: Run, stage: str, names: list[str], record: dict[str, Any]) -> None:
    resume = run.resumes.pop(stage, None)
    if resume is not None and resume.resumed:
        run.results["run"].setdefault("resumed", {})[stage] = dict(resume.resumed)
    if run.cache is not None and stage in run.cache_keys:
        key, inputs = run.cache_keys[stage]
        if run.cache.store(stage, key, {n: run.dir / "checkpoints" / n for n in names}, record, inputs) is None:
            if resume is not None:
                resume.release()  # not stored: keep the checkpoints, a rerun resumes from them
            return
    if resume is not None:
        resume.finish()


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


def _arms(run: Run):
    from kd2deploy.distill.arms import Arm
    from kd2deploy.distill.terms import Term

    d = run.cfg.distill
    terms = kd_terms(d)
    logit = [t for t in terms if t["loss"] not in ("hint", "ce")]
    simple = len(terms) == 1 and logit and terms[0]["weight"] == 1.0
    arms = []
    for seed in d.seeds:
        if simple:
            arms.append(Arm("kd", seed, loss=logit[0]["loss"], temperature=logit[0]["temperature"],
                            alpha=logit[0]["alpha"]))
        else:
            first = logit[0] if logit else {"loss": "hint", "temperature": 1.0, "alpha": 0.0}
            arms.append(Arm("kd", seed, loss=first["loss"], temperature=first["temperature"], alpha=first["alpha"],
                            terms=tuple(Term(**t) for t in terms)))
        if "scratch" in d.controls:
            arms.append(Arm("scratch", seed))
        if "label_smoothing" in d.controls:
            arms.append(Arm("label_smoothing", seed, label_smoothing=d.control_label_smoothing))
    return arms


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _teacher_logits(run: Run, perturb) -> tuple[Any, dict[str, Any]]:
    """The teacher's outputs on the transfer set: from the on-disk store (``distill.teacher_store``), computed
    once in memory (store off, or no cache), or None when per-step perturbations make the teacher run per batch."""
    from kd2deploy.distill import dist
    from kd2deploy.distill.store import teacher_outputs
    from kd2deploy.distill.teacher import teacher_logits_of

    cfg = run.cfg.distill.teacher_store
    if perturb.active:
        if cfg.enabled:
            log.info("teacher store not used: per-step shifts / mixup make the teacher run on every batch")
        return None, {"used": False, "reason": "per-step shifts / mixup: the teacher runs on every batch"}
    x_tr = run.tensors[0]
    if not cfg.enabled or not run.use_cache:
        why = "distill.teacher_store.enabled is false" if not cfg.enabled else "the cache is off"
        return teacher_logits_of(run.teacher, x_tr), {"used": False, "reason": f"{why}: computed once in memory"}
    root = Path(run.out) / ".cache" / "teacher_outputs"
    outputs, record = teacher_outputs(run.teacher, x_tr, root, run.cfg.resolved()["data"], cfg.top_k)
    record["used"] = True
    record["shards"] = dist.context().world_size
    return outputs, record


def stage_students(run: Run, progress) -> None:
    from kd2deploy.distill.arms import train_arms
    from kd2deploy.distill.train import evaluate
    from kd2deploy.distill.transfer import Perturb
    from kd2deploy.models.nets import count_params

    try:
        from kd2deploy.distill.batched import train_arms_batched as trainer
    except ImportError:  # pragma: no cover - the batched trainer is optional
        trainer = train_arms
    if _reuse(run, "students", progress, _restore_students):
        return
    cfg = run.cfg.distill
    x_tr, y_tr, x_va, y_va, x_te, y_te = run.tensors
    perturb = Perturb(cfg.transfer.shift_px, cfg.transfer.mixup_alpha)
    teacher_logits, store_record = _teacher_logits(run, perturb)
    labelled = _labelled(run)
    arms = _arms(run)
    _check_logits(_wrap(_build(run, "student"), run), run, "student")
    tasks = {arm.key: progress.add_task(f"student {arm.key}", total=cfg.train.epochs, info="") for arm in arms}

    def on_epoch(arm, epoch, m):
        progress.update(tasks[arm.key], completed=epoch, info=f"val acc {m['val_acc']:.3f}")

    with run.meter.track("train:students") as energy:
        trained = _guarded(run, lambda: trainer(
            lambda: _wrap(_build(run, "student"), run), arms, (x_tr, _masked_labels(run, labelled), x_va, y_va),
            teacher_logits, cfg.train, on_epoch=on_epoch, labelled=labelled, teacher=run.teacher,
            perturb=perturb, resume=run.resumes.get("students")))
    per_seed: dict[int, dict[str, Any]] = {}
    by_arm: dict[str, list[float]] = {}
    models = {}
    for arm, (model, hist) in zip(arms, trained, strict=True):
        test_acc = evaluate(model, x_te, y_te)["acc"]
        val_acc = evaluate(model, x_va, y_va)["acc"]
        per_seed.setdefault(arm.seed, {"seed": arm.seed})[arm.name] = {
            "test_accuracy": test_acc, "val_accuracy": val_acc, "train_time_s": hist.train_time_s, "curve": hist.epochs
        }
        by_arm.setdefault(arm.name, []).append(test_acc)
        models[arm.key] = model
        if _writes():
            save_torch_atomic(model.model.state_dict(),
                              run.path("checkpoints", f"student_{arm.name}_seed{arm.seed}.pt"))
    # The shipped student: among KD and the controls, on validation only (kd2deploy.ship.student).
    from kd2deploy.ship.student import choose_student

    choice = choose_student(per_seed, cfg.seeds)
    best_seed = choice["seed"]
    run.student = models[f"{choice['arm']}/seed{best_seed}"]
    # the scratch control's export, unless it is the shipped student itself (the same file twice)
    run.scratch = models.get(f"scratch/seed{best_seed}") if choice["arm"] != "scratch" else None
    teacher_rec = run.results["models"]["teacher"]
    teacher_acc = teacher_rec["test_accuracy_torch"]
    summary = {name: _mean_sd(v) for name, v in by_arm.items()}
    gap = None
    if "scratch" in summary and teacher_acc - summary["scratch"]["mean"] > 1e-9:
        gap = (summary["kd"]["mean"] - summary["scratch"]["mean"]) / (teacher_acc - summary["scratch"]["mean"])
    n_train = len(y_tr)
    n_lab = n_train if labelled is None else len(labelled)
    run.results["distill"] = {
        "loss": cfg.loss if not cfg.terms else "+".join(t["loss"] for t in kd_terms(cfg)),
        "temperature": cfg.temperature, "alpha": cfg.alpha, "seeds": cfg.seeds,
        "terms": kd_terms(cfg),
        "arms": sorted(by_arm), "per_seed": [per_seed[s] for s in cfg.seeds], "summary": summary,
        "gap_closed": gap, "shipped_seed": best_seed, "shipped_arm": choice["arm"], "energy": energy.as_dict(),
        "student_arch": run.cfg.student.arch, "student_params": count_params(run.student.model),
        "selection": choice["reason"],
        "teacher": {
            "kind": "ensemble" if run.cfg.teacher.ensemble else "single",
            "members": len(teacher_rec.get("members", [])) or 1,
            "test_accuracy": teacher_acc,
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
    _say_students(run.results["distill"])
    _store(run, "students", [f"student_{arm.name}_seed{arm.seed}.pt" for arm in arms], run.results["distill"])


def _say_students(record: dict[str, Any], reused: str = "") -> None:
    gap = record["gap_closed"]
    line = ", ".join(f"{k} {v['mean']:.2%} ± {v['sd']:.2%}" for k, v in record["summary"].items())
    ui.step(f"students ({len(record['seeds'])} seed(s)): {line}" + (f"; gap closed {gap:.0%}" if gap is not None
                                                                    else "") + reused)


def stage_export(run: Run) -> None:
    from kd2deploy.export.onnx_export import export_onnx

    d = run.data
    todo = {"teacher": run.teacher, "student": run.student}
    if run.scratch is not None:
        todo["student_scratch"] = run.scratch
    exported = {}
    for name, model in todo.items():
        res = export_onnx(model, d.x_test, d.y_test, run.path("models", f"{name}.onnx"), run.cfg.export, name)
        run.onnx[name] = res.path
        exported[name] = res.as_dict()
    run.results["export"] = exported
    ui.step("export: " + ", ".join(
        f"{n} max|Δ| {e['parity']['max_abs_diff']:.1e}, ORT acc {e['parity']['accuracy_onnx']:.2%}"
        for n, e in exported.items()))


def stage_variants(run: Run, progress) -> None:
    """Compressed variants of the exported models, each evaluated on the validation split (what the shipping guard
    judges) and on the test split (reported, never used to choose)."""
    from kd2deploy.export.variants import describe_clipping, evaluate_variant, make_variant

    cfg = run.cfg.variants
    todo = [(model, spec) for model in cfg.apply_to for spec in cfg.variants]
    out: dict[str, Any] = {}
    task = progress.add_task("variants", total=len(todo), info="")
    for model, spec in todo:
        src = run.onnx[model]
        if model not in out:
            from kd2deploy.report.verdict import onnx_correct

            out[model] = {"source": f"models/{src.name}",
                          "accuracy_fp32": run.results["export"][model]["parity"]["accuracy_onnx"],
                          "accuracy_fp32_val": float(onnx_correct(src, run.data.x_val, run.data.y_val).mean()),
                          "variants": [], "failed": []}
        entry = out[model]
        progress.update(task, info=f"{model} {spec.name}")
        try:
            path = make_variant(src, spec, run.dir / "models" / "variants", run.data.x_train)
            res = evaluate_variant(path, src, run.data.x_test, run.data.y_test)
            res["accuracy_val"] = evaluate_variant(path, src, run.data.x_val, run.data.y_val)["accuracy"]
        except StageError as e:
            entry["failed"].append({"name": spec.name, "kind": spec.kind, "reason": str(e)})
            run.results["warnings"].append(f"variant {spec.name} of {model} was not made: {e}")
            ui.warn(f"variants: {e}")
        else:
            res.update(label=path.stem, model=model, clipping_text=describe_clipping(res["clipping"]))
            entry["variants"].append(res)
            run.variants[path.stem] = (model, path)
        progress.update(task, advance=1)
    run.results["variants"] = out
    if out:
        ui.step("variants: " + ", ".join(
            f"{v['label']} acc {v['accuracy']:.2%} (max|Δ| {v['parity']['max_abs_diff']:.2g})"
            for e in out.values() for v in e["variants"]))


def stage_benchmark(run: Run, progress) -> None:
    from kd2deploy.bench.pipeline_bench import benchmark_models

    run.results["benchmark"] = benchmark_models(run, progress)


def stage_energy(run: Run, progress) -> None:
    from kd2deploy.bench.pipeline_bench import inference_energy

    run.results["energy"] = inference_energy(run, progress)


def stage_select(run: Run) -> None:
    """The shipping guard picks, per model, the fastest variant that keeps accuracy **on the validation split**
    (test accuracy is reported, never used to choose); the student's pick is what ships."""
    from kd2deploy.ship.guard import select_variants

    select_variants(run.results, run.latency, run.cfg.ship)


def stage_ship(run: Run) -> None:
    """The headline and verdict about the file that ships, then ship/student.onnx with its model card."""
    from kd2deploy.report.verdict import build_headline, onnx_correct, shipped_label, teacher_best_label
    from kd2deploy.ship.package import ship_student

    files = {"teacher": run.onnx["teacher"], "student": run.onnx["student"],
             **{label: path for label, (_, path) in run.variants.items()}}
    labels = {"teacher", shipped_label(run.results), teacher_best_label(run.results)}
    correct = {label: onnx_correct(files[label], run.data.x_test, run.data.y_test) for label in labels}
    settings = run.results.get("benchmark", {}).get("settings", {})
    run.results["headline"] = build_headline(
        run.results, latency=run.latency, correct=correct, budget_pp=run.cfg.report.max_accuracy_drop_pp,
        batch=run.cfg.ship.batch_size, bootstrap=settings.get("bootstrap", 1000), seed=settings.get("seed", 0))
    path = ship_student(run.results, run.dir)
    sel = run.results["ship"].get("selection")
    ui.step(f"ship: {path.relative_to(run.dir)} ← {run.results['ship']['source']}"
            + (f" ({sel['reason']})" if sel else ""))


def stage_report(run: Run) -> None:
    from kd2deploy.report import write_reports

    write_reports(run.results, run.dir, run.cfg.report.formats)


# ------------------------------------------------------------------------------------------- driver
def environment() -> dict[str, Any]:
    """Versions, CPU and threads: what a reader needs to judge the numbers."""
    import os
    import platform
    import subprocess
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pkgs = {}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "scikit-learn", "codecarbon", "pydantic"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import torch

    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
        "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "packages": pkgs,
        "kd2deploy": __version__, "git_commit": commit,
    }


def _setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def run_pipeline(cfg: PipelineConfig, out: Path = Path("runs"), source: Path | None = None,
                 force: bool | Iterable[str] = (), cache: bool = True) -> Run:
    """Runs every stage of ``cfg`` into a new folder under ``out``; returns the finished :class:`Run`.

    The teacher and students stages are reused from ``<out>/.cache/`` when their inputs are unchanged (see
    :mod:`kd2deploy.cache`); ``force`` (True, or stage names) recomputes them, ``cache=False`` neither reads nor
    writes the cache.
    """
    if cfg.task == "text":  # Hugging Face text classification: its own stages (kd2deploy/text/stages.py)
        from kd2deploy.text.stages import run_text_pipeline

        return run_text_pipeline(cfg, out, source)
    from kd2deploy.cache import StageCache, resolve_force
    from kd2deploy.distill import dist
    from kd2deploy.energy.meter import EnergyMeter

    forced = resolve_force(force)
    t0 = time.perf_counter()
    ctx = dist.init()  # torchrun's environment: several training processes; else a no-op
    main = ctx.is_main
    run_dir = Path(dist.broadcast_object(str(new_run_dir(Path(out), cfg.name)) if main else None))
    handler = _setup_logging(run_dir) if main else None
    run = Run(cfg=cfg, dir=run_dir, source=source,
              cache=StageCache(Path(out) / ".cache", forced) if cache and main else None, out=Path(out),
              use_cache=cache)
    if main:
        write_atomic(run.path("config.yaml"), _yaml(cfg.resolved()))
    if source is not None and main:
        shutil.copyfile(source, run.path("pipeline.yaml"))
    run.results.update(
        schema_version=RESULTS_SCHEMA_VERSION, kd2deploy_version=__version__,
        pipeline={"name": cfg.name, "file": str(source) if source else None, "config_hash": cfg.config_hash(),
                  "resolved": cfg.resolved()},
        run={"dir": str(run_dir), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reused": {}},
        environment=environment(), warnings=[],
    )
    run.results["run"]["distributed"] = _training_mode(ctx)
    if main:
        ui.console.print(f"[bold]kd2deploy {__version__}[/bold] — pipeline [cyan]{cfg.name}[/cyan] → {run_dir}"
                         + (f" ({ctx.world_size} training processes, {ctx.backend})" if ctx.active else ""))
    log.info("run %s started, config hash %s", run_dir, cfg.config_hash())
    run.meter = (EnergyMeter.from_config(cfg.energy, run.path("energy"), project=cfg.name) if main
                 else EnergyMeter(run_dir / "energy", enabled=False))  # rank 0 alone measures and writes
    stages_t: dict[str, float] = {}
    try:
        with (ui.progress() if main else _quiet_progress()) as progress:
            for name, fn, needs_progress in (
                ("data", stage_data, False), ("checks", stage_checks, False), ("teacher", stage_teacher, True),
                ("students", stage_students, True),
                ("export", stage_export, False), ("variants", stage_variants, True),
                ("benchmark", stage_benchmark, True), ("select", stage_select, False),
                ("energy", stage_energy, True),
            ):
                ts = time.perf_counter()
                log.info("stage %s started", name)
                fn(run, progress) if needs_progress else fn(run)
                stages_t[name] = time.perf_counter() - ts
                log.info("stage %s finished in %.1f s", name, stages_t[name])
                if name == "students" and ctx.active:  # training is over: rank 0 goes on alone
                    dist.barrier()
                    dist.cleanup()
                    if not main:
                        return run
        ts = time.perf_counter()
        stage_ship(run)
        stages_t["ship"] = time.perf_counter() - ts
        run.results["run"].update(
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            wall_s=time.perf_counter() - t0, stage_wall_s=stages_t,
        )
        stage_report(run)
        run.results["run"]["wall_s"] = time.perf_counter() - t0
        write_json(run.path("results.json"), run.results)
    except BaseException as e:  # a failure, a bug or Ctrl-C: keep what is known so far
        log.error("%s: %s", type(e).__name__, e)
        if main:
            try:
                write_json(run.path("results.partial.json"), run.results)
            except Kd2DeployError as e2:  # e.g. the disk is full: keep the real cause as the message
                log.error("results.partial.json not written: %s", e2)
        if isinstance(e, dist.RankLost):
            kept = ", ".join(str(r.dir) for r in run.resumes.values()) or str(Path(out) / ".cache")
            raise dist.RankLost(f"{e}; the whole run stopped. The last good checkpoint is kept ({kept}); run the "
                                "same command again to resume from it.") from e
        raise
    finally:
        for resume in run.resumes.values():  # a stopped stage keeps its checkpoints for the next run
            resume.release()
        run.meter.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        dist.cleanup()
    return run


def _training_mode(ctx) -> dict[str, Any]:
    """How training ran, for results.json and the report."""
    return {**ctx.as_dict(), "backend": ctx.backend or "none (one process)",
            "how": (f"{ctx.world_size} processes ({ctx.nnodes} node(s), {ctx.backend}): each trains on its slice of "
                    "every global batch, gradients summed across processes, batch-norm running statistics averaged "
                    "every epoch; rank 0 alone wrote files and ran export, benchmark and energy")
            if ctx.active else "one process"}


class _quiet_progress:
    """A progress stand-in for ranks other than 0 (only rank 0 draws on the terminal)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers the report leads with, about ship/student.onnx (see :mod:`kd2deploy.report.verdict`);
    without latency samples the stored ratio rows and paired test are kept (a re-render)."""
    from kd2deploy.report.verdict import build_headline

    return build_headline(results)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the terminal summary table: model, params, ONNX accuracy, p50 per batch size, energy."""
    rows = []
    lat = {(r["model"], r["batch_size"]): r for r in results.get("benchmark", {}).get("results", [])}
    batches = sorted({b for _, b in lat})
    energy = results.get("energy", {}).get("models", {})
    models = {name: (name, e["parity"]["accuracy_onnx"]) for name, e in results.get("export", {}).items()}
    for model, entry in results.get("variants", {}).items():
        models.update({v["label"]: (model, v["accuracy"]) for v in entry["variants"]})
    for name, (source, acc) in models.items():
        params = (results["models"]["teacher"]["params"] if source == "teacher"
                  else results.get("distill", {}).get("student_params"))
        cells = [name, f"{params:,}" if params else "", f"{acc:.2%}"]
        cells += [f"{lat[(name, b)]['p50_us']:.1f}" if (name, b) in lat else "–" for b in batches]
        ej = energy.get(name, {}).get("j_per_inference_active", {}).get("mean")
        cells.append(f"{ej * 1e3:.3f}" if ej is not None else "–")
        rows.append(tuple(cells))
    return rows


def _np_default(o: Any) -> Any:  # pragma: no cover - json fallback
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))
