"""``task: causal-lm`` on the engine.

The engine's own stages read the data (``data``), load and score the teacher (``teacher``, cached) and write the
reports (``report``) through this adapter, as for every task. An LM is judged by perplexity and ROUGE-L and timed
per generated token (TTFT, decode latency through the KV cache), not by accuracy and one forward pass, so its
students, export, benchmark, energy and ship stages are its own (:mod:`kd2deploy.tasks.causal_lm.stages`); the
students stage is cached by the engine's chained key and resumes arm by arm. :meth:`CausalLMTask.stages` is the
one extension of the engine: ``kd2deploy.stages.stages_for`` asks the task first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kd2deploy import ui
from kd2deploy.errors import ConfigError
from kd2deploy.tasks.base import Capabilities

if TYPE_CHECKING:
    from kd2deploy.engine.stage import Stage
    from kd2deploy.engine.state import RunState


def require_lm() -> None:
    """One line naming the extras when the packages of the task are missing."""
    missing = []
    for mod in ("transformers", "optimum.exporters.onnx", "optimum.onnxruntime", "rouge_score"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod.split(".")[0].replace("_", "-"))
    if missing:
        raise ConfigError(f"task: causal-lm needs {', '.join(dict.fromkeys(missing))}: "
                          "pip install -c constraints.txt -e '.[hf,lm]'")


class CausalLMTask:
    """Adapter of the causal-LM task (see the module doc). Holds the run's tokenizer, packed splits, held prompts
    and the teacher's stored outputs between stages."""

    name: ClassVar[str] = "causal-lm"
    ship_file: ClassVar[str] = "ship/student"
    capabilities: ClassVar[Capabilities] = Capabilities(
        section="causal_lm", variant_kinds=frozenset(), backends=frozenset({"onnxruntime-cpu"}),
        torch_baseline=True, distributed=False,
        reasons={"int8-dynamic": "causal-lm makes its own variants: causal_lm.export.int8_dynamic / int4_weight_only",
                 "int8-static": "static INT8 needs calibration through the KV-cache inputs, not built; use "
                                "causal_lm.export.int8_dynamic or int4_weight_only",
                 "fp16": "float16 is for GPU providers; this task benchmarks on onnxruntime's CPU provider",
                 "transformer-fusion": "onnxruntime's fusions for decoder graphs with past are not wired yet",
                 "onnxruntime-cuda": "the generation benchmark drives CPU sessions only"},
    )

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.c = cfg.causal_lm
        self.tokenizer: Any = None
        self.splits: Any = None
        self.ids: dict[str, Any] = {}
        self.prompts: list[Any] = []
        self.transfer_ids: Any = None
        self.stores: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------- provenance
    def packages(self) -> list[str]:
        return ["transformers", "optimum", "optimum-onnx", "tokenizers", "gguf", "accelerate", "rouge-score"]

    def key_inputs(self, stage: str) -> dict[str, Any]:
        from kd2deploy.cache import CACHE_FORMAT, versions
        from kd2deploy.tasks.hf_common import resolve_location, tree_sha256

        r = self.cfg.resolved()["causal_lm"]
        if stage == "data":
            return {"data": r["data"], "eval": r["eval"], "files": tree_sha256(resolve_location(self.c.data.path)),
                    "tokenizer": tree_sha256(resolve_location(self.c.teacher.model))}
        if stage == "teacher":
            return {"format": CACHE_FORMAT, "teacher": r["teacher"], "top_k": r["distill"]["top_k"],
                    "versions": versions(extra=self.packages())}
        return {"format": CACHE_FORMAT, "student": r["student"], "distill": r["distill"],
                "versions": versions(extra=self.packages())}

    def stages(self) -> list[Stage]:
        """data -> teacher -> students -> export -> benchmark -> select -> energy -> ship -> report."""
        from kd2deploy.stages.data import DataStage
        from kd2deploy.stages.report import ReportStage
        from kd2deploy.stages.teacher import TeacherStage
        from kd2deploy.tasks.causal_lm import stages as S

        return [DataStage(), TeacherStage(), S.StudentsStage(), S.ExportStage(), S.BenchmarkStage(),
                S.SelectStage(), S.EnergyStage(), S.ShipStage(), ReportStage()]

    # ----------------------------------------------------------------------------------------- data
    def load_data(self, state: RunState) -> dict[str, Any]:
        import torch

        from kd2deploy.tasks.causal_lm import data as D
        from kd2deploy.tasks.causal_lm import models as M
        from kd2deploy.tasks.hf_common import resolve_location

        require_lm()
        torch.set_num_threads(self.c.distill.train.threads)
        c, dc = self.c, self.c.data
        self.tokenizer = M.load_tokenizer(resolve_location(c.teacher.model))
        self.splits = D.load_splits(dc, ".")
        D.check_chat_template(self.tokenizer, self.splits.train + self.splits.test, dc.chat_template)
        self.ids = {
            "train": D.pack(self.tokenizer, self.splits.train, dc.max_seq_len, dc.chat_template,
                            dc.max_train_sequences),
            "val": D.pack(self.tokenizer, self.splits.val, dc.max_seq_len, dc.chat_template, dc.max_eval_sequences),
            "test": D.pack(self.tokenizer, self.splits.test, dc.max_seq_len, dc.chat_template, dc.max_eval_sequences),
        }
        self.prompts = D.held_prompts(self.tokenizer, self.splits.test, c.eval.prompts, c.eval.prompt_tokens,
                                      c.eval.new_tokens, dc.chat_template)
        seqs = {k: list(v.shape) for k, v in self.ids.items()}
        ui.step(f"data: {self.splits.source} ({self.splits.format}), packed sequences of {dc.max_seq_len} tokens: "
                + ", ".join(f"{k} {v[0]}" for k, v in seqs.items()))
        return {**self.splits.info, "source": self.splits.source, "format": self.splits.format, "sequences": seqs,
                "held_prompts": len(self.prompts)}

    def check(self, state: RunState) -> None:  # the context length is checked when the teacher loads
        return None

    # ----------------------------------------------------------------------------------------- teacher
    def _load_teacher(self, state: RunState) -> dict[str, Any]:
        from kd2deploy.tasks.causal_lm import models as M
        from kd2deploy.tasks.hf_common import resolve_location

        loc = resolve_location(self.c.teacher.model)
        teacher, facts = M.load_teacher(loc)
        M.check_context(teacher.config, self.c.data.max_seq_len)
        state.teacher = teacher
        return {**facts, "location": str(loc), "as_given": self.c.teacher.model}

    def _teacher_outputs(self, state: RunState, say: Any = None) -> dict[str, Any]:
        """The transfer set and the teacher-output stores (train, test), from ``--out/.cache`` when there."""
        from kd2deploy.tasks.causal_lm.run import transfer_set
        from kd2deploy.tasks.causal_lm.train import teacher_store

        cache = state.out / ".cache"
        self.transfer_ids, transfer = transfer_set(self.c, self.tokenizer, self.splits, self.ids["train"],
                                                   state.teacher, cache / "transfer")
        store: dict[str, Any] = {}
        for split, ids in (("train", self.transfer_ids), ("test", self.ids["test"])):
            self.stores[split], store[split] = teacher_store(state.teacher, ids, cache / "teacher_outputs",
                                                             self.c.distill.top_k, progress=say)
        return {"transfer": transfer, "store": store}

    def train_teacher(self, state: RunState, progress: Any) -> list[str]:
        from kd2deploy.tasks.causal_lm import evaluate as E

        ptask = progress.add_task("teacher", total=3, info="loading")
        record = self._load_teacher(state)
        progress.update(ptask, completed=1, info="scoring the test split")
        record["test"] = E.evaluate(state.teacher, self.tokenizer, self.ids["test"], self.prompts,
                                    self.c.eval.new_tokens)
        progress.update(ptask, completed=2, info="teacher-output store")
        record.update(self._teacher_outputs(state, lambda msg: progress.update(ptask, info=msg)))
        progress.update(ptask, completed=3, info="")
        state.results.setdefault("models", {})["teacher"] = record
        self._say_teacher(record)
        return []

    def restore_teacher(self, state: RunState, folder: Path, record: dict[str, Any]) -> list[str]:
        self._load_teacher(state)
        record.update(self._teacher_outputs(state))
        state.results.setdefault("models", {})["teacher"] = record
        self._say_teacher(record, f" — reused ({folder.name[:12]})")
        return []

    def _say_teacher(self, record: dict[str, Any], reused: str = "") -> None:
        ui.step(f"teacher: {record['architecture']}, {record['layers']} layers, {record['params'] / 1e6:.1f} M params, "
                f"test perplexity {record['test']['perplexity']['perplexity']:.2f}" + reused)

    # ----------------------------------------------------------------------------------------- reports
    def report_sections(self, results: dict[str, Any]) -> list[dict[str, str]]:
        return []  # the whole report is the task's (render_report)

    @staticmethod
    def render_report(results: dict[str, Any], fmt: str) -> str:
        from kd2deploy.tasks.causal_lm.report import render_html, render_markdown

        return render_markdown(results) if fmt == "md" else render_html(results)

    @staticmethod
    def render_compare(ra: dict[str, Any], rb: dict[str, Any], fa: Any, fb: Any, fmt: str) -> str:
        from kd2deploy.tasks.causal_lm.report import compare_markdown, markdown_to_html

        md = compare_markdown(ra, rb, fa, fb)
        return md if fmt == "md" else markdown_to_html(md, "kd2deploy comparison")

    @staticmethod
    def summary_table(results: dict[str, Any]) -> tuple[str, list[str], list[tuple[str, ...]]]:
        from kd2deploy.tasks.causal_lm.report import summary_table

        return summary_table(results)
