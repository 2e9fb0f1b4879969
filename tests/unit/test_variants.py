"""Compressed variants made from real ONNX exports of a tiny CNN and an MLP trained briefly on digits.

Every variant must load in onnxruntime and carry the operators its kind implies; the evaluation must report
accuracy, parity and (static INT8 only) the clipping diagnostic. No assertion compares speeds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from kd2deploy.errors import StageError
from kd2deploy.export.onnx_export import sha256_file
from kd2deploy.export.variants import (
    METADATA_KEY,
    Fp16Spec,
    Int8DynamicSpec,
    Int8StaticSpec,
    OptimizedSpec,
    VariantsConfig,
    calibration_subset,
    describe_clipping,
    evaluate_variant,
    make_variant,
    read_variant_metadata,
    variant_path,
)

ARCHS = ("cnn-tiny", "mlp-tiny")


def train_and_export(arch: str, data, out_dir: Path, epochs: int = 5) -> Path:
    """Trains ``arch`` for a few mini-batch epochs on one torch thread; exports it with the project's exporter
    (torch.onnx dynamo, dynamic batch axis, parity checked)."""
    import torch

    from kd2deploy.config import ExportConfig
    from kd2deploy.export.onnx_export import export_onnx
    from kd2deploy.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine were 70x slower here
    try:
        torch.manual_seed(0)
        net = build_model(arch, data.input_shape, data.num_classes, {}, "student")
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 128):
                b = perm[i : i + 128]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x[b]), y[b]).backward()
                opt.step()
        path = out_dir / f"{arch}.onnx"
        export_onnx(net, data.x_test, data.y_test, path, ExportConfig(), arch)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="module")
def digits():
    from kd2deploy.config import DataConfig
    from kd2deploy.data import load_data

    return load_data(DataConfig(), 0)


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    return {arch: train_and_export(arch, digits, out) for arch in ARCHS}


def op_counts(path: Path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


# ------------------------------------------------------------------------------------------------ config
def test_default_is_static_int8_for_both_models():
    """Dynamic INT8 is opt-in: it quantises activations per call, which made CNNs 4-5x slower here."""
    cfg = VariantsConfig()
    assert [v.name for v in cfg.variants] == ["int8-static-qdq-minmax"]
    assert cfg.variants[0].per_channel is False
    assert cfg.apply_to == ["teacher", "student"]


@pytest.mark.parametrize(
    "spec, name",
    [
        (Int8StaticSpec(), "int8-static-qdq-minmax"),
        (
            Int8StaticSpec(per_channel=True, reduce_range=True),
            "int8-static-qdq-minmax-perchannel-reducerange",
        ),
        (Int8StaticSpec(calibration="percentile", percentile=99.99), "int8-static-qdq-percentile99.99"),
        (Int8StaticSpec(calibration="percentile"), "int8-static-qdq-percentile99.999"),
        (Int8StaticSpec(format="qoperator", calibration="entropy"), "int8-static-qoperator-entropy"),
        (Int8StaticSpec(calibration_samples=2), "int8-static-qdq-minmax-n2"),
        (Int8DynamicSpec(weight_type="quint8", per_channel=True), "int8-dynamic-quint8-perchannel"),
        (Fp16Spec(), "fp16-keepio"),
        (Fp16Spec(keep_io_types=False), "fp16"),
        (OptimizedSpec(level="all"), "optimized-all"),
        (Int8StaticSpec(name="my-int8"), "my-int8"),
    ],
)
def test_names_derive_from_settings(spec, name):
    assert spec.name == name


def test_yaml_section_validates_with_the_kind_discriminator():
    text = """
variants:
  - {kind: int8-static, calibration: percentile, percentile: 99.99, calibration_samples: 1000}
  - {kind: int8-static, per_channel: true, reduce_range: true}
  - {kind: int8-dynamic}
  - {kind: fp16}
  - {kind: optimized, level: extended, name: ort-extended}
apply_to: [student]
"""
    cfg = VariantsConfig.model_validate(yaml.safe_load(text))
    assert [type(v).__name__ for v in cfg.variants] == [
        "Int8StaticSpec",
        "Int8StaticSpec",
        "Int8DynamicSpec",
        "Fp16Spec",
        "OptimizedSpec",
    ]
    assert cfg.variants[0].name == "int8-static-qdq-percentile99.99-n1000"
    assert cfg.variants[-1].name == "ort-extended"
    # The resolved config holds the derived names, so they enter the run's config hash.
    assert VariantsConfig.model_validate(cfg.model_dump(mode="json")) == cfg


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"variants": [{"kind": "int4"}]}, "int8-static"),  # lists the valid kinds
        ({"variants": [{"kind": "int8-static", "calibraton": "minmax"}]}, "calibraton"),
        (
            {"variants": [{"kind": "int8-static", "percentile": 99.9}]},
            "only used with calibration: percentile",
        ),
        (
            {"variants": [{"kind": "int8-dynamic"}, {"kind": "int8-dynamic"}]},
            "both named 'int8-dynamic-qint8'",
        ),
        ({"variants": [{"kind": "fp16", "name": "../evil"}]}, "pattern"),
        ({"apply_to": ["student", "student"]}, "twice"),
        ({"apply_to": ["scratch"]}, "teacher"),
    ],
)
def test_bad_sections_are_rejected_with_the_cause(data, needle):
    with pytest.raises(ValidationError) as e:
        VariantsConfig.model_validate(data)
    assert needle in str(e.value)


def test_calibration_subset_is_seeded_and_never_larger_than_asked():
    x = np.arange(100, dtype=np.float32)[:, None]
    a, b = calibration_subset(x, 10), calibration_subset(x, 10)
    assert a.shape == (10, 1) and np.array_equal(a, b) and len(np.unique(a)) == 10
    assert np.array_equal(calibration_subset(x, 500), x)
    with pytest.raises(StageError, match="empty"):
        calibration_subset(x[:0], 10)


# ------------------------------------------------------------------------------------------------ making
def _has_qlinear(ops: Counter) -> bool:
    return any(op.startswith("QLinear") or op == "QGemm" for op in ops)


CASES = [
    (
        Int8StaticSpec(calibration_samples=256),
        lambda ops: ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0,
    ),
    (
        Int8StaticSpec(
            format="qoperator", per_channel=True, calibration="percentile", calibration_samples=256
        ),
        _has_qlinear,
    ),
    (
        Int8StaticSpec(calibration="entropy", reduce_range=True, calibration_samples=256),
        lambda ops: ops["QuantizeLinear"] > 0,
    ),
    (Int8DynamicSpec(), lambda ops: ops["DynamicQuantizeLinear"] > 0 and ops["MatMulInteger"] > 0),
    (Int8DynamicSpec(weight_type="quint8", per_channel=True), lambda ops: ops["DynamicQuantizeLinear"] > 0),
    (Fp16Spec(), lambda ops: ops["Cast"] >= 2),  # float32 in and out, float16 inside
    (Fp16Spec(keep_io_types=False), lambda ops: ops["Cast"] == 0),
    (OptimizedSpec(level="all"), lambda ops: "FusedGemm" in ops or "ReorderOutput" in ops),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec, ops_ok", CASES, ids=[c[0].name for c in CASES])
def test_each_variant_loads_and_is_judged_against_its_source(arch, spec, ops_ok, exported, digits, tmp_path):
    import onnxruntime as ort

    src = exported[arch]
    path = make_variant(src, spec, tmp_path, digits.x_train)
    assert path == variant_path(src, spec, tmp_path) == tmp_path / f"{arch}.{spec.name}.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary files left behind
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert ops_ok(op_counts(path)), op_counts(path)
    if spec.kind == "int8-dynamic" and arch == "cnn-tiny":
        assert op_counts(path)["ConvInteger"] > 0

    meta = read_variant_metadata(path)
    assert meta["spec"]["name"] == spec.name and meta["source"] == src.name
    assert meta["source_sha256"] == sha256_file(src)

    res = evaluate_variant(path, src, digits.x_test, digits.y_test)
    assert res["name"] == spec.name and res["kind"] == spec.kind
    assert set(res["parity"]) == {"max_abs_diff", "mean_abs_diff", "argmax_agreement", "n_samples"}
    assert res["parity"]["n_samples"] == len(digits.y_test)
    assert 0 <= res["accuracy"] <= 1 and res["accuracy_source"] > 0.85  # the FP32 model learnt the digits
    assert res["accuracy_drop_pp"] == pytest.approx((res["accuracy_source"] - res["accuracy"]) * 100)
    assert res["parity"]["argmax_agreement"] >= 0.9
    if spec.kind in ("fp16", "optimized"):
        assert res["parity"]["max_abs_diff"] < (0.1 if spec.kind == "fp16" else 1e-4)
    if spec.kind == "int8-static":
        clip = res["clipping"]
        assert clip["calibration"] == {"method": spec.calibration, "samples": 256, "from": "training split"}
        lo, hi = clip["representable_range"]
        assert lo < 0 < hi and clip["n_logits"] == 10 * len(digits.y_test)
        assert clip["source_max_abs_logit"] > 0 and 0 <= clip["fraction_outside"] <= 1
    else:
        assert res["clipping"] is None


def test_clipping_is_visible_when_calibration_saw_too_little(exported, digits, tmp_path):
    """Two calibration samples cannot show the logit range of 360 test samples: the report must say so."""
    src = exported["cnn-tiny"]
    path = make_variant(src, Int8StaticSpec(calibration_samples=2), tmp_path, digits.x_train)
    clip = evaluate_variant(path, src, digits.x_test, digits.y_test)["clipping"]
    lo, hi = clip["calibration_range"]
    assert clip["source_max_abs_logit"] > max(-lo, hi)
    assert clip["n_outside"] > 0
    line = describe_clipping(clip)
    assert f"up to {clip['source_max_abs_logit']:.1f} on test" in line and "test logits clipped" in line


def test_a_rerun_replaces_the_file_and_its_metadata_once(exported, digits, tmp_path):
    import onnx

    spec = Int8DynamicSpec()
    make_variant(exported["mlp-tiny"], spec, tmp_path, digits.x_train)
    path = make_variant(exported["mlp-tiny"], spec, tmp_path, digits.x_train)
    keys = [p.key for p in onnx.load(str(path)).metadata_props]
    assert keys.count(METADATA_KEY) == 1


@pytest.mark.parametrize("spec", [Int8StaticSpec(calibration_samples=64), Int8DynamicSpec()], ids=lambda s: s.kind)
def test_relative_paths_work_and_nothing_lands_in_the_current_folder(spec, exported, digits, tmp_path, monkeypatch):
    import shutil

    (tmp_path / "models").mkdir()
    shutil.copyfile(exported["mlp-tiny"], tmp_path / "models" / "student.onnx")
    monkeypatch.chdir(tmp_path)  # the makers run inside a work folder: relative paths must still name these files
    path = make_variant(Path("models/student.onnx"), spec, Path("variants"), digits.x_train)
    assert (tmp_path / path).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "variants"]


def test_failures_name_the_variant_and_leave_nothing(digits, tmp_path):
    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"this is not protobuf")
    out = tmp_path / "out"
    with pytest.raises(StageError, match=r"variant int8-static-qdq-minmax of not-a-model\.onnx failed: \w+"):
        make_variant(bad, Int8StaticSpec(), out, digits.x_train)
    assert list(out.iterdir()) == []
    with pytest.raises(StageError, match="source file not found"):
        make_variant(tmp_path / "missing.onnx", Int8DynamicSpec(), out, digits.x_train)


def test_static_int8_without_calibration_samples_says_so(exported, digits, tmp_path):
    with pytest.raises(
        StageError, match=r"variant int8-static-qdq-minmax of cnn-tiny\.onnx: .*training split"
    ):
        make_variant(exported["cnn-tiny"], Int8StaticSpec(), tmp_path, digits.x_train[:0])
    assert list(tmp_path.iterdir()) == []
