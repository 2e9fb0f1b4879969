"""The text section of a pipeline file (task: text): defaults and errors that name the file, key and choices."""

from __future__ import annotations

import pytest

from kd2deploy.config import load_config
from kd2deploy.errors import ConfigError
from kd2deploy.tasks.hf_common import resolve_location
from kd2deploy.tasks.text.config import TextConfig


@pytest.fixture
def text_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "d.csv").write_text("text,label\\na,x\\nb,y\\n")
    return tmp_path


def _write(tmp_path, body: str):
    p = tmp_path / "p.yaml"
    p.write_text(body)
    return p


BASE = "task: text\ntext:\n  data: {path: d.csv}\n  teacher: {model: model}\n"


def test_defaults_and_paths_resolve_against_the_pipeline_folder(text_files):
    cfg = load_config(_write(text_files, BASE))
    t = cfg.text
    assert cfg.task == "text"
    assert t.data.path == str((text_files / "d.csv").resolve())
    assert t.data.max_seq_len == 128 and t.data.text_column == "text" and t.data.label_column == "label"
    assert t.student.num_layers == 2 and t.student.init == "teacher-layers"
    assert [x.loss for x in t.distill.terms] == ["hinton"] and t.teacher.fine_tune == "auto"
    assert [v.kind for v in cfg.variants.variants] == ["int8-dynamic", "transformer-fusion"]
    assert cfg.variants.apply_to == ["student"]


def test_tensor_task_stays_the_default(text_files):
    cfg = load_config(_write(text_files, "name: x\n"))
    assert cfg.task == "tensor" and cfg.text is None
    assert [v.kind for v in cfg.variants.variants] == ["int8-static"]


def test_text_task_needs_its_section(text_files):
    with pytest.raises(ConfigError, match="task 'text' needs a text section"):
        load_config(_write(text_files, "task: text\n"))
    with pytest.raises(ConfigError, match="a text section needs task: text"):
        load_config(_write(text_files, BASE.replace("task: text\n", "")))


def test_unknown_key_names_file_line_and_allowed(text_files):
    p = _write(text_files, BASE + "  student: {num_layer: 2}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:") and "text.student.num_layer" in msg and "num_layers" in msg


@pytest.mark.parametrize("snippet, needle", [
    ("  student: {init: copy}", "text.student.init"),
    ("  distill: {terms: [{loss: fitnet}]}", "text.distill.terms.0.loss"),
    ("  distill: {terms: [{loss: hidden}, {loss: hidden}]}", "listed twice"),
    ("  bench: {seq_lens: [256]}", "exceed data.max_seq_len"),
    ("  teacher: {model: model, fine_tune: maybe}", "text.teacher.fine_tune"),
])
def test_bad_values_name_the_field(text_files, snippet, needle):
    body = BASE if "teacher:" not in snippet else BASE.replace("  teacher: {model: model}\n", "")
    with pytest.raises(ConfigError, match=needle.replace("[", r"\\[")):
        load_config(_write(text_files, body + snippet + "\n"))


def test_missing_files_and_packages_are_named(text_files):
    with pytest.raises(ConfigError, match="text.data.path.*file not found.*nope.csv"):
        load_config(_write(text_files, BASE.replace("d.csv", "nope.csv")))
    with pytest.raises(ConfigError, match="package 'no_such_pkg_kd2' is not installed"):
        load_config(_write(text_files, BASE.replace("model}", "package:no_such_pkg_kd2/model}")))
    with pytest.raises(ValueError, match="not found inside package 'kd2deploy'"):
        resolve_location("package:kd2deploy/no/such/file")
    assert resolve_location("package:kd2deploy/tasks/text").is_dir()


def test_fp16_is_refused_for_text_and_static_int8_accepted(text_files):
    with pytest.raises(ConfigError, match="kind 'fp16' is not supported for task text.*allowed: int8-dynamic"):
        load_config(_write(text_files, BASE + "variants:\n  variants: [{kind: fp16}]\n"))
    cfg = load_config(_write(text_files, BASE + "variants:\n  variants: [{kind: int8-static}]\n"))
    assert [v.kind for v in cfg.variants.variants] == ["int8-static"]


def test_schema_holds_every_default():
    fields = TextConfig.model_fields
    assert fields["data"].is_required() and fields["teacher"].is_required()
    assert not fields["student"].is_required() and not fields["distill"].is_required()


def test_bad_data_file_errors_name_file_and_field(tmp_path):
    from kd2deploy.tasks.text.data import read_records

    csv_path = tmp_path / "d.csv"
    csv_path.write_text("body,label\nhello,a\n")
    with pytest.raises(ConfigError, match=r"d.csv: text.data.text_column 'text' is not a column; allowed: body"):
        read_records(csv_path, "auto", "text", "label")
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl:2: text.data.label_column 'label' missing"):
        read_records(jl, "auto", "text", "label")
    jl.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"d.jsonl:2: not valid JSON"):
        read_records(jl, "auto", "text", "label")
    with pytest.raises(ConfigError, match=r"cannot tell the format.*allowed: .csv, .jsonl"):
        read_records(tmp_path / "d.parquet", "auto", "text", "label")


def test_labels_sorted_and_splits_seeded_and_stratified(tmp_path):
    from kd2deploy.tasks.text.config import TextDataConfig
    from kd2deploy.tasks.text.data import load_text_data

    rows = [f'{{"text": "t{i}", "label": "{lab}"}}' for i in range(60) for lab in ("zeta", "alpha", "mid")]
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    cfg = TextDataConfig.model_validate({"path": str(tmp_path / "d.jsonl")})
    a, b = load_text_data(cfg, tmp_path, 0), load_text_data(cfg, tmp_path, 0)
    assert a.labels == ["alpha", "mid", "zeta"] and a.label2id == {"alpha": 0, "mid": 1, "zeta": 2}
    assert a.test[0] == b.test[0] and a.train[0] == b.train[0]
    import numpy as np

    assert np.bincount(a.test[1]).tolist() == [12, 12, 12]  # 20 % of 60 per label
    assert load_text_data(cfg, tmp_path, 1).test[0] != a.test[0]
    one = tmp_path / "one.csv"
    one.write_text("text,label\na,x\nb,x\n")
    with pytest.raises(ConfigError, match="has one label"):
        load_text_data(TextDataConfig.model_validate({"path": str(one)}), tmp_path, 0)


def test_sweep_refuses_text_runs(tmp_path, text_files):
    """`report` and `compare` work on text runs (tests/integration/test_text_pipeline.py); `sweep` is tensor-only."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    p = _write(text_files, BASE)
    out = subprocess.run([sys.executable, "-m", "kd2deploy", "sweep", str(p)], capture_output=True, text=True,
                         env=cli_env(tmp_path), timeout=120)
    assert out.returncode == 2 and "sweep is not built for task: text" in out.stderr


def test_derived_defaults_follow_the_values_they_depend_on(text_files):
    """A pipeline that shortens the sequences is not refused by the benchmark's default length."""
    cfg = load_config(_write(text_files, BASE.replace("{path: d.csv}", "{path: d.csv, max_seq_len: 64}")))
    assert cfg.text.bench.seq_lens == [64]
    assert load_config(_write(text_files, BASE)).text.bench.seq_lens == [128]


@pytest.mark.parametrize("body, message", [
    ("distill:\n  seeds: [1]\n", "distill: does not apply to task text; its settings live in the text section"),
    ("variants: {variants: [{kind: fp16}]}\n", "kind 'fp16' is not supported for task text"),
    ("benchmark: {backends: [tensorrt]}\n", "'tensorrt' is not supported for task text"),
])
def test_sections_and_capabilities_the_text_task_does_not_have_are_refused(text_files, body, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(text_files, BASE + body))
