"""The label-efficiency study on a tiny pipeline: a teacher per fraction that saw only those labels, KD and the
controls per fraction, the plot and the table; and the shipped pipeline file validates."""

from __future__ import annotations

import json

from kd2deploy.config import load_config
from kd2deploy.distill.label_efficiency import label_efficiency, markdown
from tests.conftest import REPO, TINY_PIPELINE


def test_label_efficiency_on_a_tiny_pipeline(write_pipeline, tmp_path):
    p = write_pipeline(TINY_PIPELINE.replace("  controls: [scratch]\n",
                                             "  controls: [scratch, label_smoothing]\n  seeds: [0]\n"
                                             "  label_fractions: [1.0, 0.05]\n").replace("  seeds: [0, 1]\n", ""))
    cfg = load_config(p)
    rec = label_efficiency(cfg, tmp_path / "le")
    assert [r["fraction"] for r in rec["rows"]] == [0.05, 1.0]
    few, full = rec["rows"]
    assert few["n_labelled"] < 0.1 * few["n_train"] and full["n_labelled"] == full["n_train"]
    assert set(few["arms"]) == {"kd", "scratch", "label_smoothing"}
    # each fraction's teacher trained on that fraction's labels only
    t_few = json.loads((tmp_path / "le" / "labels_0.05").joinpath("..", "label_efficiency.json").read_text())
    assert t_few["rows"][0]["teacher_test_accuracy"] == few["teacher_test_accuracy"]
    assert few["teacher_test_accuracy"] < full["teacher_test_accuracy"]
    assert (tmp_path / "le" / "label_efficiency.png").stat().st_size > 5000
    table = markdown(rec)
    assert "| 5 % (" in table and "![label efficiency](label_efficiency.png)" in table


def test_shipped_label_efficiency_pipeline_validates():
    cfg = load_config(REPO / "pipelines" / "label-efficiency.yaml")
    assert cfg.distill.label_fractions == [0.01, 0.05, 0.1, 0.25, 1.0]
    assert cfg.distill.teacher_labels == "labelled"
