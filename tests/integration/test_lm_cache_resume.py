"""causal-lm on the engine's stage cache: a run stopped inside the students stage resumes after its last finished
arm; the next run reuses the teacher and the students from the cache and trains nothing."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("optimum.onnxruntime")
pytest.importorskip("rouge_score")


def test_stopped_students_resume_by_arm_then_everything_is_reused(tmp_path, monkeypatch):
    import kd2deploy.tasks.causal_lm.train as T
    from kd2deploy.config import load_config
    from kd2deploy.engine.driver import run_pipeline
    from tests.lm_tiny import lm_pipeline

    pipeline = lm_pipeline(tmp_path, {
        "export": {"parity_sequences": 1, "parity_new_tokens": 4, "int8_dynamic": False, "int4_weight_only": False},
        "bench": {"prompt_tokens": 8, "decode_tokens": 2, "rounds": 1, "warmup_rounds": 0, "batch_sizes": [1],
                  "teacher_eager": False, "memory": False, "bootstrap": 50},
    }, energy={"enabled": False})
    real, calls = T.train_arm, []

    def counted(*args, stop_after: int | None = None, **kw):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the students stage
        calls.append((kw["arm"], kw["seed"]))
        return real(*args, **kw)

    cfg = load_config(pipeline, [])
    monkeypatch.setattr(T, "train_arm", lambda *a, **kw: counted(*a, stop_after=2, **kw))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "runs", source=pipeline)
    assert calls == [("kd", 0), ("ce", 0)]
    assert list((tmp_path / "runs" / ".cache" / "students").glob("*.progress/kd_seed0.pt"))

    calls.clear()
    monkeypatch.setattr(T, "train_arm", counted)
    second = run_pipeline(cfg, tmp_path / "runs", source=pipeline).results
    assert calls == [("kd", 1), ("ce", 1)]  # only the arms the stopped run had not finished
    assert set(second["run"]["resumed"]["students"]) >= {"kd/seed0", "ce/seed0"}
    assert sorted((r["arm"], r["seed"]) for r in second["distill"]["runs"]) == [("ce", 0), ("ce", 1), ("kd", 0),
                                                                                 ("kd", 1)]
    assert second["shipped"]["generated_tokens"] == 8  # the chosen KD seed's weights, wherever it was trained
    assert not list((tmp_path / "runs" / ".cache" / "students").glob("*.progress"))  # stored: checkpoints gone

    calls.clear()
    third = run_pipeline(cfg, tmp_path / "runs", source=pipeline)
    assert calls == []
    assert set(third.results["run"]["reused"]) == {"teacher", "students"}
    assert third.results["distill"]["runs"] == json.loads(json.dumps(second["distill"]["runs"]))
    assert third.results["export"]["student_onnx_test_perplexity"] == pytest.approx(
        second["export"]["student_onnx_test_perplexity"], rel=1e-6)
