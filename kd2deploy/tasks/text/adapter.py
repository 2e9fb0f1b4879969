"""``task: text``: distil a Hugging Face sequence classifier, ship it as ONNX with its tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kd2deploy import ui
from kd2deploy.errors import ConfigError
from kd2deploy.tasks.base import Capabilities

if TYPE_CHECKING:
    from kd2deploy.engine.state import RunState

TEXT_VARIANT_KINDS = frozenset({"int8-dynamic", "int8-static", "transformer-fusion", "optimized"})


def require_hf() -> None:
    """One line naming the extra when the Hugging Face packages are missing."""
    missing = []
    for mod in ("transformers", "tokenizers", "optimum.exporters.onnx"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod.split(".")[0])
    if missing:
        raise ConfigError(f"task: text needs {', '.join(missing)}: pip install -c constraints.txt -e '.[hf]'")


class TextTask:
    """Adapter of the text task: see :class:`kd2deploy.tasks.base.TaskAdapter` for the contract."""

    name: ClassVar[str] = "text"
    ship_file: ClassVar[str] = "ship/student/model.onnx"
    capabilities: ClassVar[Capabilities] = Capabilities(
        section="text", variant_kinds=TEXT_VARIANT_KINDS,
        backends=frozenset({"onnxruntime-cpu", "onnxruntime-cuda"}), torch_baseline=True, distributed=False,
        reasons={"fp16": "float16 is for GPU providers; the text task's variants are judged on onnxruntime's CPU "
                         "provider",
                 "tensorrt": "the text models' dynamic sequence axis has no TensorRT profile yet",
                 "onnxruntime-tensorrt": "the text models' dynamic sequence axis has no TensorRT profile yet"},
    )

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.t = cfg.text
        self.data: Any = None
        self.tokenizer: Any = None
        self.encoded: dict[str, Any] = {}
        self.hf: dict[str, Path] = {}  # model name -> saved Hugging Face folder
        self.folders: dict[str, Path] = {}  # model name -> exported folder (model.onnx + tokenizer)
        self.layer_map: list[int] = []
        self._inputs: set[str] | None = None  # the exported models' input names

    # ----------------------------------------------------------------------------------------- provenance
    def packages(self) -> list[str]:
        return ["transformers", "optimum", "optimum-onnx", "tokenizers"]

    def key_inputs(self, stage: str) -> dict[str, Any]:
        from kd2deploy.cache import CACHE_FORMAT, versions
        from kd2deploy.tasks.hf_common import resolve_location, tree_sha256

        r = self.cfg.resolved()["text"]
        if stage == "data":
            return {"seed": self.cfg.seed, "data": r["data"], "files": tree_sha256(resolve_location(self.t.data.path))}
        if stage == "teacher":
            return {"format": CACHE_FORMAT, "seed": self.cfg.seed, "teacher": r["teacher"],
                    "files": tree_sha256(resolve_location(self.t.teacher.model)),
                    "versions": versions(extra=self.packages())}
        return {"format": CACHE_FORMAT, "seed": self.cfg.seed, "student": r["student"], "distill": r["distill"],
                "versions": versions(extra=self.packages())}

    # ----------------------------------------------------------------------------------------- data
    def load_data(self, state: RunState) -> dict[str, Any]:
        from kd2deploy.tasks.hf_common import resolve_location
        from kd2deploy.tasks.text.data import load_text_data
        from kd2deploy.tasks.text.models import load_tokenizer
        from kd2deploy.tasks.text.train import Encoded

        require_hf()
        d = load_text_data(self.t.data, ".", self.cfg.seed)
        self.data = d
        self.tokenizer = load_tokenizer(resolve_location(self.t.teacher.model))
        n = self.t.data.max_seq_len
        self.encoded = {s: Encoded(self.tokenizer, *getattr(d, s), n) for s in ("train", "val", "test")}
        ui.step(f"data: {len(d.labels)} labels, train/val/test {len(d.train[0])}/{len(d.val[0])}/"
                f"{len(d.test[0])} from {d.source}")
        return {"source": d.source, "path_as_given": self.t.data.path, "labels": d.labels, "class_names": d.labels,
                "preprocessing": f"tokenise with the tokenizer.json beside the model (truncation at {n} tokens)",
                "num_classes": len(d.labels), "input_shape": [n], "train": len(d.train[0]), "val": len(d.val[0]),
                "test": len(d.test[0]), "max_seq_len": n, "split_seed": self.cfg.seed,
                "split": f"stratified, seeded; val {self.t.data.val_fraction}, test {self.t.data.test_fraction}"}

    def check(self, state: RunState) -> None:
        return None

    # ----------------------------------------------------------------------------------------- teacher
    def train_teacher(self, state: RunState, progress: Any) -> list[str]:
        import torch

        from kd2deploy.tasks.hf_common import resolve_location
        from kd2deploy.tasks.text.models import load_teacher
        from kd2deploy.tasks.text.train import accuracy, fine_tune

        folder = resolve_location(self.t.teacher.model)
        torch.manual_seed(self.cfg.seed)  # a new classification head is initialised here: make it reproducible
        teacher, tune, why = load_teacher(folder, self.data.labels, self.t.teacher.fine_tune)
        record: dict[str, Any] = {
            "arch": type(teacher).__name__, "folder": str(folder), "as_given": self.t.teacher.model,
            "fine_tuned": tune, "why": why, "num_layers": teacher.config.num_hidden_layers,
            "hidden_size": teacher.config.hidden_size, "params": sum(p.numel() for p in teacher.parameters()),
            "source": "trained" if tune else "checkpoint", "curve": []}
        if tune:
            ptask = progress.add_task("teacher fine-tune", total=self.t.teacher.train.epochs, info="")
            resume = state.resumes.get("teacher")
            with state.meter.track("train:teacher") as energy:
                teacher, history = fine_tune(
                    teacher, self.encoded["train"], self.encoded["val"], self.t.teacher.train, self.cfg.seed,
                    on_epoch=lambda e, m: progress.update(ptask, completed=e, info=f"val acc {m['val_acc']:.3f}"),
                    checkpoint=resume.slot("teacher") if resume is not None else None)
            record.update(curve=history, energy=energy.as_dict(), train=self.t.teacher.train.model_dump(),
                          train_time_s=sum(h["seconds"] for h in history))
        teacher.eval()
        record["val_accuracy_torch"] = accuracy(teacher, self.encoded["val"])
        record["test_accuracy_torch"] = accuracy(teacher, self.encoded["test"])
        self._set_teacher(state, teacher)
        state.results.setdefault("models", {})["teacher"] = record
        self._say_teacher(record)
        return self._save_hf(state, "teacher")

    def _set_teacher(self, state: RunState, teacher) -> None:
        from kd2deploy.tasks.text.export import save_hf

        state.teacher = teacher
        self.hf["teacher"] = save_hf(teacher, self.tokenizer, state.path("models", "teacher_hf", "x").parent)

    def _save_hf(self, state: RunState, name: str) -> list[str]:
        """The saved folder's files, zipped into one checkpoint file (what the stage cache stores)."""
        archive = state.path("checkpoints", f"{name}_hf")
        shutil.make_archive(str(archive), "zip", self.hf[name])
        return [f"{name}_hf.zip"]

    def restore_teacher(self, state: RunState, folder: Path, record: dict[str, Any]) -> list[str]:
        from transformers import AutoModelForSequenceClassification

        out = state.path("models", "teacher_hf", "x").parent
        shutil.unpack_archive(folder / "teacher_hf.zip", out, "zip")
        teacher = AutoModelForSequenceClassification.from_pretrained(str(out), local_files_only=True,
                                                                     attn_implementation="eager").eval()
        state.teacher = teacher
        self.hf["teacher"] = out
        state.results.setdefault("models", {})["teacher"] = record
        self._say_teacher(record, f" — reused ({folder.name[:12]})")
        return ["teacher_hf.zip"]

    def _say_teacher(self, record: dict[str, Any], reused: str = "") -> None:
        ui.step(f"teacher: {record['arch']}, {record['num_layers']} layers, {record['params']:,} params, "
                f"test acc {record['test_accuracy_torch']:.2%}" + (" (head fine-tuned)" if record["fine_tuned"]
                                                                   else "") + reused)

    # ----------------------------------------------------------------------------------------- students
    def train_arms(self, state: RunState, progress: Any):
        import torch

        from kd2deploy.distill.arms import Arm
        from kd2deploy.tasks.text.models import build_student
        from kd2deploy.tasks.text.train import History, distil, fine_tune

        d = self.t.distill
        terms = {t.loss for t in d.terms}
        logit_only = not terms & {"hidden", "attention"}
        logits, store = self._teacher_logits(state) if logit_only else (None, {"used": False})
        arms = []
        for seed in d.seeds:
            arms.append(Arm("kd", seed, temperature=d.temperature, alpha=d.alpha))
            if "scratch" in d.controls:
                arms.append(Arm("scratch", seed))
            if "label_smoothing" in d.controls:
                arms.append(Arm("label_smoothing", seed, label_smoothing=d.control_label_smoothing))
        resume = state.resumes.get("students")
        trained, info = [], {}
        for arm in arms:
            torch.manual_seed(arm.seed)  # every arm of a seed starts from the same student
            student, info = build_student(state.teacher, self.t.student)
            self.layer_map = info["layer_map"]
            ptask = progress.add_task(f"student {arm.key}", total=d.train.epochs, info="")

            def on_epoch(e, m, ptask=ptask):
                progress.update(ptask, completed=e, info=f"val acc {m['val_acc']:.3f}")

            slot = resume.slot(f"student {arm.key}") if resume is not None else None
            if arm.name == "kd":
                student, hist = distil(student, state.teacher, self.encoded["train"], self.encoded["val"], d,
                                       info["layer_map"], arm.seed, on_epoch=on_epoch, checkpoint=slot,
                                       teacher_logits=logits)
            else:
                student, hist = fine_tune(student, self.encoded["train"], self.encoded["val"], d.train, arm.seed,
                                          on_epoch=on_epoch, checkpoint=slot,
                                          label_smoothing=arm.label_smoothing or 0.0)
            trained.append((student, History(hist, sum(h["seconds"] for h in hist))))
        record = {
            "loss": "+".join(t.loss for t in d.terms),
            "terms": [{**t.model_dump(), **({"temperature": d.temperature, "alpha": d.alpha}
                                            if t.loss == "hinton" else {})} for t in d.terms],
            "temperature": d.temperature, "alpha": d.alpha, "train": d.train.model_dump(),
            "student": {k: info[k] for k in ("num_layers", "hidden_size", "init", "layer_map", "teacher_layers")},
            "student_arch": f"{type(state.teacher).__name__}, {info['num_layers']} layers",
            "teacher_outputs": "from the teacher-output store" if store.get("key") else
            "computed once" if logit_only else "per batch (hidden / attention terms need the teacher's activations)",
            "transfer": {"teacher_store": store},
            "controls": "same initialisation (teacher layers), data, batches and schedule; hard labels"
                        " (label_smoothing: smoothed)",
        }
        return arms, trained, record

    def _teacher_logits(self, state: RunState):
        """The teacher's logits on the training texts (logit terms need nothing else): from the teacher-output
        store under ``<out>/.cache/teacher_outputs`` (keyed by the teacher's weights and the token ids), computed
        once when absent; in memory when the cache is off."""
        import torch

        from kd2deploy.distill.store import teacher_outputs
        from kd2deploy.tasks.text.train import predict_logits

        train = self.encoded["train"]
        if not state.use_cache:
            return (torch.from_numpy(predict_logits(state.teacher, train)),
                    {"used": False, "reason": "the cache is off: computed once in memory"})
        n = max(len(r) for r in train.ids)
        ids = torch.tensor([r + [train.pad_id] * (n - len(r)) for r in train.ids])
        full: list = []

        def logits_of(a: int, b: int):
            if not full:
                full.append(torch.from_numpy(predict_logits(state.teacher, train)))
            return full[0][a:b]

        outputs, record = teacher_outputs(state.teacher, ids, Path(state.out) / ".cache" / "teacher_outputs",
                                          self.cfg.resolved()["text"]["data"], None, logits_of=logits_of)
        return outputs, {**record, "used": True}

    def accuracy(self, model, split: str) -> float:
        from kd2deploy.tasks.text.train import accuracy

        return accuracy(model, self.encoded[split])

    def save_student(self, model, path: Path) -> None:
        from kd2deploy.rundir import save_torch_atomic

        save_torch_atomic(model.state_dict(), path)

    def load_student(self, path: Path, teacher=None):
        import torch

        from kd2deploy.tasks.text.models import build_student

        with torch.random.fork_rng(devices=[]):
            student, info = build_student(teacher, self.t.student)
        self.layer_map = info["layer_map"]
        student.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return student.eval()

    def restore_students(self, state: RunState, folder: Path, record: dict[str, Any]) -> None:
        seed, arm = record["shipped_seed"], record.get("shipped_arm", "kd")
        state.student = self.load_student(folder / f"student_{arm}_seed{seed}.pt", state.teacher)
        state.scratch = (self.load_student(folder / f"student_scratch_seed{seed}.pt", state.teacher)
                         if "scratch" in record["arms"] else None)

    # ----------------------------------------------------------------------------------------- deployment
    def export(self, state: RunState, name: str, model: Any) -> dict[str, Any]:
        from kd2deploy.errors import StageError
        from kd2deploy.export.onnx_export import sha256_file
        from kd2deploy.tasks.text.export import export_folder, onnx_logits, parity, save_hf
        from kd2deploy.tasks.text.train import predict_logits

        if name not in self.hf or name != "teacher":
            self.hf[name] = save_hf(model, self.tokenizer, state.path("models", f"{name}_hf", "x").parent)
        folder = state.path("models", name, "model.onnx").parent
        info = export_folder(self.hf[name], folder, atol=self.t.export_atol, validate=self.t.validate_export)
        texts, labels = self.data.test
        ref = predict_logits(model, self.encoded["test"])
        got = onnx_logits(folder / "model.onnx", self.tokenizer, texts, self.t.data.max_seq_len)
        info["parity"] = parity(ref, got, labels, self.t.export_atol)
        info["path"] = str((folder / "model.onnx").relative_to(state.dir / "models"))
        info["size_bytes"] = (folder / "model.onnx").stat().st_size
        info["sha256"] = sha256_file(folder / "model.onnx")
        info["opset"] = onnx_opset(folder / "model.onnx")
        if info["parity"]["argmax_agreement"] < self.cfg.export.min_argmax_agreement:
            raise StageError(f"export of {name}: ONNX and PyTorch disagree on "
                             f"{1 - info['parity']['argmax_agreement']:.2%} of test predictions")
        if not info["parity"]["within_atol"]:
            state.warn(f"{name} ONNX logits differ from PyTorch by up to {info['parity']['max_abs_diff']:.2g} "
                       f"(atol {self.t.export_atol:g}); predictions agree on "
                       f"{info['parity']['argmax_agreement']:.2%}")
        self.folders[name] = folder
        state.onnx[name] = folder / "model.onnx"
        return info

    def outputs(self, path: Path, split: str) -> np.ndarray:
        from kd2deploy.tasks.text.export import onnx_logits

        return onnx_logits(Path(path), self.tokenizer, getattr(self.data, split)[0], self.t.data.max_seq_len)

    def labels(self, split: str) -> np.ndarray:
        return np.asarray(getattr(self.data, split)[1])

    def bench_shapes(self) -> list[dict[str, Any]]:
        return [{"seq_len": s} for s in self.t.bench.seq_lens]

    def bench_inputs(self, batch_size: int, shape: dict[str, Any]) -> dict[str, np.ndarray]:
        from kd2deploy.bench.harness import batch_inputs
        from kd2deploy.tasks.text.bench import fixed_length_inputs

        enc = fixed_length_inputs(self.tokenizer, self.data.test[0][: max(batch_size, 64)], shape["seq_len"])
        names = self._input_names()
        return batch_inputs({k: v for k, v in enc.items() if k in names}, batch_size)

    def _input_names(self) -> set[str]:
        """The exported models' input names (read once: every batch size, shape and the calibration ask)."""
        if self._inputs is None:
            import onnxruntime as ort

            path = next(iter(self.folders.values())) / "model.onnx"
            self._inputs = {i.name for i in ort.InferenceSession(str(path),
                                                                 providers=["CPUExecutionProvider"]).get_inputs()}
        return self._inputs

    def calibration_inputs(self) -> dict[str, np.ndarray]:
        from kd2deploy.tasks.text.bench import fixed_length_inputs

        enc = fixed_length_inputs(self.tokenizer, self.data.train[0], self.t.bench.seq_lens[0])
        names = self._input_names()
        return {k: v for k, v in enc.items() if k in names}

    def facts(self, state: RunState, name: str, model: Any) -> dict[str, Any]:
        import torch

        from kd2deploy.bench.flops import count_flops

        emb = getattr(model.base_model, "embeddings", None)
        shape = self.bench_shapes()[0]  # FLOPs of one text at the primary sequence length
        example = {k: torch.from_numpy(v) for k, v in self.bench_inputs(1, shape).items()}
        return {"params": sum(p.numel() for p in model.parameters()), "flops_per_sample": count_flops(model, example),
                "flops_at": shape,
                "layers": model.config.num_hidden_layers,
                "embedding_params": sum(p.numel() for p in emb.parameters()) if emb is not None else None}

    def package(self, state: RunState) -> Path:
        """The guard's pick as a folder: model.onnx (stamped) + tokenizer + config + MODEL_CARD.md; it loads with
        optimum's ORTModelForSequenceClassification and with plain onnxruntime + tokenizers (checked)."""
        from kd2deploy.ship.package import ship_student
        from kd2deploy.tasks.text.ship import check_shipped

        dest = ship_student(state.results, state.dir, folder_name="student")
        for f in self.folders["student"].iterdir():
            if f.is_file() and f.name != "model.onnx" and f.suffix in (".json", ".txt"):
                shutil.copyfile(f, dest.parent / f.name)
        state.results["ship"]["load_check"] = check_shipped(dest.parent, self.data.test[0][0],
                                                            self.t.data.max_seq_len)
        state.results["ship"]["files"] = sorted(p.name for p in dest.parent.iterdir())
        return dest.parent

    def report_sections(self, results: dict[str, Any]) -> list[dict[str, str]]:
        from kd2deploy.tasks.text.bench import tokenizer_timing

        folder = Path(results["run"]["dir"]) / results["ship"]["path"]
        tok = tokenizer_timing(folder.parent / "tokenizer.json",
                               self.data.test[0][: self.t.bench.tokenizer_samples], self.t.data.max_seq_len)
        results["benchmark"]["tokenizer"] = tok
        check = results["ship"].get("load_check", {})
        return [{"title": "Tokenisation and the shipped folder", "markdown": (
            f"Tokenising one text with the shipped tokenizer.json takes {tok['p50_us'] / 1e3:.2f} ms (p50 over "
            f"{tok.get('n', len(self.data.test[0][: self.t.bench.tokenizer_samples]))} test texts); the model "
            "latencies above exclude it. The shipped folder answered one prediction through plain onnxruntime + "
            f"tokenizers ({check.get('plain_onnxruntime')}) and through optimum ({check.get('optimum', 'n/a')})"
            + ("; they agree." if check.get("agree") else "."))}]


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
