"""Distillation through the CLI on tiny models: an ensemble teacher with few labels over seeds (run and sweep),
hint terms, and the divergence guard."""

from __future__ import annotations

import json

from tests.conftest import TINY_PIPELINE
from tests.integration.test_cli import kd2deploy

ENSEMBLE_FEW_LABELS = TINY_PIPELINE.replace(
    "  train: {epochs: 3, batch_size: 128, lr: 0.01}\nstudent:",
    "  train: {epochs: 3, batch_size: 128, lr: 0.01}\n  ensemble: [{seed: 1}, {arch: mlp-tiny, seed: 2}]\nstudent:",
).replace(
    "  controls: [scratch]\n",
    "  controls: [scratch, label_smoothing]\n  labelled_fraction: 0.1\n  teacher_labels: labelled\n",
)


def test_sweep_ensemble_with_few_labels_picks_on_validation(write_pipeline, tmp_path):
    p = write_pipeline(ENSEMBLE_FEW_LABELS)
    out = kd2deploy("sweep", str(p), "--temperature", "1,4", "--alpha", "0.5", "--out", str(tmp_path / "runs"),
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (tmp_path / "runs").glob("tiny-sweep/*/sweep.json")
    res = json.loads(path.read_text())
    assert set(res["arms"]) == {"scratch", "label_smoothing", "kd T=1 a=0.5", "kd T=4 a=0.5"}
    assert all(len(a["val"]) == len(a["test"]) == 2 for a in res["arms"].values())
    best = max(("kd T=1 a=0.5", "kd T=4 a=0.5"),
               key=lambda n: (sum(res["arms"][n]["val"]), -sum(res["arms"][n]["val_loss"])))
    assert res["best"] == best and "chosen on validation" in out.stdout
    assert res["teacher"]["arch"] == "ensemble(cnn-small, mlp-tiny)"
    bad = kd2deploy("sweep", str(p), "--temperature", "2,x", cwd=tmp_path)
    assert bad.returncode == 2 and "--temperature '2,x': expected comma-separated numbers" in bad.stderr


def test_run_records_members_labels_and_terms(write_pipeline, tmp_path):
    text = ENSEMBLE_FEW_LABELS.replace("student:\n  arch: mlp-tiny", "student:\n  arch: cnn-tiny").replace(
        "  labelled_fraction: 0.1\n",
        "  labelled_fraction: 0.1\n  terms:\n    - {loss: hinton}\n"
        "    - {loss: hint, weight: 0.1, student_layer: features.2, teacher_layer: features.2}\n")
    p = write_pipeline(text)
    out = kd2deploy("run", str(p), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    name = "results.json" if out.returncode == 0 else "results.partial.json"
    res = json.loads((run_dir / name).read_text())
    teacher = res["models"]["teacher"]
    assert [m["arch"] for m in teacher["members"]] == ["cnn-small", "mlp-tiny"]
    assert all(0 < m["test_accuracy_torch"] <= 1 for m in teacher["members"])
    assert teacher["trained_on"] == {"labels": "labelled", "n_labelled": res["distill"]["labels"]["n_labelled"],
                                     "n_train": res["data"]["n_train"]}
    d = res["distill"]
    assert d["labels"]["n_labelled"] < 0.15 * d["labels"]["n_train"]
    assert d["teacher"] == {"kind": "ensemble", "members": 2, "test_accuracy": teacher["test_accuracy_torch"],
                            "labels_seen": "labelled"}
    assert [t["loss"] for t in d["terms"]] == ["hinton", "hint"] and d["loss"] == "hinton+hint"
    assert set(d["summary"]) == {"kd", "scratch", "label_smoothing"} and len(d["per_seed"]) == 2
    for f in ("teacher_member0.pt", "teacher_member1.pt", "student_kd_seed0.pt"):
        assert (run_dir / "checkpoints" / f).is_file()
    assert res["export"]["teacher"]["parity"]["argmax_agreement"] == 1.0  # the ensemble exports as one module
    assert out.returncode == 0, out.stderr[-3000:]


def test_divergence_stops_with_the_arm_epoch_and_last_good_weights(write_pipeline, tmp_path):
    p = write_pipeline(TINY_PIPELINE.replace("  train: {epochs: 3, batch_size: 128, lr: 0.01}\nbenchmark:",
                                             "  train: {epochs: 3, batch_size: 128, lr: 1.0e+30, optimizer: sgd}\n"
                                             "benchmark:"))
    out = kd2deploy("run", str(p), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    msg = " ".join(out.stderr.split())
    assert "error: student kd/seed0: the training loss became" in msg and "in epoch 1" in msg, msg
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert (run_dir / "checkpoints" / "student_kd_seed0.last_good.pt").is_file()
    assert "checkpoints/student_kd_seed0.last_good.pt" in msg


def test_wrong_hint_layer_lists_the_valid_names_before_training(write_pipeline, tmp_path):
    p = write_pipeline(TINY_PIPELINE.replace(
        "  controls: [scratch]\n",
        "  controls: [scratch]\n  terms:\n    - {loss: hinton}\n"
        "    - {loss: hint, student_layer: net.9, teacher_layer: features.2}\n"))
    out = kd2deploy("run", str(p), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    msg = " ".join(out.stderr.split())
    assert ("error: distill.terms.1.student_layer: in mlp-tiny: unknown module 'net.9'; valid names: net, net.0, "
            "net.1, net.2, net.3") in msg, msg
    assert not list((tmp_path / "runs").glob("tiny/*/checkpoints/*.pt"))  # nothing trained before the error
