"""The causal-LM task end to end on a tiny random Llama built here: KD and the CE control over two seeds, export
with the KV cache, parity, int8-dynamic, interleaved benchmark (teacher also eager), and the shipped folder
generating through ORTModelForCausalLM."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("optimum.onnxruntime")
pytest.importorskip("rouge_score")


def test_causal_lm_end_to_end(tmp_path):
    """Through the engine (``kd2deploy.engine.driver.run_pipeline``) from a pipeline file, as ``kd2deploy run``."""
    from kd2deploy.config import load_config
    from kd2deploy.engine.driver import run_pipeline
    from tests.lm_tiny import lm_pipeline

    t0 = time.perf_counter()
    pipeline = lm_pipeline(tmp_path, {
        "distill": {"seeds": [0, 1], "on_policy_fraction": 0.3, "on_policy_new_tokens": 4,
                    "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3}},
        "bench": {"prompt_tokens": 8, "decode_tokens": 4, "rounds": 3, "batch_sizes": [1, 2], "bootstrap": 200},
    }, energy={"window_s": 1.0, "repeats": 1, "idle_baseline": False})
    state = run_pipeline(load_config(pipeline, []), tmp_path / "runs", source=pipeline)
    out = state.dir
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "causal-lm" and set(res["run"]["stage_wall_s"]) >= {
        "data", "teacher", "students", "export", "benchmark", "select", "energy", "ship"}
    h = res["headline"]
    assert h["verdict"] in h["text"] and h["ships"] in ("student", "student-int8", "student-int4")
    assert h["decode_ci95"][0] <= h["decode_ratio"] <= h["decode_ci95"][1]
    q = res["quality"]  # the shipped file's perplexity over the teacher's, paired over test sequences
    assert q["ci95"][0] <= q["ratio"] <= q["ci95"][1] and q["sequences"] == 8
    report = (out / "report.md").read_text()
    assert "KD vs the cross-entropy control" in report and h["text"] in report
    assert "data:image/png;base64," in (out / "report.html").read_text()  # the plots
    runs = res["distill"]["runs"]
    # both arms, every seed, with the same initialisation (same student facts)
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("ce", 0), ("ce", 1), ("kd", 0), ("kd", 1)]
    assert any(r["on_policy_steps"] > 0 for r in runs if r["arm"] == "kd")
    assert all(r["on_policy_steps"] == 0 for r in runs if r["arm"] == "ce")
    for r in runs:  # training did something: every student far better than a uniform guess
        assert r["test"]["perplexity"]["perplexity"] < res["models"]["teacher"]["vocab_size"] / 2
        assert r["student"]["init_from_teacher_layers"] == [0, 3]
    s = res["distill"]["summary"]
    assert {"kd", "ce", "kd_vs_control"} <= set(s)
    assert 0 <= s["kd"]["top1_agreement"]["mean"] <= 1 and 0 <= s["kd"]["rougeL_f"]["mean"] <= 1
    # export with the KV cache: past_key_values inputs, and parity with PyTorch
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(str(out / "models" / "student" / "model.onnx")).get_inputs()]
    assert "past_key_values.0.key" in names and "past_key_values.1.value" in names
    p = res["export"]["student_parity"]
    assert p["within_atol"] and p["greedy_agreement"] == 1.0
    kd_best = [r for r in runs if r["arm"] == "kd" and r["seed"] == res["distill"]["ship_choice"]["seed"]][0]
    assert res["export"]["student_onnx_test_perplexity"] == pytest.approx(
        kd_best["test"]["perplexity"]["perplexity"], rel=1e-3)
    variants = res["export"]["variants"]
    assert variants["student-int4"]["matmuls_quantised"] > 0
    for name in ("student-int8", "student-int4"):  # each a loadable folder with its own perplexities
        assert (out / "models" / name / "model.onnx").is_file() and variants[name]["val_perplexity"] > 1
    assert variants["student-int4"]["onnx_bytes"] < res["export"]["student_export"]["onnx_bytes"]
    # benchmark: every model, both batch sizes, ratios with intervals, memory
    b = res["benchmark"]
    assert {(r["model"], r["batch_size"]) for r in b["results"]} == {
        (m, bs) for m in ("teacher-onnx", "student-onnx", "student-int8-onnx", "student-int4-onnx", "teacher-eager")
        for bs in (1, 2)}
    for r in b["results"]:
        assert 0 < r["decode_p50_us"] <= r["decode_p90_us"] <= r["decode_p99_us"] and r["ttft_p50_us"] > 0
    rat = {(r["numerator"], r["denominator"], r["batch_size"]): r for r in b["ratios"]}
    r = rat[("teacher-onnx", "student-onnx", 1)]
    assert r["decode_ci95"][0] <= r["decode_ratio"] <= r["decode_ci95"][1]
    assert ("teacher-eager", "student-onnx", 1) in rat
    mem = b["memory"]
    assert mem["student"]["peak_rss_bytes"] > mem["student"]["model_peak_bytes"] >= 0
    assert mem["student"]["peak_rss_bytes"] < 2 * 2**30  # its own process, not the (pytest) parent's size
    # energy per 1 M generated tokens through the engine's meter, labelled
    e = res["energy"]
    assert e["label"] in ("measured", "modelled") and e["kwh_per_million_tokens_gross"][f"{h['ships']}-onnx"] > 0
    # the guard judged on validation; the shipped folder generates through ORTModelForCausalLM with its tokenizer
    assert res["guard"]["ships"] == h["ships"] and "validation" in res["guard"]["rule"]
    assert res["shipped"]["generated_tokens"] == 8
    shipped = out / "ship" / "student"
    assert (shipped / "tokenizer.json").is_file() and (shipped / "README.md").is_file()
    # kd2deploy report re-renders from results.json (validated against the schema's causal-lm branch)
    from kd2deploy.report.rerender import rerender

    (out / "report.md").unlink()
    rerender(out, ["md"])
    assert (out / "report.md").read_text() == report
    from kd2deploy.report.compare import compare_text  # kd2deploy compare: two causal-lm runs side by side

    cmp = compare_text(out, out / "results.json", "md")
    assert "faster per decoded token" in cmp and "| yes |" in cmp and "config hash equal" in cmp
    from kd2deploy.errors import ConfigError
    from kd2deploy.report.schema import validate_results

    del res["quality"]  # a causal-lm results.json is checked against its own branch of the schema
    with pytest.raises(ConfigError, match=r"\$: 'quality' is a required property"):
        validate_results(res)
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    m = ORTModelForCausalLM.from_pretrained(str(shipped))
    tok = AutoTokenizer.from_pretrained(str(shipped))
    enc = tok("the match team", return_tensors="pt")
    gen = m.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=5,
                     min_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 5
    # The run itself takes ~40 s with the machine shared by several jobs (load average ~8 on 2 cores) and ~15 s
    # alone; a generous bound keeps the test honest without making it flaky under that contention.
    assert res["run"]["wall_s"] < 150, res["run"]["stage_wall_s"]
    assert time.perf_counter() - t0 < 300
