"""Student construction from a teacher of the same family (kd2deploy/tasks/text/models.py), on tiny random BERTs."""

from __future__ import annotations

import pytest

HF = "task: text needs the [hf] extra (pip install -c constraints.txt -e '.[hf]')"
pytest.importorskip("transformers", reason=HF, exc_type=ImportError)  # a broken install skips too

import torch  # noqa: E402

from kd2deploy.errors import ConfigError  # noqa: E402
from kd2deploy.tasks.text.config import TextStudentConfig  # noqa: E402
from kd2deploy.tasks.text.models import build_student, encoder_layers, load_teacher  # noqa: E402
from tests.hf_tiny import tiny_bert_folder  # noqa: E402


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tiny_bert_folder(tmp_path_factory.mktemp("t") / "bert", layers=4, hidden=32, heads=2)
    model, tune, why = load_teacher(folder, ["a", "b", "c"], "auto")
    assert tune and "only an encoder" in why
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    return model


def test_teacher_layers_init_copies_the_mapped_layers(teacher):
    student, info = build_student(teacher, TextStudentConfig(num_layers=2))
    assert info["layer_map"] == [1, 3] and student.config.num_hidden_layers == 2
    _, t_layers = encoder_layers(teacher)
    _, s_layers = encoder_layers(student)
    for j, t in enumerate(info["layer_map"]):
        for (name, p), (_, q) in zip(s_layers[j].named_parameters(), t_layers[t].named_parameters(), strict=True):
            assert torch.equal(p, q), name
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert info["params"] < sum(p.numel() for p in teacher.parameters())


def test_narrower_student_needs_random_init(teacher):
    with pytest.raises(ConfigError, match="teacher-layers.*needs the teacher's widths.*init: random"):
        build_student(teacher, TextStudentConfig(num_layers=2, hidden_size=16))
    student, info = build_student(teacher, TextStudentConfig(num_layers=2, hidden_size=16, init="random"))
    assert student.config.hidden_size == 16 and student.config.intermediate_size == 64
    assert info["init"] == "random"


def test_student_cannot_be_deeper_than_teacher(teacher):
    with pytest.raises(ConfigError, match="exceeds the teacher's 4 layers; allowed: 1..4"):
        build_student(teacher, TextStudentConfig(num_layers=5))


def test_distil_runs_every_term_with_a_projection(teacher):
    """One short epoch with hinton + hidden (projected, narrower student) + attention: loss finite, weights move."""
    from transformers import AutoTokenizer

    from kd2deploy.tasks.text.config import TextDistillConfig
    from kd2deploy.tasks.text.train import Encoded, distil
    from tests.hf_tiny import tiny_texts

    folder = teacher.name_or_path
    tok = AutoTokenizer.from_pretrained(folder)
    rows = tiny_texts(6)
    labels = {"politics": 0, "sport": 1, "tech": 2}
    import numpy as np

    data = Encoded(tok, [t for t, _ in rows], np.array([labels[lab] for _, lab in rows]), 32)
    student, info = build_student(teacher, TextStudentConfig(num_layers=2, hidden_size=16, init="random"))
    before = student.classifier.weight.detach().clone()
    cfg = TextDistillConfig.model_validate({"terms": [{"loss": "hinton"}, {"loss": "hidden"}, {"loss": "attention"}],
                                            "train": {"epochs": 1, "batch_size": 6, "lr": 1e-3}})
    student, history = distil(student, teacher, data, data, cfg, info["layer_map"], seed=0)
    assert np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
    assert not torch.equal(before, student.classifier.weight)


def test_frozen_word_embeddings_stay_fixed_while_the_rest_trains(teacher):
    import numpy as np
    from transformers import AutoTokenizer

    from kd2deploy.tasks.text.config import TextTrainConfig
    from kd2deploy.tasks.text.train import Encoded, fine_tune
    from tests.hf_tiny import tiny_texts

    tok = AutoTokenizer.from_pretrained(teacher.name_or_path)
    rows = tiny_texts(4)
    labels = {"politics": 0, "sport": 1, "tech": 2}
    data = Encoded(tok, [t for t, _ in rows], np.array([labels[lab] for _, lab in rows]), 16)
    student, _ = build_student(teacher, TextStudentConfig(num_layers=2))
    emb = student.get_input_embeddings().weight.detach().clone()
    layer = student.bert.encoder.layer[0].output.dense.weight.detach().clone()
    cfg = TextTrainConfig(epochs=1, batch_size=4, lr=1e-2, freeze_word_embeddings=True)
    student, _ = fine_tune(student, data, data, cfg, seed=0)
    assert torch.equal(student.get_input_embeddings().weight, emb)
    assert not torch.equal(student.bert.encoder.layer[0].output.dense.weight, layer)
