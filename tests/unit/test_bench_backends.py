"""Backends behind one interface, the bench API, and FLOP/parameter counting.

GPU backends carry the ``gpu`` marker and skip with the backend's own reason where they cannot run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kd2deploy.bench import backends
from kd2deploy.bench.api import bench_onnx, onnx_input_specs
from kd2deploy.bench.harness import HarnessSettings, measure

torch = pytest.importorskip("torch")

FAST = HarnessSettings(warmup_s=0, warmup_runs=2, min_duration_s=0.01, min_runs=10, rounds=2, bootstrap=100)
NAMES = {
    "onnxruntime-cpu",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
    "tensorrt",
    "torch-eager-cpu",
    "torch-eager-cuda",
}
GPU_BACKENDS = ["onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch-eager-cuda"]


def make_mlp_onnx(path: Path, hidden: int = 16, d_in: int = 16, d_out: int = 10) -> Path:
    """A MatMul-ReLU-MatMul graph with a dynamic batch axis, built with onnx.helper."""
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
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", d_out])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("onnx")
    return [make_mlp_onnx(d / "teacher.onnx", hidden=64), make_mlp_onnx(d / "student.onnx", hidden=4)]


@pytest.fixture
def torch_threads():
    """Restores torch's process-wide thread count after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))


# ---------------------------------------------------------------------------------------------- registry


def test_registry_holds_every_backend():
    assert set(backends.backend_names()) == NAMES
    for name in NAMES:
        be = backends.get_backend(name)
        assert be.name == name and be.device in ("cpu", "cuda") and be.model_format in ("onnx", "torch")


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backend 'onnxruntime-gpu'") as err:
        backends.get_backend("onnxruntime-gpu")
    assert all(name in str(err.value) for name in NAMES)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_available_answers_with_a_reason(name):
    ok, reason = backends.get_backend(name).available()
    assert isinstance(ok, bool) and isinstance(reason, str)
    assert ok or reason  # a "no" always says why
    if name in ("onnxruntime-cpu", "torch-eager-cpu"):
        assert ok, reason


# ---------------------------------------------------------------------------------------------- CPU backends


def test_onnxruntime_cpu_runner(onnx_files):
    be = backends.get_backend("onnxruntime-cpu")
    x = np.ones((4, 16), np.float32)
    runner, setup_s = be.make_runner(onnx_files[0], x, FAST)
    (y,) = runner()
    assert y.shape == (4, 10) and setup_s > 0
    loaded = be.load(onnx_files[0], FAST, batch_sizes=(1, 4))
    assert loaded.info["providers"] == ["CPUExecutionProvider"]
    assert loaded.runner(x[:1])()[0].shape == (1, 10)


def test_onnx_backends_refuse_modules_and_unsupported_precision(onnx_files):
    be = backends.get_backend("onnxruntime-cpu")
    with pytest.raises(TypeError, match="path to an ONNX file"):
        be.make_runner(tiny_net(), np.ones((1, 16), np.float32), FAST)
    with pytest.raises(ValueError, match="comes from the ONNX file"):
        be.make_runner(onnx_files[0], np.ones((1, 16), np.float32), FAST, precision="fp16")
    with pytest.raises(FileNotFoundError):
        be.make_runner(onnx_files[0].with_name("missing.onnx"), np.ones((1, 16), np.float32), FAST)


def test_torch_eager_cpu_runner(torch_threads):
    net = tiny_net().train()
    be = backends.get_backend("torch-eager-cpu")
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    runner, setup_s = be.make_runner(net, x, HarnessSettings(intra_op_threads=1))
    out = runner()
    assert torch.get_num_threads() == 1
    assert not out.requires_grad and setup_s >= 0
    with torch.no_grad():
        torch.testing.assert_close(out, net(torch.from_numpy(x)))
    assert net.training  # the caller's module is left as it was


def test_torch_eager_rejects_other_model_kinds():
    with pytest.raises(TypeError, match="torch.nn.Module or a .pt2 file"):
        backends.get_backend("torch-eager-cpu").make_runner("model.onnx", np.ones((1, 16), np.float32), FAST)


def test_backends_runners_feed_the_harness(onnx_files, torch_threads):
    x = np.ones((2, 16), np.float32)
    ort_run, _ = backends.get_backend("onnxruntime-cpu").make_runner(onnx_files[1], x, FAST)
    torch_run, _ = backends.get_backend("torch-eager-cpu").make_runner(tiny_net(), x, FAST)
    results = measure({"ort": {2: ort_run}, "torch": {2: torch_run}}, FAST)
    assert [r["model"] for r in results] == ["ort", "torch"]
    assert all(r["runs"] >= FAST.min_runs * FAST.rounds for r in results)


# ---------------------------------------------------------------------------------------------- GPU backends


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_gpu_backend_runs(name, onnx_files, torch_threads):
    be = backends.get_backend(name)
    ok, reason = be.available()
    if not ok:
        pytest.skip(f"{name}: {reason}")
    x = np.ones((4, 16), np.float32)
    model = tiny_net() if be.model_format == "torch" else onnx_files[0]
    runner, setup_s = be.make_runner(model, x, FAST)
    out = runner()
    assert setup_s > 0
    if getattr(runner, "self_timed", False):
        assert isinstance(out, int) and out > 0  # GPU nanoseconds from CUDA events
    (res,) = measure({name: {4: runner}}, FAST)
    assert res["runs"] >= FAST.min_runs * FAST.rounds


# ---------------------------------------------------------------------------------------------- API


def test_bench_onnx_returns_a_json_able_report(onnx_files):
    labels = []
    doc = bench_onnx(onnx_files, [1, 4], FAST, progress=labels.append, flops_probe=False)
    json.dumps(doc)
    assert set(doc) >= {
        "settings",
        "environment",
        "models",
        "results",
        "ratios",
        "peak_flops",
        "peak_rss_bytes",
    }
    assert doc["settings"]["backend"] == "onnxruntime-cpu" and doc["settings"]["batch_sizes"] == [1, 4]
    assert [m["name"] for m in doc["models"]] == ["teacher", "student"]
    assert {"path", "size_bytes", "sha256", "session_create_s"} <= set(doc["models"][0])
    assert {"onnxruntime", "cpu_model", "logical_cpus"} <= set(doc["environment"])
    assert len(doc["results"]) == 4 and len(labels) == 2 * 2 * FAST.rounds
    (ratio,) = doc["ratios"]
    assert (ratio["numerator"], ratio["denominator"]) == ("teacher", "student")
    assert [r["batch_size"] for r in ratio["per_batch"]] == [1, 4]


def test_bench_onnx_with_given_inputs(onnx_files):
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    doc = bench_onnx(onnx_files[1:], [5], FAST, inputs=x, flops_probe=False)
    assert doc["ratios"] == [] and doc["results"][0]["batch_size"] == 5 and doc["peak_flops"] is None


def test_bench_onnx_errors(onnx_files):
    with pytest.raises(ValueError, match="valid names"):
        bench_onnx(onnx_files, [1], FAST, backend="nope")
    with pytest.raises(ValueError, match="runs torch modules"):
        bench_onnx(onnx_files, [1], FAST, backend="torch-eager-cpu")
    with pytest.raises(FileNotFoundError):
        bench_onnx([onnx_files[0].with_name("missing.onnx")], [1], FAST)


def test_onnx_input_specs(onnx_files):
    assert onnx_input_specs(onnx_files[0]) == [("x", ["batch", 16], np.dtype(np.float32))]


# ---------------------------------------------------------------------------------------------- FLOPs


def test_flops_of_a_linear_layer_is_two_in_out():
    from kd2deploy.bench.flops import count_flops, count_params

    layer = torch.nn.Linear(16, 8)
    assert count_flops(layer, torch.zeros(5, 16)) == 2 * 16 * 8  # per sample, whatever the example's batch
    assert count_params(layer) == 16 * 8 + 8


def test_flops_of_a_conv_net_and_mode_restored():
    from kd2deploy.bench.flops import count_flops

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    ).train()
    conv = 2 * (4 * 8 * 8) * (1 * 3 * 3)
    assert count_flops(net, torch.zeros(2, 1, 8, 8)) == conv + 2 * 256 * 10
    assert net.training
