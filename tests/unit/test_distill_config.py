"""The distillation keys of the schema: ensembles, few labels, weighted/hint terms, transfer options — defaults,
and one-line located errors."""

from __future__ import annotations

import pytest

from kd2deploy.config import PipelineConfig, load_config
from kd2deploy.errors import ConfigError


def _error(write_pipeline, text: str) -> str:
    p = write_pipeline(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    return str(e.value).replace(str(p), "P")


def test_distill_defaults_keep_the_plain_setting():
    cfg = PipelineConfig()
    d = cfg.distill
    assert d.terms == [] and d.labelled_fraction == 1.0 and d.teacher_labels == "all"
    assert d.transfer.shift_px == 0 and d.transfer.mixup_alpha == 0.0
    assert cfg.teacher.ensemble == []
    (member,) = cfg.teacher.members(7)
    assert member["arch"] == "cnn-large" and member["seed"] == 7 and member["train"].epochs == 60


def test_ensemble_members_inherit_the_teacher_section(write_pipeline):
    cfg = load_config(write_pipeline(
        "seed: 3\nteacher:\n  arch: cnn-small\n  train: {epochs: 5}\n"
        "  ensemble: [{}, {seed: 9}, {arch: mlp, train: {epochs: 2}}]\n"))
    members = cfg.teacher.members(cfg.seed)
    assert [(m["arch"], m["seed"], m["train"].epochs) for m in members] == [
        ("cnn-small", 3, 5), ("cnn-small", 9, 5), ("mlp", 5, 2)]


@pytest.mark.parametrize(("text", "message"), [
    ("teacher:\n  ensemble: [{seed: 1}]\n",
     "P:2:13 teacher.ensemble: an ensemble needs at least two members"),
    ("teacher:\n  ensemble: [{seed: 1}, {arch: resnet9}]\n",
     "P:2:32 teacher.ensemble.1.arch: unknown model 'resnet9'; valid names: cnn-large"),
    ("teacher:\n  ensemble: [{seed: 1}, {sede: 2}]\n",
     "P:2:26 teacher.ensemble.1.sede: unknown key 'sede' (did you mean 'seed'?)"),
    ("distill:\n  labelled_fraction: 1.5\n",
     "P:2:22 distill.labelled_fraction: Input should be less than or equal to 1"),
    ("distill:\n  labelled_fraction: 0\n",
     "P:2:3 distill: labelled_fraction 0 leaves the controls no labels to learn from; set controls: []"),
    ("distill:\n  controls: []\n  labelled_fraction: 0\n  teacher_labels: labelled\n",
     "P:2:3 distill: teacher_labels 'labelled' with labelled_fraction 0 leaves the teacher no labels"),
    ("distill:\n  teacher_labels: some\n",
     "P:2:19 distill.teacher_labels: 'some' is not allowed; allowed: 'all' or 'labelled'"),
    ("distill:\n  terms:\n    - {loss: hint, weight: 0.1, student_layer: features.2}\n",
     "P:3:7 distill.terms.0: a hint term needs student_layer and teacher_layer (module names)"),
    ("distill:\n  terms:\n    - {loss: hintn}\n",
     "P:3:14 distill.terms.0.loss: unknown loss 'hintn'; valid names: ce, hint, hinton, mse-logits"),
    ("distill:\n  terms:\n    - {loss: hinton, student_layer: features.2}\n",
     "P:3:7 distill.terms.0: student_layer / teacher_layer belong to hint terms, not 'hinton'"),
    ("distill:\n  transfer: {shift_px: -1}\n",
     "P:2:24 distill.transfer.shift_px: Input should be greater than or equal to 0"),
])
def test_bad_distill_values_give_one_located_line(write_pipeline, text, message):
    assert _error(write_pipeline, text).startswith(message)


def test_checkpoint_is_per_member(write_pipeline, tmp_path):
    (tmp_path / "t.pt").write_bytes(b"x")
    msg = _error(write_pipeline, "teacher:\n  checkpoint: t.pt\n  ensemble: [{seed: 1}, {seed: 2}]\n")
    assert "teacher.checkpoint is for a single teacher; give each ensemble member its checkpoint" in msg


def test_terms_resolve_against_the_single_term_keys(write_pipeline):
    from kd2deploy.tasks.tensor.train import arms_of, kd_terms

    cfg = load_config(write_pipeline(
        "distill:\n  temperature: 3\n  alpha: 0.7\n  seeds: [4]\n  terms:\n    - {loss: hinton}\n"
        "    - {loss: mse-logits, weight: 0.5, alpha: 1}\n"
        "    - {loss: hint, weight: 0.1, student_layer: features.2, teacher_layer: features.5}\n"))
    assert kd_terms(cfg.distill) == [
        {"loss": "hinton", "weight": 1.0, "temperature": 3.0, "alpha": 0.7},
        {"loss": "mse-logits", "weight": 0.5, "temperature": 3.0, "alpha": 1.0},
        {"loss": "hint", "weight": 0.1, "student_layer": "features.2", "teacher_layer": "features.5"},
    ]
    kd, scratch = arms_of(cfg.distill)
    assert kd.loss == "hinton" and len(kd.terms) == 3 and kd.needs_teacher and not scratch.needs_teacher
    plain = load_config(write_pipeline("distill:\n  terms: [{loss: hinton, temperature: 4}]\n", "q.yaml"))
    (kd, _) = arms_of(plain.distill)
    assert (kd.loss, kd.temperature, kd.alpha, kd.terms) == ("hinton", 4.0, 0.5, ())  # the batched fast path


def test_student_label_smoothing_is_refused_not_ignored(write_pipeline):
    """distill.train.label_smoothing used to be accepted and ignored (every arm passes its own); now an error.
    The teacher's label_smoothing is honoured by its training and stays."""
    msg = _error(write_pipeline, "distill:\n  train:\n    label_smoothing: 0.1\n")
    assert msg.startswith("P:3:5 distill.train.label_smoothing: unknown key 'label_smoothing'")
    cfg = load_config(write_pipeline("teacher:\n  train: {label_smoothing: 0.1}\n"))
    assert cfg.teacher.train.label_smoothing == 0.1
    assert "label_smoothing" not in PipelineConfig().resolved()["distill"]["train"]
