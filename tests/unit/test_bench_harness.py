"""The latency harness on real onnxruntime sessions of tiny ONNX graphs, and its statistics on synthetic data.

No assertion compares speeds: shared CI machines are too noisy for that.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kd2deploy.bench import harness
from kd2deploy.bench.harness import HarnessSettings

FAST = HarnessSettings(
    warmup_s=0.005, warmup_runs=2, min_duration_s=0.02, min_runs=20, rounds=2, bootstrap=200, seed=0
)


def make_mlp_onnx(
    path: Path, hidden: int = 16, d_in: int = 16, d_out: int = 10, batch: str | int = "batch"
) -> Path:
    """A MatMul-ReLU-MatMul graph with a dynamic (or fixed) batch axis, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((d_in, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, d_out)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, d_out])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "big": make_mlp_onnx(d / "big.onnx", hidden=128),
        "small": make_mlp_onnx(d / "small.onnx", hidden=4),
        "fixed": make_mlp_onnx(d / "fixed.onnx", batch=1),
    }


@pytest.fixture(scope="module")
def measured(models) -> list[dict]:
    runners = {}
    for name in ("big", "small"):
        session, _ = harness.create_ort_session(models[name], FAST)
        specs = harness.session_input_specs(session)
        runners[name] = {b: harness.ort_runner(session, harness.random_feeds(specs, b)) for b in (1, 8)}
    return harness.measure(runners, FAST, keep_samples=True)


# ---------------------------------------------------------------------------------------------- settings


def test_settings_defaults():
    s = HarnessSettings()
    assert (s.intra_op_threads, s.inter_op_threads, s.graph_optimization) == (1, 1, "all")
    assert (s.provider, s.warmup_s, s.warmup_runs) == ("CPUExecutionProvider", 0.2, 10)
    assert (s.min_duration_s, s.min_runs, s.rounds, s.bootstrap, s.seed) == (1.0, 100, 3, 1000, 0)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="disable, basic, extended, all"):
        HarnessSettings(graph_optimization="max")
    with pytest.raises(ValueError, match="rounds"):
        HarnessSettings(rounds=0)


# ---------------------------------------------------------------------------------------------- sessions


def test_create_ort_session_applies_settings(models):
    settings = HarnessSettings(intra_op_threads=1, inter_op_threads=1, graph_optimization="basic")
    session, seconds = harness.create_ort_session(models["small"], settings)
    opts = session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert str(opts.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    assert str(opts.execution_mode).endswith("ORT_SEQUENTIAL")
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert seconds > 0


def test_create_ort_session_unknown_provider_lists_installed(models):
    with pytest.raises(ValueError, match="installed providers: .*CPUExecutionProvider"):
        harness.create_ort_session(models["small"], HarnessSettings(provider="NoSuchExecutionProvider"))


def test_random_feeds_shapes_and_errors(models):
    session, _ = harness.create_ort_session(models["small"], FAST)
    specs = harness.session_input_specs(session)
    feeds = harness.random_feeds(specs, 5, seed=1)
    assert feeds["x"].shape == (5, 16) and feeds["x"].dtype == np.float32
    np.testing.assert_array_equal(feeds["x"], harness.random_feeds(specs, 5, seed=1)["x"])
    fixed, _ = harness.create_ort_session(models["fixed"], FAST)
    with pytest.raises(ValueError, match="fixed batch size of 1"):
        harness.random_feeds(harness.session_input_specs(fixed), 4)
    with pytest.raises(ValueError, match="dynamic dimension 'seq' at axis 1"):
        harness.random_feeds([("ids", ["batch", "seq"], np.dtype(np.int64))], 2)


def test_batch_inputs_cuts_and_repeats_rows():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(harness.batch_inputs(x, 2), x[:2])
    np.testing.assert_array_equal(harness.batch_inputs(x, 5)[:, 0], [0, 2, 4, 0, 2])
    assert harness.batch_inputs({"a": x}, 4)["a"].shape == (4, 2)


def test_ort_runner_runs_one_inference(models):
    session, _ = harness.create_ort_session(models["small"], FAST)
    run = harness.ort_runner(session, np.ones((3, 16), np.float32))
    (y,) = run()
    assert y.shape == (3, 10)
    with pytest.raises(ValueError, match=r"the model takes \['x'\]"):
        harness.ort_runner(session, {"input": np.ones((1, 16), np.float32)})


# ---------------------------------------------------------------------------------------------- measure


def test_measure_statistics(measured):
    assert [(r["model"], r["batch_size"]) for r in measured] == [
        ("big", 1),
        ("big", 8),
        ("small", 1),
        ("small", 8),
    ]
    for r in measured:
        assert r["rounds"] == FAST.rounds
        assert r["runs"] >= FAST.min_runs * FAST.rounds
        assert r["runs"] == r["samples_us"].size
        assert r["measured_s"] >= FAST.min_duration_s * FAST.rounds
        assert r["min_us"] <= r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"]
        lo, hi = r["p50_ci95_us"]
        assert lo <= r["p50_us"] <= hi
        assert r["mean_us"] > 0 and r["std_us"] >= 0
        assert r["throughput_sps"] == pytest.approx(r["batch_size"] * 1e6 / r["mean_us"], rel=1e-3)
        assert r["window_short"] is False and r["timer"] == "perf_counter_ns"


def test_strip_samples_makes_results_json_able(measured):
    stripped = harness.strip_samples(measured)
    assert all("samples_us" not in r for r in stripped)
    assert "samples_us" in measured[0]  # the input is left alone
    json.dumps(stripped)


def test_measure_interleaves_models_round_by_round():
    calls: list[str] = []
    labels: list[str] = []

    def runner(name):
        return lambda: calls.append(name)

    names = ["a", "b", "c"]
    runners = {n: {1: runner(n), 4: runner(n)} for n in names}
    one_call = HarnessSettings(
        warmup_s=0, warmup_runs=1, min_duration_s=0, min_runs=1, rounds=3, bootstrap=10
    )
    results = harness.measure(runners, one_call, progress=labels.append)
    per_window = [calls[i] for i in range(0, len(calls), 2)]  # each window: one warm-up + one timed call
    assert calls[0::2] == calls[1::2]
    rounds = ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert per_window == rounds + rounds  # batch 1, then batch 4
    assert labels[:4] == [
        "a batch 1 round 1/3",
        "b batch 1 round 1/3",
        "c batch 1 round 1/3",
        "b batch 1 round 2/3",
    ]
    assert len(labels) == harness.count_windows(runners, one_call) == 18
    assert all(r["runs"] == 3 for r in results)


def test_rounds_after_the_first_time_a_fresh_session(models):
    """renew_sessions: every round but the first times a new InferenceSession; off, one session throughout."""
    made = []

    def make():
        session, _ = harness.create_ort_session(models["small"], FAST)
        made.append(session)
        return session

    x = harness.random_feeds(harness.session_input_specs(make()), 2)
    runner = harness.ort_runner(made[0], x, make)
    res = harness.measure({"m": {2: runner}}, FAST)
    assert len(made) == 1 + (FAST.rounds - 1) and len({id(s) for s in made}) == len(made)
    assert res[0]["runs"] >= FAST.rounds * FAST.min_runs
    harness.measure({"m": {2: runner}}, dataclasses.replace(FAST, renew_sessions=False))
    assert len(made) == FAST.rounds  # no new session


def test_schedule_rotates():
    assert harness.schedule(["t", "s"], 3) == [["t", "s"], ["s", "t"], ["t", "s"]]
    assert harness.schedule([], 2) == []


def test_measure_skips_batch_sizes_a_model_lacks():
    runners = {"a": {1: lambda: None, 2: lambda: None}, "b": {2: lambda: None}}
    one_call = HarnessSettings(
        warmup_s=0, warmup_runs=0, min_duration_s=0, min_runs=2, rounds=2, bootstrap=10
    )
    results = harness.measure(runners, one_call)
    assert [(r["model"], r["batch_size"]) for r in results] == [("a", 1), ("a", 2), ("b", 2)]


def test_window_cut_short_is_flagged():
    settings = HarnessSettings(
        warmup_s=0, warmup_runs=0, min_duration_s=10, min_runs=1000, rounds=1, bootstrap=10, max_window_s=0.03
    )
    (res,) = harness.measure({"slow": {1: lambda: time.sleep(0.005)}}, settings)
    assert res["window_short"] is True
    assert 1 <= res["runs"] < 1000


def test_self_timed_runner_reports_its_own_time():
    class DeviceTimed:
        self_timed = True

        def __call__(self) -> int:
            return 5_000  # nanoseconds, as a CUDA-event timed runner returns

    settings = HarnessSettings(
        warmup_s=0, warmup_runs=1, min_duration_s=0.001, min_runs=10, rounds=2, bootstrap=50
    )
    (res,) = harness.measure({"gpu": {1: DeviceTimed()}}, settings)
    assert res["p50_us"] == res["min_us"] == res["p99_us"] == 5.0
    assert res["timer"] == "self"


# ---------------------------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("n", [401, 400])
def test_bootstrap_medians_match_naive_resampling(n):
    """The order-statistic shortcut draws from the same distribution as resampling (odd and even n)."""
    x = np.random.default_rng(1).lognormal(size=n)
    fast = harness.bootstrap_medians(x, 5_000, np.random.default_rng(2))
    idx = np.random.default_rng(3).integers(0, n, size=(5_000, n))
    naive = np.median(x[idx], axis=1)
    for q in (2.5, 25, 50, 75, 97.5):
        assert np.percentile(fast, q) == pytest.approx(np.percentile(naive, q), rel=0.03)


def test_ratio_ci_on_synthetic_latencies():
    rng = np.random.default_rng(0)
    b = rng.lognormal(mean=2.0, sigma=0.2, size=5000)
    a = 3.0 * rng.lognormal(mean=2.0, sigma=0.2, size=5000)
    ratio, lo, hi = harness.ratio_ci(a, b, bootstrap=1000, seed=0)
    assert ratio == pytest.approx(np.median(a) / np.median(b))
    assert lo < ratio < hi and lo < 3.0 < hi and hi - lo < 0.2
    assert harness.ratio_ci(a, b, bootstrap=1000, seed=0) == (ratio, lo, hi)  # seeded
    r_inv, lo_inv, hi_inv = harness.ratio_ci(b, a, bootstrap=1000, seed=0)
    assert r_inv == pytest.approx(1 / ratio) and lo_inv < 1 / ratio < hi_inv
    assert harness.ratio_ci(b, b, bootstrap=200, seed=0)[0] == 1.0


def test_ratio_ci_constant_latencies_give_a_point():
    assert harness.ratio_ci(np.full(50, 20.0), np.full(70, 10.0), 100, 0) == (2.0, 2.0, 2.0)


def test_ratios_per_batch_size(measured):
    rows = harness.ratios(measured, "big", "small", bootstrap=200, seed=0)
    assert [r["batch_size"] for r in rows] == [1, 8]
    for row in rows:
        lo, hi = row["ci95"]
        assert lo <= row["ratio_p50"] <= hi
    with pytest.raises(ValueError, match="keep_samples=True"):
        harness.ratios(harness.strip_samples(measured), "big", "small")
    assert harness.ratios(measured, "big", "nobody") == []


# ---------------------------------------------------------------------------------------------- probes


def test_peak_flops_and_memory_probes():
    assert harness.peak_flops_probe(duration_s=0.02, n=64) > 0
    info = harness.peak_flops(duration_s=0.02, threads=1)
    assert info["flops_per_s"] > 0 and "256x256" in info["method"]
    rss = harness.peak_rss_bytes()
    assert rss is None or rss > 10 * 2**20


def test_file_info_and_environment(models):
    info = harness.file_info(models["small"])
    assert info["size_bytes"] == models["small"].stat().st_size and len(info["sha256"]) == 64
    env = harness.environment()
    assert env["logical_cpus"] >= 1 and env["onnxruntime"] and "cpu_model" in env


def test_unique_labels():
    assert harness.unique_labels(["a/t.onnx", "b/s.onnx"]) == ["t", "s"]
    assert harness.unique_labels(["a/m.onnx", "b/m.onnx"]) == ["a/m.onnx", "b/m.onnx"]


# ---------------------------------------------------------------------------------------------- CLI


CLI_FAST = [
    "--warmup-s",
    "0",
    "--warmup-runs",
    "2",
    "--min-duration",
    "0.01",
    "--min-runs",
    "10",
    "--rounds",
    "2",
]


def test_cli_main_prints_table_and_writes_json(models, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = harness.main(
        [
            str(models["big"]),
            str(models["small"]),
            "--batch-sizes",
            "1",
            "4",
            *CLI_FAST,
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "intra-op threads 1" in printed and "p50 big / small at batch 4" in printed
    doc = json.loads(out.read_text())
    assert set(doc) == {
        "settings",
        "environment",
        "models",
        "results",
        "ratios",
        "peak_flops",
        "peak_rss_bytes",
    }
    assert doc["settings"]["min_duration_s"] == 0.01
    assert [m["name"] for m in doc["models"]] == ["big", "small"]
    assert {"size_bytes", "sha256", "session_create_s", "providers"} <= set(doc["models"][0])
    assert len(doc["results"]) == 4 and len(doc["ratios"][0]["per_batch"]) == 2


def test_cli_with_npy_inputs(models, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((3, 16), np.float32))
    assert (
        harness.main(
            [
                str(models["small"]),
                "--inputs",
                str(x),
                "--batch-sizes",
                "5",
                *CLI_FAST,
                "--no-flops-probe",
                "--quiet",
            ]
        )
        == 0
    )
    assert "small" in capsys.readouterr().out


def test_harness_file_imports_only_stdlib_numpy_onnxruntime():
    tree = ast.parse(Path(harness.__file__).read_text())
    top = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"numpy", "onnxruntime", "threadpoolctl"}
    assert top <= allowed, top - allowed


def test_harness_file_runs_alone(models, tmp_path):
    """Copied out of the package, the file still runs as a script (as on an edge device)."""
    script = shutil.copy(harness.__file__, tmp_path / "harness.py")
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            str(models["small"]),
            *CLI_FAST,
            "--no-flops-probe",
            "--json",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["results"][0]["model"] == "small"


def test_round_medians_match_naive_two_level_resampling():
    """Rounds resampled, then latencies within the chosen rounds: the shortcut matches doing it by hand."""
    rng = np.random.default_rng(4)
    rounds = [rng.lognormal(mean=m, sigma=0.1, size=300) for m in (2.0, 2.05, 2.1)]
    picks = np.random.default_rng(5).integers(0, 3, size=(4_000, 3))
    fast = harness.round_medians(rounds, picks, np.random.default_rng(6))
    naive_rng = np.random.default_rng(7)
    naive = []
    for p in picks:
        pooled = np.concatenate([rounds[i] for i in p])
        naive.append(np.median(pooled[naive_rng.integers(0, pooled.size, pooled.size)]))
    for q in (2.5, 25, 50, 75, 97.5):
        assert np.percentile(fast, q) == pytest.approx(np.percentile(naive, q), rel=0.01)


def test_drift_between_rounds_widens_the_intervals():
    """Pooling rounds that disagree hides the drift; per-round resampling shows it. A drift shared by both
    models (measured in the same rounds) cancels in their ratio."""
    rng = np.random.default_rng(8)
    drift = (1.0, 1.06, 0.95)
    a = [d * 30 * rng.lognormal(0, 0.05, 2000) for d in drift]
    b = [d * 10 * rng.lognormal(0, 0.05, 2000) for d in drift]
    pooled_lo, pooled_hi = harness.median_ci(np.concatenate(a), 1000, 0)
    lo, hi = harness.median_ci(a, 1000, 0)
    assert hi - lo > 5 * (pooled_hi - pooled_lo)
    _, rlo, rhi = harness.ratio_ci(a, b, 1000, 0)
    assert rlo < 3.0 < rhi and rhi - rlo < 0.05  # the shared drift cancels
    only_a = [d * 10 * rng.lognormal(0, 0.05, 2000) for d in (1.0, 1.0, 1.0)]
    _, wlo, whi = harness.ratio_ci(a, only_a, 1000, 0)
    assert whi - wlo > 0.1  # drift in one model only: the ratio's interval says so


# ---------------------------------------------------------------------------------------------- memory


def test_memory_probe_sees_a_big_model_in_a_fresh_process(tmp_path):
    """Each model's peak memory comes from its own process: 64 MiB of weights must show, a tiny model not."""
    from kd2deploy.bench.memory import measure_memory

    small = measure_memory(make_mlp_onnx(tmp_path / "small.onnx", hidden=4), FAST, batch_size=8)
    big = measure_memory(make_mlp_onnx(tmp_path / "big.onnx", hidden=4096, d_in=4096), FAST, batch_size=8)
    for m in (small, big):
        assert "error" not in m, m
        assert m["peak_rss_bytes"] >= m["baseline_peak_rss_bytes"] > 10 * 2**20  # python + numpy + onnxruntime
        assert m["batch_size"] == 8 and "peak resident set" in m["method"]
    weights = 4096 * 4096 * 4
    assert big["session_peak_bytes"] - small["session_peak_bytes"] > 0.9 * weights


def test_memory_probe_reports_a_broken_file(tmp_path):
    from kd2deploy.bench.memory import measure_memory

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    res = measure_memory(bad, FAST, batch_size=1)
    assert "peak_rss_bytes" not in res and res["error"].startswith("memory probe failed")
