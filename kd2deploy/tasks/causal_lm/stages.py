"""The causal-LM task's own stages: what is judged by perplexity and timed per generated token.

``students`` (cached by the engine's chained key; resumes arm by arm) -> ``export`` (KV cache, parity, variants)
-> ``benchmark`` (TTFT and per-token decode, interleaved) -> ``select`` (the guard, on validation) -> ``energy``
(per 1 M generated tokens, teacher and the file that ships) -> ``ship`` (``ship/student/``, the quality interval and
the headline). The engine's ``data``, ``teacher`` and ``report`` stages run before and after them.
"""

from __future__ import annotations

from typing import Any

from kd2deploy import ui
from kd2deploy.engine.stage import BaseStage
from kd2deploy.engine.state import writes

STUDENT_FILE = "student.pt"


class StudentsStage(BaseStage):
    """Every seed's KD student and (``distill.control``) its cross-entropy control from the same initialisation;
    the KD seed with the lowest validation perplexity ships. A stopped run resumes after its last finished arm."""

    name = "students"
    requires = ("data", "teacher")
    cached = True

    def key_inputs(self, state) -> dict[str, Any]:
        return state.task.key_inputs("students")

    def run(self, state, progress) -> list[str]:
        import torch

        from kd2deploy.rundir import save_torch_atomic
        from kd2deploy.tasks.causal_lm import evaluate as E
        from kd2deploy.tasks.causal_lm import models as M
        from kd2deploy.tasks.causal_lm.run import ship_choice, summarize_arms
        from kd2deploy.tasks.causal_lm.train import train_arm

        task = state.task
        c = task.c
        torch.set_num_threads(c.distill.train.threads)
        resume = state.resumes.get("students")
        best_slot = resume.slot("best-kd") if resume is not None else None
        todo = [(seed, arm) for seed in c.distill.seeds for arm in ["kd"] + (["ce"] if c.distill.control else [])]
        ptask = progress.add_task("students", total=len(todo), info="")
        runs: list[dict[str, Any]] = []
        best: tuple[float, int, Any] | None = None  # (val perplexity, seed, model) of the best KD student so far
        with state.meter.track("train:students") as energy:
            for seed, arm in todo:
                slot = resume.slot(f"{arm}/seed{seed}") if resume is not None else None
                saved = slot.load() if slot is not None else None
                student = None
                if saved is not None:
                    rec = saved["record"]
                else:
                    student, info = M.build_student(state.teacher, c.student, seed=seed)
                    rec = train_arm(student, task.transfer_ids, c.distill, seed=seed, arm=arm,
                                    teacher_outputs=task.stores["train"], teacher=state.teacher,
                                    progress=lambda msg: progress.update(ptask, info=msg))
                    rec["val"] = {"perplexity": E.perplexity(student, task.ids["val"])["perplexity"]}
                    rec["test"] = E.evaluate(student, task.tokenizer, task.ids["test"], task.prompts,
                                             c.eval.new_tokens, task.stores["test"])
                    rec["student"] = info
                if arm == "kd" and (best is None or rec["val"]["perplexity"] < best[0]):
                    best = (rec["val"]["perplexity"], seed, student)  # student None: its weights are in best-kd
                    if student is not None and best_slot is not None:  # before the arm's record: never lost
                        best_slot.save(1, {"seed": seed, "weights": student.state_dict()})
                if slot is not None and saved is None:
                    slot.save(1, {"record": rec})
                runs.append(rec)
                progress.update(ptask, advance=1, info=f"{arm} seed {seed}: test perplexity "
                                                       f"{rec['test']['perplexity']['perplexity']:.2f}")
        choice = ship_choice(runs)
        if best is not None and best[1] == choice["seed"] and best[2] is not None:
            state.student = best[2]
        else:  # the shipped seed was trained by an earlier, stopped run
            saved = best_slot.load() if best_slot is not None else None
            if saved is None or saved["seed"] != choice["seed"]:
                raise RuntimeError(f"students: the weights of KD seed {choice['seed']} are not in "
                                   f"{getattr(resume, 'dir', 'the resume folder')}; rerun with --force students")
            state.student = self._build(state, choice["seed"], saved["weights"])
        record = {"loss": c.distill.loss, "temperature": c.distill.temperature, "alpha": c.distill.alpha,
                  "seeds": list(c.distill.seeds), "arms": sorted({r["arm"] for r in runs}), "runs": runs,
                  "summary": summarize_arms(runs), "ship_choice": choice, "energy": energy.as_dict(),
                  "student_params": sum(p.numel() for p in state.student.parameters())}
        state.results["distill"] = record
        if writes():
            save_torch_atomic(state.student.state_dict(), state.path("checkpoints", STUDENT_FILE))
        say_students(record)
        return [STUDENT_FILE]

    def restore(self, state, entry, record: dict[str, Any]) -> list[str]:
        import torch

        weights = torch.load(entry.dir / STUDENT_FILE, map_location="cpu", weights_only=True)
        state.student = self._build(state, record["ship_choice"]["seed"], weights)
        state.results["distill"] = record
        say_students(record, f" — reused ({entry.key[:12]})")
        return [STUDENT_FILE]

    def record(self, state) -> dict[str, Any]:
        return state.results["distill"]

    @staticmethod
    def _build(state, seed: int, weights: dict[str, Any]):
        from kd2deploy.tasks.causal_lm import models as M

        student, _ = M.build_student(state.teacher, state.task.c.student, seed=seed)
        student.load_state_dict(weights)
        return student.eval()


def say_students(record: dict[str, Any], reused: str = "") -> None:
    s = record["summary"]
    line = ", ".join(f"{arm} {s[arm]['test_perplexity']['mean']:.2f}" + (
        f" ± {s[arm]['test_perplexity']['sd']:.2f}" if s[arm]["test_perplexity"]["sd"] is not None else "")
        for arm in record["arms"])
    ui.step(f"students ({len(record['seeds'])} seed(s)), test perplexity: {line}; ships KD seed "
            f"{record['ship_choice']['seed']} (lowest validation perplexity)" + reused)


class ExportStage(BaseStage):
    name = "export"
    requires = ("students",)

    def run(self, state, progress) -> None:
        from kd2deploy.tasks.causal_lm.run import export_and_check

        t = state.task
        ptask = progress.add_task("export", total=1, info="student, teacher and variants (optimum, KV cache)")
        rec = export_and_check(t.c, t.tokenizer, t.ids, state.teacher, state.student, state.path("models", "x").parent)
        progress.update(ptask, completed=1, info="")
        state.results["export"] = rec
        state.onnx = {p.name: p / "model.onnx" for p in sorted((state.dir / "models").iterdir())
                      if (p / "model.onnx").is_file()}
        p = rec["student_parity"]
        ui.step(f"export: student max|Δ logit| {p['max_abs_logit_diff']:.1e}, greedy agreement "
                f"{p['greedy_agreement']:.2f}, ONNX test perplexity {rec['student_onnx_test_perplexity']:.2f}; "
                + ", ".join(f"{k} test perplexity {v['test_perplexity']:.2f}" if "error" not in v else f"{k} failed"
                            for k, v in rec["variants"].items()))


class BenchmarkStage(BaseStage):
    name = "benchmark"
    requires = ("export",)

    def run(self, state, progress) -> None:
        from kd2deploy.tasks.causal_lm.run import benchmark, ratio_of

        t = state.task
        ptask = progress.add_task("benchmark", total=None, info="")
        rec = benchmark(t.c, t.ids, state.teacher, state.dir / "models",
                        lambda msg: progress.update(ptask, info=msg))
        state.results["benchmark"] = rec
        r = ratio_of(rec, "teacher-onnx", "student-onnx")
        if r:
            ui.step(f"benchmark: student {r['decode_ratio']:.2f}x faster per decoded token than the ONNX teacher "
                    f"[{r['decode_ci95'][0]:.2f}, {r['decode_ci95'][1]:.2f}], TTFT {r['ttft_ratio']:.2f}x")


class SelectStage(BaseStage):
    """The guard: which student file ships, judged on validation (:func:`kd2deploy.tasks.causal_lm.run.guard`)."""

    name = "select"
    requires = ("benchmark",)

    def run(self, state, progress) -> None:
        from kd2deploy.tasks.causal_lm.run import guard

        state.results["guard"] = g = guard(state.task.c, state.results["export"], state.results["benchmark"])
        ui.step(f"select: ships {g['ships']} ({g['reason']})")


class EnergyStage(BaseStage):
    """Energy per 1 M generated tokens of the ONNX teacher and the file that ships (the engine's meter:
    interleaved windows with an idle baseline); one call = one greedy generation of P + D tokens at batch 1,
    counted as D + 1 generated tokens. The label (measured / modelled) is CodeCarbon's, from what it detected."""

    name = "energy"
    requires = ("select",)

    def run(self, state, progress) -> None:
        from kd2deploy.energy.meter import measure_inference_energy
        from kd2deploy.tasks.causal_lm import bench as B

        res = state.results
        if state.meter is None or not state.meter.enabled:
            res["energy"] = {"note": "energy not tracked (energy.enabled: false)"}
            return
        bc, ec = state.task.c.bench, state.cfg.energy
        prompt = state.task.ids["test"][:1, : bc.prompt_tokens].numpy()
        runners = {}
        for name in ("teacher", res["guard"]["ships"]):
            folder = state.dir / "models" / name
            if (folder / "model.onnx").is_file():
                lm = B.OrtLM(folder, bc.threads)
                runners[f"{name}-onnx"] = ((lambda lm=lm: B.generate_timed(lm, prompt, bc.decode_tokens)),
                                           bc.decode_tokens + 1)
        ptask = progress.add_task("energy", total=None, info="")
        e = measure_inference_energy(state.meter, runners, ec.window_s, ec.repeats, ec.idle_baseline,
                                     lambda i, n, label: progress.update(ptask, info=f"window {i}/{n} {label}"))
        per = {name: m.get("per_million_gross", {}).get("kwh") for name, m in e["models"].items()}
        shipped = f"{res['guard']['ships']}-onnx"
        ratio = per["teacher-onnx"] / per[shipped] if per.get("teacher-onnx") and per.get(shipped) else None
        res["energy"] = {"kwh_per_million_tokens_gross": per, "teacher_over_shipped": ratio, "shipped": shipped,
                         "label": e.get("label"), "explanation": e.get("explanation"), "window_s": e.get("window_s"),
                         "repeats": e.get("repeats"),
                         "method": "kd2deploy.energy.meter.measure_inference_energy: interleaved windows per model "
                                   "and an idle window; one call = one greedy generation of the benchmark's prompt "
                                   "and decode length, counted as decode_tokens + 1 generated tokens"}
        if ratio:
            ui.step(f"energy: {ratio:.2f}x less per generated token ({e.get('label')})")


class ShipStage(BaseStage):
    """``ship/student/``: the guard's pick, proven to load with ORTModelForCausalLM and generate; the quality
    interval of that file against the teacher; the headline."""

    name = "ship"
    requires = ("select", "energy")

    def run(self, state, progress) -> None:
        from kd2deploy.export.onnx_export import sha256_file
        from kd2deploy.tasks.causal_lm.report import build_headline
        from kd2deploy.tasks.causal_lm.run import perplexity_ratio, ship_folder

        res, t = state.results, state.task
        ships = res["guard"]["ships"]
        dst = state.path("ship", "student", "x").parent
        res["shipped"] = ship_folder(state.dir / "models" / ships, dst, t.prompts[0].ids)
        exp = res["export"]
        nll = exp["student_nll"]["test"] if ships == "student" else exp["variants"][ships]["nll"]["test"]
        res["quality"] = perplexity_ratio(res["models"]["teacher"]["test"]["perplexity"]["per_sequence_nll"], nll)
        res["ship"] = {"path": str(dst.relative_to(state.dir)), "sha256": sha256_file(dst / "model.onnx"),
                       "source": ships, "selection": {"reason": res["guard"]["reason"]}}
        res["headline"] = build_headline(res, t.c.eval.max_perplexity_ratio)
        (dst / "README.md").write_text(f"# {state.cfg.name}: shipped student\n\n{res['headline']['text']}\n\n"
                                       f"Load: `ORTModelForCausalLM.from_pretrained(folder)` with the tokenizer "
                                       f"beside it. Run folder: {state.dir}\n", encoding="utf-8")
        ui.step(f"ship: {dst.relative_to(state.dir)} ← models/{ships}; {res['headline']['verdict']}")
