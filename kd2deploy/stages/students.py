"""The students: the KD arm and its controls over the seeds (trained by the task), compared; the shipped student is
chosen among KD **and** the controls on the validation split; cached by the chained key (it covers the teacher's)."""

from __future__ import annotations

import statistics
from typing import Any

from kd2deploy import ui
from kd2deploy.engine.stage import BaseStage
from kd2deploy.engine.state import writes


def mean_sd(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def student_file(arm: str, seed: int) -> str:
    return f"student_{arm}_seed{seed}.pt"


class StudentsStage(BaseStage):
    name = "students"
    requires = ("data", "teacher")
    cached = True
    ranks = "all"

    def key_inputs(self, state) -> dict[str, Any]:
        return state.task.key_inputs("students")

    def run(self, state, progress) -> list[str]:
        task = state.task
        with state.meter.track("train:students") as energy:
            arms, trained, record = task.train_arms(state, progress)
        per_seed: dict[int, dict[str, Any]] = {}
        by_arm: dict[str, list[float]] = {}
        models = {}
        seeds = list(dict.fromkeys(arm.seed for arm in arms))
        for arm, (model, hist) in zip(arms, trained, strict=True):
            test_acc, val_acc = task.accuracy(model, "test"), task.accuracy(model, "val")
            per_seed.setdefault(arm.seed, {"seed": arm.seed})[arm.name] = {
                "test_accuracy": test_acc, "val_accuracy": val_acc, "train_time_s": hist.train_time_s,
                "curve": hist.epochs}
            by_arm.setdefault(arm.name, []).append(test_acc)
            models[arm.key] = model
            if writes():
                task.save_student(model, state.path("checkpoints", student_file(arm.name, arm.seed)))
        # The shipped student: among KD and the controls, on validation only (kd2deploy.ship.student).
        from kd2deploy.ship.student import choose_student

        choice = choose_student(per_seed, seeds)
        best = choice["seed"]
        state.student = models[f"{choice['arm']}/seed{best}"]
        # the scratch control's export, unless it is the shipped student itself (the same file twice)
        state.scratch = models.get(f"scratch/seed{best}") if choice["arm"] != "scratch" else None
        teacher_acc = state.results["models"]["teacher"]["test_accuracy_torch"]
        summary = {name: mean_sd(v) for name, v in by_arm.items()}
        gap = None
        if "scratch" in summary and teacher_acc - summary["scratch"]["mean"] > 1e-9:
            gap = (summary["kd"]["mean"] - summary["scratch"]["mean"]) / (teacher_acc - summary["scratch"]["mean"])
        record.update(
            seeds=seeds, arms=sorted(by_arm), per_seed=[per_seed[s] for s in seeds], summary=summary,
            gap_closed=gap, shipped_seed=best, shipped_arm=choice["arm"], energy=energy.as_dict(),
            student_params=sum(p.numel() for p in state.student.parameters()),
            selection=choice["reason"],
        )
        record.setdefault("teacher", {})["test_accuracy"] = teacher_acc
        spent = energy.as_dict()
        kwh = spent.get("energy_kwh")
        if kwh is not None and record.get("search") and spent.get("duration_s"):  # the search's share is not training
            searched = sum(f["spent_s"] for f in record["search"].get("families", {}).values())
            kwh *= max(0.0, 1 - searched / spent["duration_s"])
        record["convergence"] = convergence_of(record["per_seed"], kwh)
        fractions = getattr(getattr(state.cfg, "distill", None), "label_fractions", None)
        if fractions and task.capabilities.label_efficiency:
            from kd2deploy.distill.label_efficiency import label_efficiency

            record["label_efficiency"] = label_efficiency(state.cfg, state.path("label_efficiency"), fractions,
                                                          progress)
        state.results["distill"] = record
        say_students(record)
        return [student_file(arm.name, arm.seed) for arm in arms]

    def restore(self, state, entry, record: dict[str, Any]) -> list[str]:
        state.task.restore_students(state, entry.dir, record)
        state.results["distill"] = record
        say_students(record, f" — reused ({entry.key[:12]})")
        return entry.files

    def record(self, state) -> dict[str, Any]:
        return state.results["distill"]


def convergence_of(per_seed: list[dict[str, Any]], energy_kwh: float | None) -> dict[str, Any] | None:
    """``distill.convergence`` of the run's curves (None when the curves lack validation accuracy or time)."""
    from kd2deploy.distill.convergence import convergence, sentences

    curves = [rec[a]["curve"] for rec in per_seed for a in rec if a != "seed"]
    if not curves or not all(c and "val_acc" in c[0] and "time_s" in c[0] for c in curves):
        return None
    out = convergence(per_seed, energy_kwh)
    out["sentences"] = sentences(out)
    return out


def say_students(record: dict[str, Any], reused: str = "") -> None:
    gap = record["gap_closed"]
    line = ", ".join(f"{k} {v['mean']:.2%} ± {v['sd']:.2%}" for k, v in record["summary"].items())
    ui.step(f"students ({len(record['seeds'])} seed(s)): {line}" + (f"; gap closed {gap:.0%}" if gap is not None
                                                                    else "") + reused)
