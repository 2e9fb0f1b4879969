"""A run with the distillation plug-ins wired in: DKD options, a MUNGE transfer set, a calibrated teacher, a
control with its own budget, the in-run search, convergence figures and the label-efficiency study."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import TINY_PIPELINE, cli_env

PLUGINS = TINY_PIPELINE.replace("student:\n  arch: mlp-tiny", "student:\n  arch: cnn-tiny").replace(
    "  controls: [scratch]\n",
    "  controls: [scratch, label_smoothing]\n  loss: dkd\n  options: {nontarget_weight: 2.0}\n"
    "  munge: {passes: 1}\n  calibrate_teacher: true\n  control_train: {label_smoothing: {epochs: 2}}\n"
    "  search: {enabled: true, trials: 1, budget_s: null, temperatures: [1, 4], seeds: [0]}\n"
    "  label_fractions: [0.1]\n") + "variants:\n  variants: []\n"


def test_run_with_plugins_search_convergence_and_label_efficiency(write_pipeline, tmp_path):
    p = write_pipeline(PLUGINS)
    out = subprocess.run([sys.executable, "-m", "kd2deploy", "run", str(p), "--out", str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900, env=cli_env(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    d = json.loads((run_dir / "results.json").read_text())["distill"]
    assert d["loss"] == "dkd" and d["options"] == {"nontarget_weight": 2.0}
    assert d["munge"]["n_transfer"] == 2 * d["labels"]["n_train"]
    assert d["teacher_calibration"]["temperature"] > 0
    report = (run_dir / "report.md").read_text()
    assert "Transfer set: MUNGE" in report and "Teacher calibrated: its logits divided by T =" in report
    # the search ran on validation, one study per family, and its choice is what trained
    fams = d["search"]["families"]
    assert set(fams) == {"kd", "label_smoothing"}  # scratch has nothing to choose: trained as written
    assert all(len([t for t in f["trials"] if t["state"] == "COMPLETE"]) == 1 for f in fams.values())
    assert d["temperature"] == fams["kd"]["best"]["params"]["temperature"]
    assert (run_dir / "search" / "study.db").is_file()
    # the label-smoothing control trained for its own 2 epochs, the others for 3
    curves = d["per_seed"][0]
    assert len(curves["label_smoothing"]["curve"]) == 2 and len(curves["kd"]["curve"]) == 3
    conv = d["convergence"]["arms"]
    assert set(conv) == {"kd", "scratch", "label_smoothing"}
    assert conv["kd"]["epochs"] == 3 and conv["kd"]["to_99pct_of_own_final"]["reached_in_seeds"] == 2
    le = d["label_efficiency"]
    assert [r["fraction"] for r in le["rows"]] == [0.1] and le["rows"][0]["n_labelled"] < 150
    assert "Convergence and smoothness" in report and "Label efficiency" in report
    assert "![label efficiency](label_efficiency/label_efficiency.png)" in report
    assert (run_dir / "label_efficiency" / "label_efficiency.png").is_file()
    assert "Settings searched on the validation split" in report
    assert 'alt="label efficiency"' in (run_dir / "report.html").read_text()
