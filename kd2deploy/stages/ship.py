"""The shipping guard picks, per model, the fastest variant that keeps accuracy; the task packages the student's
pick under ship/ (stamped, with its model card)."""

from __future__ import annotations

from kd2deploy import ui
from kd2deploy.engine.stage import BaseStage


class ShipStage(BaseStage):
    name = "ship"
    requires = ("benchmark",)

    def run(self, state, progress) -> None:
        from kd2deploy.ship.guard import candidates_from_bench, select

        policy = state.cfg.ship
        timed = {r["model"] for r in state.latency}
        for model, entry in state.results.get("variants", {}).items():
            accuracies = {model: entry["accuracy_fp32"], **{v["label"]: v["accuracy"] for v in entry["variants"]}}
            control = f"{model}@aa"
            candidates = candidates_from_bench(
                state.latency, model, accuracies, policy.batch_size,
                kinds={v["label"]: v["kind"] for v in entry["variants"]},
                controls=[control] if control in timed else [],
            )
            entry["candidates"] = candidates
            entry["selection"] = select(candidates, policy)
            for c in candidates:
                r = c.get("ratio_vs_source")
                if c["source"] not in ("fp32", "control") and r and r["ci95"][1] < 1:
                    state.warn(
                        f"variant {c['name']} is slower than its FP32 source: {1 / r['ratio_p50']:.2f}x the p50 at "
                        f"batch {policy.batch_size} (95 % CI of the speed-up {r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}x); "
                        "not shipped")
        from kd2deploy.report.headline import headline

        state.results["headline"] = headline(state.results)  # the shipped file's card and metadata quote it
        path = state.task.package(state)
        sel = state.results["ship"].get("selection")
        ui.step(f"ship: {path.relative_to(state.dir)} ← {state.results['ship']['source']}"
                + (f" ({sel['reason']})" if sel else ""))
