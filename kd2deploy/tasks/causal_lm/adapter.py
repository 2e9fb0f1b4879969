"""``task: causal-lm`` on the engine: the task's steps (:mod:`kd2deploy.tasks.causal_lm.run`) as stage objects.

The shared stages judge classifiers (accuracy, one forward per batch, accuracy-floor guard); a causal LM is
judged by perplexity and ROUGE-L and timed per generated token (TTFT, decode latency through the KV cache). So
this adapter supplies its own stage list through :meth:`CausalLMTask.stages` (the one extension of the engine:
``kd2deploy.stages.stages_for`` asks the task first); the driver, run folder, results.json, energy meter and
logging are the engine's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from kd2deploy import ui
from kd2deploy.engine.stage import BaseStage
from kd2deploy.errors import ConfigError
from kd2deploy.tasks.base import Capabilities

if TYPE_CHECKING:
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


class _Step(BaseStage):
    """One step of the task as an engine stage (uncached: the teacher-output store under ``--out/.cache`` keeps
    the expensive teacher pass across runs)."""

    def __init__(self, name: str, requires: tuple[str, ...], fn) -> None:
        self.name, self.requires, self._fn = name, requires, fn

    def run(self, state: RunState, progress: Any) -> None:
        self._fn(state)


class CausalLMTask:
    """Adapter of the causal-LM task (see the module doc)."""

    name: ClassVar[str] = "causal-lm"
    capabilities: ClassVar[Capabilities] = Capabilities(
        section="causal_lm", variant_kinds=frozenset({"int8-dynamic"}), backends=frozenset({"onnxruntime-cpu"}),
        torch_baseline=True, distributed=False,
        reasons={"int8-static": "static INT8 needs calibration through the KV-cache inputs, not built; use "
                                "int8-dynamic (causal_lm.export.int8_dynamic)",
                 "fp16": "float16 is for GPU providers; this task benchmarks on onnxruntime's CPU provider",
                 "transformer-fusion": "onnxruntime's fusions for decoder graphs with past are not wired yet",
                 "onnxruntime-cuda": "the generation benchmark drives CPU sessions only"},
    )

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.c = cfg.causal_lm
        self.ctx: dict[str, Any] = {}

    def packages(self) -> list[str]:
        return ["transformers", "optimum", "optimum-onnx", "tokenizers", "gguf", "accelerate", "rouge-score"]

    def key_inputs(self, stage: str) -> dict[str, Any]:
        return {"causal_lm": self.c.model_dump(mode="json")}

    def report_sections(self, results: dict[str, Any]) -> list[dict[str, str]]:
        from kd2deploy.tasks.causal_lm.report import render

        return [{"title": "causal-lm", "markdown": render(results)}]

    def stages(self) -> list[BaseStage]:
        """data -> teacher -> students -> export -> benchmark -> energy -> ship -> report (see the module doc)."""
        from kd2deploy.tasks.causal_lm import run as R

        def base_dir(state: RunState):
            return state.source.parent if state.source is not None else "."

        def say(msg: str) -> None:
            ui.step(msg)

        def data(state):
            require_lm()
            import torch

            torch.set_num_threads(state.task.c.distill.train.threads)
            R.step_data(state.task.c, state.task.ctx, state.results, base_dir(state))
            seq = state.results["data"]["sequences"]
            say(f"data: {seq} packed sequences of {state.task.c.data.max_seq_len} tokens")

        def teacher(state):
            R.step_teacher(state.task.c, state.task.ctx, state.results, state.out, None)
            state.teacher = state.task.ctx["teacher"]
            say(f"teacher: test perplexity {state.results['teacher']['test']['perplexity']['perplexity']:.2f}")

        def students(state):
            R.step_students(state.task.c, state.task.ctx, state.results, say)
            state.student = state.task.ctx["student"]

        def export(state):
            R.step_export(state.task.c, state.task.ctx, state.results, state.dir)
            state.onnx = {p.name: p / "model.onnx" for p in (state.dir / "onnx").iterdir()}

        def benchmark(state):
            R.step_benchmark(state.task.c, state.task.ctx, state.results, state.dir, None)

        def energy(state):
            R.step_energy(state.task.c, state.task.ctx, state.results, state.dir, state.meter, state.cfg.energy)

        def ship(state):
            R.step_ship(state.task.c, state.task.ctx, state.results, state.dir)

        def report(state):
            say(R.step_report(state.results, state.dir))

        return [_Step("data", (), data), _Step("teacher", ("data",), teacher),
                _Step("students", ("teacher",), students), _Step("export", ("students",), export),
                _Step("benchmark", ("export",), benchmark), _Step("energy", ("benchmark",), energy),
                _Step("ship", ("energy",), ship),
                _Step("report", ("ship",), report)]
