"""Datasets, model builders and the registries: real data, clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from kd2deploy.config import DataConfig
from kd2deploy.data import DATASETS, load_data
from kd2deploy.errors import ConfigError
from kd2deploy.models import MODELS, build_model
from kd2deploy.models.nets import count_params
from kd2deploy.registry import Registry


def test_digits_split_is_stratified_seeded_and_disjoint():
    a = load_data(DataConfig(), seed=0)
    b = load_data(DataConfig(), seed=0)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    assert np.array_equal(a.x_test, b.x_test)
    assert set(np.unique(a.y_test)) == set(range(10))
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return DataConfig(source="npz", path=p)


def _ok(n=40, k=3, shape=(5,)):
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n, *shape)).astype(np.float32), "y_train": np.arange(n) % k,
            "x_test": rng.normal(size=(n // 2, *shape)).astype(np.float32), "y_test": np.arange(n // 2) % k}


def test_npz_dataset_carves_validation_from_train(tmp_path):
    d = load_data(_npz(tmp_path, **_ok()), seed=0)
    assert d.num_classes == 3 and d.input_shape == (5,) and len(d.y_val) > 0
    assert len(d.y_train) + len(d.y_val) == 40


@pytest.mark.parametrize(
    "change, message",
    [
        ({"y_train": np.arange(39) % 3}, "x_train has 40 samples but y_train has 39"),
        ({"y_train": (np.arange(40) % 3).astype(np.float32)}, "y_train has dtype float32; expected integer"),
        ({"x_test": np.array(["a"] * 20)}, "x_test has dtype <U1"),
        ({"x_test": np.zeros((0, 5), np.float32), "y_test": np.zeros(0, np.int64)}, "x_test is empty"),
        ({"x_val": np.zeros((3, 5), np.float32)}, "only one of x_val / y_val"),
    ],
)
def test_npz_bad_arrays_are_named(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_data(_npz(tmp_path, **{**_ok(), **change}), seed=0)


def test_npz_missing_arrays_and_corrupt_file(tmp_path):
    arrays = _ok()
    del arrays["y_test"]
    with pytest.raises(ConfigError, match="lacks array"):
        load_data(_npz(tmp_path, **arrays), seed=0)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a readable .npz"):
        load_data(DataConfig(source="npz", path=bad), seed=0)


def test_npz_nan_inputs_are_rejected(tmp_path):
    arrays = _ok()
    arrays["x_train"][3, 1] = np.nan
    with pytest.raises(ConfigError, match="NaN or infinite"):
        load_data(_npz(tmp_path, **arrays), seed=0)


def test_zoo_sizes_keep_student_20x_smaller_than_teacher():
    teacher = count_params(build_model("cnn-large", (1, 8, 8), 10, {}, "teacher"))
    student = count_params(build_model("cnn-tiny", (1, 8, 8), 10, {}, "student"))
    assert teacher / student >= 20


def test_zoo_rejects_bad_kwargs_and_shapes():
    with pytest.raises(ConfigError, match=r"student.kwargs: the builder of 'cnn-tiny' rejected"):
        build_model("cnn-tiny", (1, 8, 8), 10, {"depth": 3}, "student")
    with pytest.raises(ConfigError, match=r"student.arch 'cnn-tiny': a CNN needs inputs shaped"):
        build_model("cnn-tiny", (64,), 10, {}, "student")


def test_user_model_file(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch\n\ndef build(input_shape, num_classes, width=4):\n"
                 "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))\n")
    model = build_model(f"{f}:build", (1, 8, 8), 10, {}, "student")
    assert count_params(model) == 650
    with pytest.raises(ConfigError, match="no function 'make'; callables in the file: build"):
        build_model(f"{f}:make", (1, 8, 8), 10, {}, "student")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="importing the model file failed: RuntimeError: boom"):
        build_model(f"{tmp_path / 'broken.py'}:build", (1, 8, 8), 10, {}, "student")


def test_registry_is_loud():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)
    with pytest.raises(ConfigError, match="unknown thing 'b'; valid names: a"):
        reg.get("b")
    assert "sklearn-digits" in DATASETS and "cnn-tiny" in MODELS


def test_teacher_checkpoint_errors(tmp_path):
    import torch

    from kd2deploy.tasks.tensor.models import load_checkpoint as _load_checkpoint

    model = build_model("cnn-small", (1, 8, 8), 10, {}, "teacher")
    good = tmp_path / "t.pt"
    torch.save(model.state_dict(), good)
    _load_checkpoint(build_model("cnn-small", (1, 8, 8), 10, {}, "teacher"), good)
    with pytest.raises(ConfigError, match="does not fit teacher.arch"):
        _load_checkpoint(build_model("cnn-small", (1, 8, 8), 7, {}, "teacher"), good)
    corrupt = tmp_path / "c.pt"
    corrupt.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ConfigError, match="not a readable PyTorch state_dict"):
        _load_checkpoint(model, corrupt)
