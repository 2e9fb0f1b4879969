"""Compressed variants of the exported models, each judged against its FP32 source: accuracy on the validation
split (what the shipping guard decides on) and on the test split with parity (reported, never used to choose)."""

from __future__ import annotations

from typing import Any

from kd2deploy import ui
from kd2deploy.engine.stage import BaseStage
from kd2deploy.errors import StageError


class VariantsStage(BaseStage):
    name = "variants"
    requires = ("export",)

    def run(self, state, progress) -> None:
        from kd2deploy.export.variants import describe_clipping, judge_variant, make_variant

        cfg = state.cfg.variants
        task = state.task
        todo = [(model, spec) for model in cfg.apply_to for spec in cfg.variants]
        out: dict[str, Any] = {}
        refs: dict[str, Any] = {}
        ptask = progress.add_task("variants", total=len(todo), info="")
        y = task.labels("test")
        for model, spec in todo:
            src = state.onnx[model]
            if model not in out:
                out[model] = {"source": f"models/{src.name}",
                              "accuracy_fp32": state.results["export"][model]["parity"]["accuracy_onnx"],
                              "accuracy_fp32_val": _accuracy(task, src, "val"), "variants": [], "failed": []}
            entry = out[model]
            progress.update(ptask, info=f"{model} {spec.name}")
            try:
                path = make_variant(src, spec, state.dir / "models" / "variants", task.calibration_inputs(), stem=model)
                if model not in refs:
                    refs[model] = task.outputs(src, "test")
                res = judge_variant(path, src, refs[model], task.outputs(path, "test"), y)
                res["accuracy_val"] = _accuracy(task, path, "val")  # what the shipping guard judges
            except StageError as e:
                entry["failed"].append({"name": spec.name, "kind": spec.kind, "reason": str(e)})
                state.warn(f"variant {spec.name} of {model} was not made: {e}")
                ui.warn(f"variants: {e}")
            else:
                res.update(label=path.stem, model=model, clipping_text=describe_clipping(res["clipping"]))
                entry["variants"].append(res)
                state.variants[path.stem] = (model, path)
            progress.update(ptask, advance=1)
        state.results["variants"] = out
        if out:
            ui.step("variants: " + ", ".join(
                f"{v['label']} acc {v['accuracy']:.2%} (max|Δ| {v['parity']['max_abs_diff']:.2g})"
                for e in out.values() for v in e["variants"]))


def _accuracy(task, path, split: str) -> float:
    return float((task.outputs(path, split).argmax(-1) == task.labels(split)).mean())
