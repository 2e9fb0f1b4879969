"""causal-lm data (formats, splits, packing, prompts), models (teacher checks, student from teacher layers) and
config: real tiny tokenizers and models built here, and the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from kd2deploy.errors import ConfigError
from kd2deploy.tasks.causal_lm import data as D
from kd2deploy.tasks.causal_lm import models as M
from kd2deploy.tasks.causal_lm.config import CausalLMConfig, LMStudentConfig
from tests.lm_tiny import tiny_docs, tiny_gpt2_folder, tiny_llama_folder, tiny_tokenizer, write_pairs, write_text_folder


def test_formats_are_detected_and_read(tmp_path):
    docs = tiny_docs(6)
    folder = write_text_folder(tmp_path / "c", docs)
    got, fmt = D.read_documents(folder, "auto")
    assert fmt == "text" and [d.text for d in got] == docs
    (tmp_path / "one.txt").write_text("\n\n".join(docs[:3]))
    assert [d.text for d in D.read_documents(tmp_path / "one.txt", "auto")[0]] == docs[:3]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    assert len(D.read_documents(tmp_path / "t.jsonl", "auto", text_field="body")[0]) == 6
    got, fmt = D.read_documents(write_pairs(tmp_path / "p.jsonl", docs), "auto")
    assert fmt == "pairs" and got[0].is_pair and got[0].prompt == " ".join(docs[0].split()[:8])


def test_bad_jsonl_names_line_and_field(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"t.jsonl:2: causal_lm.data.text_field 'text' missing; the line has body"):
        D.read_documents(p, "jsonl")
    p.write_text("{not json\n")
    with pytest.raises(ConfigError, match=r"t.jsonl:1: not valid JSON"):
        D.read_documents(p, "jsonl")


def test_split_is_seeded_disjoint_and_packing_is_exact(tmp_path):
    docs = [D.Document(t) for t in tiny_docs(30)]
    a = D.split_documents(docs, 0.2, 0.2, seed=3)
    b = D.split_documents(docs, 0.2, 0.2, seed=3)
    c = D.split_documents(docs, 0.2, 0.2, seed=4)
    assert [d.text for d in a[0]] == [d.text for d in b[0]] and [d.text for d in a[2]] != [d.text for d in c[2]]
    texts = [{d.text for d in s} for s in a]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and sum(map(len, texts)) == 30
    tok = tiny_tokenizer(tmp_path / "tok")
    ids = D.pack(tok, a[0], 16)
    stream = [i for d in a[0] for i in tok(d.text)["input_ids"] + [tok.eos_token_id]]
    assert ids.shape[1] == 16 and ids.flatten().tolist() == stream[: ids.numel()]
    assert D.pack(tok, a[0], 16, max_sequences=3).shape == (3, 16)
    with pytest.raises(ConfigError, match="fewer than one sequence of max_seq_len 100000"):
        D.pack(tok, a[0][:1], 100000)


def test_held_prompts_and_chat_template(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    docs = [D.Document(t) for t in tiny_docs(5)]
    prompts = D.held_prompts(tok, docs, 3, 8, 6)
    assert len(prompts) == 3 and all(len(p.ids) == 8 for p in prompts)
    ids = tok(docs[0].text, add_special_tokens=False)["input_ids"]
    assert prompts[0].reference == tok.decode(ids[8:14])
    pairs = [D.Document("a response", prompt="a question")]
    with pytest.raises(ConfigError, match="needs a chat template but the teacher's tokenizer has none"):
        D.check_chat_template(tok, pairs, True)
    D.check_chat_template(tok, pairs, False)
    chat = tiny_tokenizer(tmp_path / "chat", chat_template=True)
    D.check_chat_template(chat, pairs, True)
    got = D.prompt_ids(chat, "a question", True)
    assert chat.decode(got).startswith("<|user|>a question<|end|><|assistant|>")


def test_lm_layer_map():
    assert M.lm_layer_map(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert M.lm_layer_map(4, 2) == [0, 3] and M.lm_layer_map(4, 1) == [3] and M.lm_layer_map(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError):
        M.lm_layer_map(2, 3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_student_copies_teacher_layers(tmp_path, family):
    folder = (tiny_llama_folder if family == "llama" else tiny_gpt2_folder)(tmp_path / "t")
    teacher, facts = M.load_teacher(folder)
    assert facts["layers"] == 4 and facts["context"] == 128
    student, info = M.build_student(teacher, LMStudentConfig(num_layers=2))
    assert info["init_from_teacher_layers"] == [0, 3] and info["layers"] == 2
    prefix, t_layers = M.decoder_layers(teacher)
    _, s_layers = M.decoder_layers(student)
    for j, t in enumerate([0, 3]):
        for (ka, a), (kb, b) in zip(s_layers[j].state_dict().items(), t_layers[t].state_dict().items(), strict=True):
            assert ka == kb and torch.equal(a, b)
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    narrow, info = M.build_student(teacher, LMStudentConfig(num_layers=2, hidden_size=16, init="random"))
    assert info["hidden_size"] == 16 and narrow(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == \
        teacher.config.vocab_size
    with pytest.raises(ConfigError, match="needs the teacher's widths"):
        M.build_student(teacher, LMStudentConfig(num_layers=2, hidden_size=16))
    with pytest.raises(ConfigError, match="exceeds the teacher's 4 layers"):
        M.build_student(teacher, LMStudentConfig(num_layers=5))


def test_teacher_errors_are_one_line(tmp_path):
    from tests.hf_tiny import tiny_bert_folder

    bert = tiny_bert_folder(tmp_path / "bert")
    with pytest.raises(ConfigError, match=r"not a causal language model \(model_type 'bert'") as e:
        M.load_teacher(bert)
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        M.load_teacher(tmp_path / "empty")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ConfigError, match="cannot read this GGUF file") as e:
        M.load_teacher(bad)
    assert "\n" not in str(e.value)
    llama, _ = M.load_teacher(tiny_llama_folder(tmp_path / "l"))
    with pytest.raises(ConfigError, match="max_seq_len 256 exceeds the model's context of 128 tokens"):
        M.check_context(llama.config, 256)


def test_config_defaults_and_errors(tmp_path):
    folder = write_text_folder(tmp_path / "c", tiny_docs(3))
    cfg = CausalLMConfig.model_validate({"data": {"path": str(folder)}, "teacher": {"model": str(folder)}})
    assert cfg.distill.seeds == [0, 1, 2] and cfg.distill.loss == "forward_kl" and cfg.student.init == "teacher-layers"
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CausalLMConfig.model_validate({"data": {"path": str(folder), "max_len": 3}, "teacher": {"model": str(folder)}})
    with pytest.raises(ValidationError, match="exceed data.max_seq_len 32"):
        CausalLMConfig.model_validate({"data": {"path": str(folder), "max_seq_len": 32},
                                       "teacher": {"model": str(folder)}})
    with pytest.raises(ValidationError, match="file not found"):
        CausalLMConfig.model_validate({"data": {"path": str(tmp_path / "nope")}, "teacher": {"model": str(folder)}})


def test_sequence_level_transfer_set_is_generated_once(tmp_path):
    """teacher-generated: the teacher's greedy responses, stored as JSONL once; a second call reads them back."""
    from kd2deploy.tasks.causal_lm.evaluate import greedy

    folder = tiny_llama_folder(tmp_path / "t", chat_template=True)
    teacher, _ = M.load_teacher(folder)
    tok = M.load_tokenizer(folder)
    docs = [D.Document(t.split(" ", 8)[-1], prompt=" ".join(t.split()[:8])) for t in tiny_docs(3)]
    prompts = D.transfer_prompts(tok, docs, 8, chat_template=True)
    assert tok.decode(prompts[0]).startswith("<|user|>")
    got, rec = D.teacher_generated(teacher, tok, prompts, 5, tmp_path / "cache", "k1")
    assert not rec["reused"] and len(got) == 3
    want = tok.decode(greedy(teacher, prompts[0], 5, tok.eos_token_id), skip_special_tokens=True)
    assert got[0].text == tok.decode(prompts[0]) + want
    again, rec2 = D.teacher_generated(None, tok, prompts, 5, tmp_path / "cache", "k1")  # no teacher needed now
    assert rec2["reused"] and [d.text for d in again] == [d.text for d in got]
    ids = D.pack(tok, got, 8, chat_template=False)
    assert ids.shape[1] == 8


def test_int4_block_and_shared_variants_are_checked(tmp_path):
    import yaml

    from kd2deploy.config import load_config

    folder = write_text_folder(tmp_path / "c", tiny_docs(3))
    section = {"data": {"path": str(folder)}, "teacher": {"model": str(folder)}}
    with pytest.raises(ValidationError, match="48 is not a power of two; allowed: 16, 32, 64, 128, 256"):
        CausalLMConfig.model_validate({**section, "export": {"int4_block_size": 48}})
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"version": 1, "name": "x", "task": "causal-lm", "causal_lm": section,
                                        "variants": {"variants": [{"kind": "int8-dynamic"}]}}))
    with pytest.raises(ConfigError, match=r"variants: kind 'int8-dynamic' is not supported for task causal-lm "
                                          r"\(causal-lm makes its own variants: causal_lm.export.int8_dynamic"):
        load_config(pipeline, [])
