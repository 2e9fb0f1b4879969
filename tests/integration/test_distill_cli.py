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
    out = kd2deploy("sweep", str(p), "--sampler", "grid", "--temperature", "1,4", "--alpha", "0.5", "--trials", "2",
                    "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "runs" / "tiny-sweep" / "sweep.json").read_text())
    kd = res["families"]["kd"]
    assert sorted(t["params"]["temperature"] for t in kd["trials"]) == [1.0, 4.0]  # the grid, once each
    assert set(res["families"]) == {"kd", "scratch", "label_smoothing"}
    assert all(len(t["val_accuracy_per_seed"]) == 2 and len(t["curve"]) == 3 for t in kd["trials"])
    best = max(kd["trials"], key=lambda t: (t["value"], -t["number"]))
    assert kd["best"]["number"] == best["number"] and "chosen on validation" in out.stdout
    assert res["best_overrides"]["temperature"] == best["params"]["temperature"]
    assert "test" not in json.dumps(kd["trials"]) and res["test_split"] == "never read by the sweep"
    assert res["teacher"]["arch"] == "ensemble(cnn-small, mlp-tiny)"
    from kd2deploy.config import load_config

    chosen = load_config(res["best_pipeline"])  # the best settings as a pipeline file that validates
    assert chosen.distill.temperature == best["params"]["temperature"] and chosen.distill.labelled_fraction == 0.1
    assert chosen.distill.control_train["scratch"].epochs == 3
    assert (tmp_path / "runs" / "tiny-sweep" / "plots" / "study_kd_history.png").is_file()
    bad = kd2deploy("sweep", str(p), "--temperature", "2,x", cwd=tmp_path)
    assert bad.returncode == 2 and "--temperature '2,x': expected comma-separated numbers" in bad.stderr
    bad = kd2deploy("sweep", str(p), "--budget", "soon", cwd=tmp_path)
    assert bad.returncode == 2 and "--budget 'soon': expected a positive duration like 90s, 20m or 1h" in bad.stderr
    bad = kd2deploy("sweep", str(p), "--method", "hintn", cwd=tmp_path)
    assert bad.returncode == 2 and "--method 'hintn': unknown loss 'hintn'; valid names: dkd, hinton" in bad.stderr


SLOW_SWEEP = TINY_PIPELINE.replace("student:\n  arch: mlp-tiny", "student:\n  arch: cnn-tiny").replace(
    "  train: {epochs: 3, batch_size: 128, lr: 0.01}\nbenchmark:",
    "  train: {epochs: 3, batch_size: 32, lr: 0.01}\n  search:\n    temperatures: [1, 2, 4, 8]\n"
    "    alphas: [0.5, 0.9]\n    seeds: [0]\nbenchmark:")


def test_sweep_stopped_with_ctrl_c_continues_the_same_study(write_pipeline, tmp_path):
    """SIGINT once the first trial is stored; the same command again continues that study to its budget."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from tests.conftest import cli_env

    p = write_pipeline(SLOW_SWEEP)
    db = tmp_path / "runs" / "tiny-sweep" / "study.db"
    args = [sys.executable, "-m", "kd2deploy", "sweep", str(p), "--budget", "5m", "--trials", "3",
            "--out", str(tmp_path / "runs")]
    # SIGINT back to its default in the child: a shell that starts pytest in the background ignores it, and a
    # Python started with SIGINT ignored never raises KeyboardInterrupt
    proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def complete() -> int:
        if not db.is_file():
            return 0
        try:
            with sqlite3.connect(db) as con:
                return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        except sqlite3.Error:
            return 0

    deadline = time.time() + 240
    while complete() < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted: " + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to continue" in err
    first = json.loads((db.parent / "sweep.json").read_text())
    assert first["interrupted"] is True
    kept = [t["number"] for t in first["families"]["kd"]["trials"] if t["state"] == "COMPLETE"]
    assert kept
    again = subprocess.run(args, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    res = json.loads((db.parent / "sweep.json").read_text())
    kd = res["families"]["kd"]
    assert res["interrupted"] is False and kd["study"] == first["families"]["kd"]["study"]
    done = [t for t in kd["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(done) == 3 and {t["number"] for t in done} >= set(kept)  # the first run's trials are still there
    assert {f: len([t for t in v["trials"] if t["state"] in ("COMPLETE", "PRUNED")])
            for f, v in res["families"].items()} == {"kd": 3, "label_smoothing": 3, "scratch": 1}  # one point: once
    assert os.path.getsize(db) > 0


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
