"""``task: tensor``: arrays in, class logits out (built-in digits, a user's .npz; zoo, hub or file.py models)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kd2deploy import ui
from kd2deploy.errors import ConfigError
from kd2deploy.tasks.base import Capabilities

if TYPE_CHECKING:
    from kd2deploy.engine.state import RunState


class TensorTask:
    """Adapter of the tensor task: see :class:`kd2deploy.tasks.base.TaskAdapter` for the contract."""

    name: ClassVar[str] = "tensor"
    ship_file: ClassVar[str] = "ship/student.onnx"
    capabilities: ClassVar[Capabilities] = Capabilities(
        section=None,
        variant_kinds=frozenset({"int8-dynamic", "int8-static", "fp16", "optimized", "transformer-fusion"}),
        backends=frozenset({"onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt",
                            "torch-eager-cpu", "torch-eager-cuda"}),
        torch_baseline=True, distributed=True, label_efficiency=True,
    )

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.data: Any = None
        self.tensors: tuple = ()

    # ----------------------------------------------------------------------------------------- provenance
    def packages(self) -> list[str]:
        return []

    def key_inputs(self, stage: str) -> dict[str, Any]:
        from kd2deploy import cache

        if stage == "data":
            return cache.data_inputs(self.cfg)
        if stage == "teacher":
            return cache.teacher_inputs(self.cfg)
        return cache.students_inputs(self.cfg)

    # ----------------------------------------------------------------------------------------- data, models
    def load_data(self, state: RunState) -> dict[str, Any]:
        from kd2deploy.data import load_data
        from kd2deploy.distill.train import to_tensors

        d = load_data(self.cfg.data, self.cfg.seed)
        self.data = d
        self.tensors = tuple(to_tensors(d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test))
        ui.step(f"data: {d.description} — train {len(d.y_train)}, val {len(d.y_val)}, test {len(d.y_test)}")
        return d.summary()

    def build_arch(self, arch: str, kwargs: dict[str, Any], role: str):
        from kd2deploy.models import build_model

        return build_model(arch, self.data.input_shape, self.data.num_classes, kwargs, role)

    def wrap(self, model):
        from kd2deploy.tasks.tensor.models import wrap

        return wrap(model, self.data, self.cfg.data.standardize)

    def check_logits(self, model, role: str, arch: str) -> None:
        from kd2deploy.tasks.tensor.models import check_logits

        check_logits(model, self.tensors[0], self.data.num_classes, arch, role)

    def new_student(self):
        """A fresh student (global RNG: the caller seeds it), wrapped like the exported one."""
        return self.wrap(self.build_arch(self.cfg.student.arch, self.cfg.student.kwargs, "student"))

    def load_student(self, path: Path):
        import torch

        inner = self.build_arch(self.cfg.student.arch, self.cfg.student.kwargs, "student")
        inner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return self.wrap(inner).eval()

    def save_student(self, model, path: Path) -> None:
        from kd2deploy.rundir import save_torch_atomic

        save_torch_atomic(model.model.state_dict(), path)

    def labelled(self):
        """Indices of the training samples that keep their labels (``distill.labelled_fraction``), or None.

        Stratified and seeded by the pipeline seed, so the teacher and every arm and seed share one subset.
        """
        import torch

        from kd2deploy.distill.transfer import labelled_subset

        fraction = self.cfg.distill.labelled_fraction
        if fraction >= 1:
            return None
        return torch.from_numpy(labelled_subset(self.data.y_train, fraction, self.cfg.seed))

    def masked_labels(self, labelled):
        """y_train with -1 (no label) outside ``labelled``."""
        import torch

        y = self.tensors[1]
        if labelled is None:
            return y
        out = torch.full_like(y, -1)
        out[labelled] = y[labelled]
        return out

    def check(self, state: RunState) -> None:
        import torch

        from kd2deploy.distill.teacher import find_layer

        for role in ("teacher", "student"):
            spec = getattr(self.cfg, role)
            self.check_logits(self.wrap(self.build_arch(spec.arch, spec.kwargs, role)), role, spec.arch)
        top_k = self.cfg.distill.teacher_store.top_k
        if top_k is not None and top_k >= self.data.num_classes:
            raise ConfigError(f"distill.teacher_store.top_k: {top_k} is not below the data's "
                              f"{self.data.num_classes} classes; use null to store the full logits")
        hints = [(i, t) for i, t in enumerate(self.cfg.distill.terms) if t.loss == "hint"]
        if hints:  # hint terms name modules of the student and the teacher
            member = self.cfg.teacher.members(self.cfg.seed)[0]
            with torch.random.fork_rng(devices=[]):
                student = self.build_arch(self.cfg.student.arch, self.cfg.student.kwargs, "student")
                teacher = self.build_arch(member["arch"], member["kwargs"], "teacher")
            for i, t in hints:
                find_layer(student, t.student_layer, f"distill.terms.{i}.student_layer: in {self.cfg.student.arch}")
                find_layer(teacher, t.teacher_layer, f"distill.terms.{i}.teacher_layer: in {member['arch']}")

    # ----------------------------------------------------------------------------------------- training
    def train_teacher(self, state: RunState, progress: Any) -> list[str]:
        from kd2deploy.tasks.tensor.train import train_teacher

        return train_teacher(self, state, progress)

    def restore_teacher(self, state: RunState, folder: Path, record: dict[str, Any]) -> list[str]:
        from kd2deploy.tasks.tensor.train import say_teacher, teacher_files, teacher_modules

        state.teacher = teacher_modules(self, folder)
        state.results.setdefault("models", {})["teacher"] = record
        say_teacher(self, record, f" — reused ({folder.name[:12]})")
        return teacher_files(self)

    def teacher_payload(self, state: RunState) -> Any:
        """What rank 0 sends the other ranks when it reuses the teacher (weights and record)."""
        return ({k: v.detach() for k, v in state.teacher.state_dict().items()}, state.results["models"]["teacher"])

    def receive_teacher(self, state: RunState, payload: Any) -> None:
        from kd2deploy.tasks.tensor.train import teacher_modules

        state.teacher = teacher_modules(self)
        state.teacher.load_state_dict(payload[0])
        state.results.setdefault("models", {})["teacher"] = payload[1]

    def train_arms(self, state: RunState, progress: Any):
        from kd2deploy.tasks.tensor.train import train_students

        return train_students(self, state, progress)

    def restore_students(self, state: RunState, folder: Path, record: dict[str, Any]) -> None:
        from kd2deploy.tasks.tensor.train import restore_students

        restore_students(self, state, folder, record)

    def accuracy(self, model, split: str) -> float:
        from kd2deploy.distill.train import evaluate

        x, y = {"val": self.tensors[2:4], "test": self.tensors[4:6]}[split]
        return evaluate(model, x, y)["acc"]

    # ----------------------------------------------------------------------------------------- deployment
    def export(self, state: RunState, name: str, model: Any) -> dict[str, Any]:
        from kd2deploy.export.onnx_export import export_onnx

        d = self.data
        res = export_onnx(model, d.x_test, d.y_test, state.path("models", f"{name}.onnx"), self.cfg.export, name)
        state.onnx[name] = res.path
        return res.as_dict()

    def outputs(self, path: Path, split: str) -> np.ndarray:
        from kd2deploy.export.variants import variant_logits  # casts inputs for FP16 files too

        return variant_logits(Path(path), {"val": self.data.x_val, "test": self.data.x_test}[split])

    def labels(self, split: str) -> np.ndarray:
        return np.asarray({"val": self.data.y_val, "test": self.data.y_test}[split])

    def bench_shapes(self) -> list[dict[str, Any]]:
        return [{}]

    def bench_inputs(self, batch_size: int, shape: dict[str, Any]) -> np.ndarray:
        from kd2deploy.bench.harness import batch_inputs

        return batch_inputs(self.data.x_test, batch_size)

    def calibration_inputs(self) -> np.ndarray:
        return self.data.x_train

    def facts(self, state: RunState, name: str, model: Any) -> dict[str, Any]:
        import torch

        from kd2deploy.bench.flops import count_flops

        example = torch.from_numpy(self.data.x_test[:1].copy())
        return {"params": sum(p.numel() for p in model.parameters()), "flops_per_sample": count_flops(model, example)}

    def package(self, state: RunState) -> Path:
        from kd2deploy.ship.package import ship_student

        return ship_student(state.results, state.dir)

    def report_sections(self, results: dict[str, Any]) -> list[dict[str, str]]:
        return []
