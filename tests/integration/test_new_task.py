"""A new task is one adapter class plus one registry line: a toy task defined here runs end to end through the
engine's shared stages (data, teacher, students, export, variants, benchmark, energy, ship, report, cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from kd2deploy.tasks.base import TASKS, Capabilities

PIPELINE = """\
name: toy
task: toy
benchmark: {batch_sizes: [1, 8], warmup_s: 0.01, warmup_runs: 2, min_duration_s: 0.05, min_runs: 10, rounds: 2,
            torch_baseline: true}
variants: {variants: [{kind: optimized}], apply_to: [student]}
ship: {batch_size: 1}
energy: {enabled: false}
report: {formats: [md]}
"""


def _mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))


class ToyTask:
    """Three Gaussian blobs in 4-D; a wide MLP teacher, a narrow MLP student; plain numpy arrays in and out."""

    name: ClassVar[str] = "toy"
    capabilities: ClassVar[Capabilities] = Capabilities(variant_kinds=frozenset({"optimized"}),
                                                        backends=frozenset({"onnxruntime-cpu"}))

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.split: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.log: list[str] = []  # which adapter calls the engine made

    def packages(self) -> list[str]:
        return []

    def key_inputs(self, stage: str) -> dict[str, Any]:
        return {"toy": stage, "seed": self.cfg.seed}

    def load_data(self, state) -> dict[str, Any]:
        rng = np.random.default_rng(self.cfg.seed)
        centres = rng.normal(0, 2.0, (3, 4))
        y = rng.integers(0, 3, 900)
        x = (centres[y] + rng.normal(0, 1.0, (900, 4))).astype(np.float32)
        self.split = {"train": (x[:600], y[:600]), "val": (x[600:750], y[600:750]), "test": (x[750:], y[750:])}
        return {"source": "toy blobs", "num_classes": 3, "train": 600, "val": 150, "test": 150}

    def check(self, state) -> None:
        self.log.append("check")

    def _fit(self, model, seed: int, teacher=None, epochs: int = 30):
        x, y = (torch.from_numpy(a) for a in self.split["train"])
        torch.manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        curve = []
        for e in range(epochs):
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = torch.softmax(teacher(x) / 2.0, -1)
                loss = 0.5 * loss + 0.5 * 4.0 * nn.functional.kl_div(
                    torch.log_softmax(out / 2.0, -1), soft, reduction="batchmean")
            loss.backward()
            opt.step()
            curve.append({"epoch": e + 1, "loss": float(loss.detach()), "val_acc": self.accuracy(model, "val")})
        return model.eval(), curve

    def train_teacher(self, state, progress) -> list[str]:
        torch.manual_seed(0)
        teacher, curve = self._fit(_mlp(64), 0)
        state.teacher = teacher
        state.results.setdefault("models", {})["teacher"] = {
            "arch": "mlp-64", "params": sum(p.numel() for p in teacher.parameters()), "source": "trained",
            "curve": curve, "test_accuracy_torch": self.accuracy(teacher, "test"),
            "val_accuracy_torch": self.accuracy(teacher, "val")}
        torch.save(teacher.state_dict(), state.path("checkpoints", "teacher.pt"))
        return ["teacher.pt"]

    def restore_teacher(self, state, folder: Path, record) -> list[str]:
        state.teacher = _mlp(64)
        state.teacher.load_state_dict(torch.load(folder / "teacher.pt", weights_only=True))
        state.teacher.eval()
        state.results.setdefault("models", {})["teacher"] = record
        self.log.append("restore_teacher")
        return ["teacher.pt"]

    def train_arms(self, state, progress):
        from kd2deploy.distill.arms import Arm
        from kd2deploy.distill.train import History

        arms, trained = [], []
        for seed in (0, 1):
            for name in ("kd", "scratch"):
                torch.manual_seed(seed)
                model, curve = self._fit(_mlp(4), seed, state.teacher if name == "kd" else None)
                arms.append(Arm(name, seed))
                trained.append((model, History(curve, 0.1)))
        return arms, trained, {"loss": "hinton", "temperature": 2.0, "alpha": 0.5, "student_arch": "mlp-4"}

    def accuracy(self, model, split: str) -> float:
        x, y = self.split[split]
        with torch.no_grad():
            return float((model(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())

    def save_student(self, model, path: Path) -> None:
        torch.save(model.state_dict(), path)

    def load_student(self, path: Path):
        model = _mlp(4)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()

    def restore_students(self, state, folder: Path, record) -> None:
        state.student = self.load_student(folder / f"student_kd_seed{record['shipped_seed']}.pt")
        state.scratch = self.load_student(folder / f"student_scratch_seed{record['shipped_seed']}.pt")
        self.log.append("restore_students")

    def export(self, state, name: str, model) -> dict[str, Any]:
        from kd2deploy.export.onnx_export import export_onnx

        x, y = self.split["test"]
        res = export_onnx(model, x, y, state.path("models", f"{name}.onnx"), self.cfg.export, name)
        state.onnx[name] = res.path
        return res.as_dict()

    def outputs(self, path: Path, split: str) -> np.ndarray:
        from kd2deploy.export.onnx_export import onnx_logits

        return onnx_logits(Path(path), self.split[split][0])

    def labels(self, split: str) -> np.ndarray:
        return self.split[split][1]

    def bench_shapes(self) -> list[dict[str, Any]]:
        return [{}]

    def bench_inputs(self, batch_size: int, shape: dict[str, Any]) -> np.ndarray:
        return np.ascontiguousarray(self.split["test"][0][:batch_size])

    def calibration_inputs(self) -> np.ndarray:
        return self.split["train"][0]

    def facts(self, state, name: str, model) -> dict[str, Any]:
        return {"params": sum(p.numel() for p in model.parameters()), "flops_per_sample": None}

    def package(self, state) -> Path:
        from kd2deploy.ship.package import ship_student

        return ship_student(state.results, state.dir)

    def report_sections(self, results) -> list[dict[str, str]]:
        return [{"title": "Toy task", "markdown": "Three blobs; the report section comes from the task."}]


@pytest.fixture
def toy_registered():
    TASKS.register("toy")(ToyTask)  # the one registry line a new task adds
    yield
    TASKS._items.pop("toy", None)  # noqa: SLF001 - the test undoes its registration


def test_a_new_task_runs_end_to_end_through_the_engine(toy_registered, tmp_path):
    from kd2deploy.config import load_config
    from kd2deploy.engine import plan_pipeline, run_pipeline

    (tmp_path / "p.yaml").write_text(PIPELINE)
    cfg = load_config(tmp_path / "p.yaml")
    out = tmp_path / "runs"
    state = run_pipeline(cfg, out)
    res = state.results
    assert res["task"] == "toy"
    assert res["distill"]["arms"] == ["kd", "scratch"] and res["distill"]["summary"]["kd"]["n"] == 2
    assert res["export"]["student"]["parity"]["argmax_agreement"] == 1.0
    assert {"teacher", "student", "teacher@torch-eager-cpu", "student.optimized-basic"} <= {
        r["model"] for r in res["benchmark"]["results"]}
    assert (state.dir / "ship" / "student.onnx").is_file() and (state.dir / "ship" / "MODEL_CARD.md").is_file()
    report = (state.dir / "report.md").read_text()
    assert "## Toy task" in report and "## Distillation" in report and res["headline"]["text"] in report

    # The second run reuses teacher and students from the cache (the plan says so first).
    plan = {r.name: r.action for r in plan_pipeline(cfg, out)}
    assert plan["teacher"] == plan["students"] == "reuse" and plan["export"] == "run"
    again = run_pipeline(cfg, out)
    assert {"restore_teacher", "restore_students"} <= set(again.task.log)
    assert again.results["distill"]["summary"] == res["distill"]["summary"]


def test_an_unsupported_combination_is_refused_at_validation(toy_registered, write_pipeline):
    from kd2deploy.config import load_config
    from kd2deploy.errors import ConfigError

    p = write_pipeline(PIPELINE.replace("{kind: optimized}", "{kind: int8-static}"))
    with pytest.raises(ConfigError, match="kind 'int8-static' is not supported for task toy; allowed: optimized"):
        load_config(p)
