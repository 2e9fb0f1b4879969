"""task: text end to end: a tiny random BERT teacher folder and a tiny CSV through ``kd2deploy run``; the
shipped student folder answers through optimum and through plain onnxruntime + tokenizers with the same label."""

from __future__ import annotations

import json

import numpy as np
import pytest

HF = "task: text needs the [hf] extra (pip install -c constraints.txt -e '.[hf]')"
pytest.importorskip("transformers", reason=HF, exc_type=ImportError)  # a broken install skips too
pytest.importorskip("optimum.onnxruntime", reason=HF, exc_type=ImportError)
pytest.importorskip("tokenizers", reason=HF, exc_type=ImportError)

from tests.hf_tiny import tiny_bert_folder, tiny_texts, write_csv  # noqa: E402
from tests.integration.test_cli import kd2deploy  # noqa: E402

PIPELINE = """\
name: tinytext
task: text
text:
  data: {path: data.csv, max_seq_len: 32}
  teacher: {model: teacher, train: {epochs: 8, lr: 3.0e-3, batch_size: 8}}
  student: {num_layers: 2}
  distill:
    terms: [{loss: hinton}, {loss: hidden, weight: 1.0}, {loss: attention, weight: 1.0}]
    train: {epochs: 8, lr: 3.0e-3, batch_size: 8}
  bench: {seq_lens: [32, 16], tokenizer_samples: 20}
benchmark: {batch_sizes: [1, 4], warmup_s: 0.01, warmup_runs: 2, min_duration_s: 0.05, min_runs: 10, rounds: 2}
energy: {window_s: 1.0, repeats: 1}
variants:
  variants: [{kind: int8-dynamic}, {kind: int8-static, calibration_samples: 24}, {kind: transformer-fusion}]
  apply_to: [student]
"""


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    tiny_bert_folder(tmp / "teacher", layers=4)
    write_csv(tmp / "data.csv", tiny_texts())
    (tmp / "p.yaml").write_text(PIPELINE)
    out = kd2deploy("run", str(tmp / "p.yaml"), "--out", str(tmp / "runs"), cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    # nothing lands in the working folder (onnxruntime's shape inference drops files into the cwd when it gives up)
    # (HOME is tmp too: libraries' caches under .cache are theirs)
    # (HOME is tmp too: libraries' caches and settings under .cache / .config are theirs)
    assert sorted(p.name for p in tmp.iterdir() if not p.name.startswith(".")) == ["data.csv", "p.yaml", "runs",
                                                                                  "teacher"]
    (run_dir,) = (tmp / "runs" / "tinytext").iterdir()
    return run_dir, json.loads((run_dir / "results.json").read_text()), out.stderr


def test_run_writes_models_report_and_results(text_run):
    run_dir, res, stderr = text_run
    assert "wall time:" in stderr
    for f in ("config.yaml", "pipeline.yaml", "run.log", "report.md", "report.html", "models/teacher/model.onnx",
              "models/student/model.onnx", "models/student/tokenizer.json", "models/teacher_hf/config.json",
              "checkpoints/teacher_hf.zip", "checkpoints/student_kd_seed0.pt",
              "checkpoints/student_scratch_seed0.pt", "ship/student/model.onnx", "ship/student/tokenizer.json",
              "ship/student/config.json", "ship/student/MODEL_CARD.md"):
        assert (run_dir / f).is_file(), f
    for name in res["export"]:  # student_scratch too, unless the scratch student is the one that ships
        assert (run_dir / "models" / name / "model.onnx").is_file(), name
    assert res["task"] == "text"
    assert res["models"]["teacher"]["fine_tuned"] and "only an encoder" in res["models"]["teacher"]["why"]
    assert res["data"]["labels"] == ["politics", "sport", "tech"]
    student = res["distill"]["student"]
    assert student["num_layers"] == 2 and student["layer_map"] == [1, 3] and student["init"] == "teacher-layers"
    assert res["distill"]["arms"] == ["kd", "scratch"] and res["distill"]["summary"]["scratch"]["n"] == 1
    for name in ("teacher", "student"):
        par = res["export"][name]["parity"]
        assert par["argmax_agreement"] == 1.0 and par["max_abs_diff"] < 1e-4
        assert res["export"][name]["exporter"].startswith("optimum")
    assert res["models"]["teacher"]["test_accuracy_torch"] > 0.5  # the tiny teacher learnt the topics
    labels = {(r["model"], r["batch_size"], r["seq_len"]) for r in res["benchmark"]["results_all"]}
    assert ("teacher", 4, 16) in labels and ("student.int8-dynamic-qint8", 1, 32) in labels
    assert ("student.fused-bert", 1, 32) in labels
    (static,) = [v for v in res["variants"]["student"]["variants"]
                 if v["label"] == "student.int8-static-qdq-minmax-n24"]
    calibrated = static["clipping"]["calibration"]
    assert calibrated == {"method": "minmax", "samples": 24, "from": "training split"}
    dynamic = res["variants"]["student"]["variants"][0]
    assert static["parity"]["n_samples"] == dynamic["parity"]["n_samples"] > 0  # judged on the same test feeds
    assert ("student.int8-static-qdq-minmax-n24", 1, 32) in labels  # token-id feeds calibrated and timed
    assert res["benchmark"]["tokenizer"]["p50_us"] > 0
    flops = {m: res["benchmark"]["models"][m]["flops_per_sample"] for m in ("teacher", "student")}
    assert flops["teacher"] > flops["student"] > 0  # FlopCounterMode at seq_len 32: 4 layers against 2
    for name in ("teacher", "student", "student.int8-dynamic-qint8"):  # real token feeds: no dynamic-axis failure
        mem = res["benchmark"]["models"][name]["memory"]
        assert "error" not in mem and mem["session_peak_bytes"] > 0 and mem["batch_size"] == 4, (name, mem)
    sel = res["variants"]["student"]["selection"]
    assert sel["shipped"] == res["ship"]["model"]
    assert {"teacher", "student", "teacher@torch-eager-cpu"} <= {r["model"] for r in res["benchmark"]["results"]}
    report = (run_dir / "report.md").read_text()
    for section in ("## Distillation", "## Latency", "## Compressed variants and the shipping guard", "## Energy",
                    "## Shipped model", "## Tokenisation and the shipped folder", "## Provenance"):
        assert section in report, section


def test_labels_saved_with_the_models(text_run):
    run_dir, _, _ = text_run
    for folder in ("models/student_hf", "models/student", "ship/student"):
        cfg = json.loads((run_dir / folder / "config.json").read_text())
        assert cfg["id2label"] == {"0": "politics", "1": "sport", "2": "tech"}, folder
        assert cfg["label2id"] == {"politics": 0, "sport": 1, "tech": 2}, folder


def test_shipped_folder_answers_through_optimum_and_plain_onnxruntime(text_run):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    run_dir, res, _ = text_run
    folder = run_dir / "ship" / "student"
    texts = ["the team scored a late goal to win the cup match", "the minister lost the vote in parliament"]

    model = ORTModelForSequenceClassification.from_pretrained(str(folder))
    hf_tok = AutoTokenizer.from_pretrained(str(folder))
    logits_opt = np.asarray(model(**hf_tok(texts, padding=True, return_tensors="np")).logits)
    labels_opt = [model.config.id2label[int(i)] for i in logits_opt.argmax(-1)]

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    id2label = json.loads((folder / "config.json").read_text())["id2label"]
    labels_plain = []
    for text in texts:  # one at a time: no padding, batch of 1, dynamic sequence length
        enc = tok.encode(text)
        arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        feeds = {i.name: np.asarray([arrays[i.name]], dtype=np.int64) for i in sess.get_inputs()}
        labels_plain.append(id2label[str(int(sess.run(None, feeds)[0].argmax(-1)[0]))])
    assert labels_opt == labels_plain
    assert res["ship"]["load_check"]["agree"] is True


def test_onnx_axes_are_dynamic(text_run):
    import onnx

    run_dir, _, _ = text_run
    m = onnx.load(str(run_dir / "models" / "student" / "model.onnx"), load_external_data=False)
    for inp in m.graph.input:
        dims = [d.dim_param for d in inp.type.tensor_type.shape.dim]
        assert all(dims), (inp.name, dims)  # both batch and sequence axes symbolic


def test_report_and_compare_work_on_a_text_run(text_run, tmp_path):
    run_dir, _, _ = text_run
    md = (run_dir / "report.md").read_text()
    again = kd2deploy("report", str(run_dir), "--format", "md", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run_dir / "report.md").read_text() == md  # results.json validates and re-renders the same report
    cmp = kd2deploy("compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp.md"), cwd=tmp_path)
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert "tinytext" in (tmp_path / "cmp.md").read_text()
