"""Does the teacher reduce the reliance on labels? KD and its controls at several fractions of the labels.

For each fraction in ``distill.label_fractions`` (e.g. 1, 5, 10, 25 and 100 %): a stratified, seeded subset of the
training split keeps its labels; the teacher is trained on those labels only (``teacher_labels: labelled``), then
labels the whole training split with soft targets; the KD student learns from every training input (soft term)
and the labelled ones (hard term); the controls learn from the labelled ones only, for the same number of steps.
The pipeline's settings are used as they are (nothing is chosen here), and test accuracy is reported per arm as
mean ± sd over seeds, with the fraction of the scratch -> teacher gap that KD closes.
"""

from __future__ import annotations

import statistics
from contextlib import nullcontext
from pathlib import Path
from typing import Any


def label_efficiency(cfg, run_dir: Path, fractions: list[float] | None = None, progress=None) -> dict[str, Any]:
    """Runs the study for ``cfg`` (a PipelineConfig) and writes ``label_efficiency.json`` and ``.png`` into
    ``run_dir``; returns the record.

    Each fraction is the pipeline with ``distill.labelled_fraction`` set to it and ``teacher_labels: labelled``,
    through the data and teacher stages of the pipeline and the batched students trainer.
    """
    from kd2deploy import ui
    from kd2deploy.distill.arms import Arm
    from kd2deploy.distill.batched import train_arms_batched
    from kd2deploy.distill.teacher import teacher_logits_of
    from kd2deploy.distill.train import evaluate
    from kd2deploy.energy.meter import EnergyMeter
    from kd2deploy.engine.state import RunState
    from kd2deploy.rundir import write_json
    from kd2deploy.tasks.tensor.adapter import TensorTask

    fractions = sorted(fractions or cfg.distill.label_fractions)
    own = progress is None
    progress = progress or ui.progress()
    rows = []
    with progress if own else nullcontext():
        for f in fractions:
            d = cfg.distill.model_copy(update={"labelled_fraction": f, "teacher_labels": "labelled"})
            cfg_f = cfg.model_copy(update={"distill": d})
            task = TensorTask(cfg_f)
            run = RunState(cfg=cfg_f, task=task, dir=run_dir / f"labels_{f:g}",
                           meter=EnergyMeter(run_dir / f"labels_{f:g}" / "energy", enabled=False))
            run.results["data"] = task.load_data(run)
            task.train_teacher(run, progress)
            x_tr, _, x_va, y_va, x_te, y_te = task.tensors
            labelled = task.labelled()
            arms = [Arm("kd", s, loss=d.loss, temperature=d.temperature, alpha=d.alpha,
                        options=tuple(d.options.items())) for s in d.seeds]
            arms += [Arm("scratch", s) for s in d.seeds if "scratch" in d.controls]
            arms += [Arm("label_smoothing", s, label_smoothing=d.control_label_smoothing) for s in d.seeds
                     if "label_smoothing" in d.controls]
            ptask = progress.add_task(f"{f:.0%} labels: {len(arms)} students", total=len(arms) * d.train.epochs,
                                     info="")
            trained = train_arms_batched(
                task.new_student, arms,
                (x_tr, task.masked_labels(labelled), x_va, y_va), teacher_logits_of(run.teacher, x_tr), d.train,
                on_epoch=lambda *_a, ptask=ptask: progress.update(ptask, advance=1), labelled=labelled,
                teacher=run.teacher)
            per_arm: dict[str, list[float]] = {}
            for arm, (model, _) in zip(arms, trained, strict=True):
                per_arm.setdefault(arm.name, []).append(evaluate(model, x_te, y_te)["acc"])
            teacher_acc = run.results["models"]["teacher"]["test_accuracy_torch"]
            row = {"fraction": f, "n_labelled": len(x_tr) if labelled is None else len(labelled),
                   "n_train": len(x_tr), "teacher_test_accuracy": teacher_acc,
                   "arms": {k: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
                                "per_seed": v} for k, v in per_arm.items()}}
            if "scratch" in per_arm and teacher_acc - row["arms"]["scratch"]["mean"] > 1e-9:
                row["kd_gap_closed"] = ((row["arms"]["kd"]["mean"] - row["arms"]["scratch"]["mean"])
                                        / (teacher_acc - row["arms"]["scratch"]["mean"]))
            rows.append(row)
            ui.step(f"{f:.0%} labels ({row['n_labelled']}): teacher {teacher_acc:.2%}, " + ", ".join(
                f"{k} {v['mean']:.2%} ± {v['sd']:.2%}" for k, v in row["arms"].items()))
    record = {"fractions": fractions, "rows": rows, "seeds": cfg.distill.seeds,
              "how": "test accuracy (mean ± sd over seeds) of students trained with the pipeline's fixed settings; "
                     "the teacher of each row saw only that row's labels"}
    record["plot"] = plot_label_efficiency(record, run_dir / "label_efficiency.png").name
    write_json(run_dir / "label_efficiency.json", record)
    return record


def plot_label_efficiency(record: dict[str, Any], path: Path) -> Path:
    """Test accuracy against the fraction of labels (log axis), one line per arm plus the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * r["fraction"] for r in record["rows"]]
    ax.plot(xs, [100 * r["teacher_test_accuracy"] for r in record["rows"]], "k--", marker="s", label="teacher")
    for arm in record["rows"][0]["arms"]:
        means = [100 * r["arms"][arm]["mean"] for r in record["rows"]]
        sds = [100 * r["arms"][arm]["sd"] for r in record["rows"]]
        ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g} %" for x in xs])
    ax.set_xlabel("labelled training samples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Label efficiency ({len(record['seeds'])} seeds, mean ± sd)")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def markdown(record: dict[str, Any]) -> str:
    """The table for the report."""
    arms = list(record["rows"][0]["arms"])
    head = "| labels | teacher | " + " | ".join(arms) + " | KD gap closed |"
    lines = [head, "|" + "---|" * (len(arms) + 3)]
    for r in record["rows"]:
        gap = r.get("kd_gap_closed")
        lines.append(f"| {100 * r['fraction']:g} % ({r['n_labelled']}) | {100 * r['teacher_test_accuracy']:.2f} | "
                     + " | ".join(f"{100 * r['arms'][a]['mean']:.2f} ± {100 * r['arms'][a]['sd']:.2f}" for a in arms)
                     + f" | {'n/a' if gap is None else f'{100 * gap:.0f} %'} |")
    return "\n".join(lines) + f"\n\n![label efficiency]({record['plot']})\n\n{record['how']}.\n"
