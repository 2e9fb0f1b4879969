"""The search's pieces that need no training: the space from a pipeline, the options a kd trial stands for, the
best settings as pipeline changes (which must validate), and the resume budget accounting on a real study."""

from __future__ import annotations

from kd2deploy.config import load_config
from kd2deploy.distill import study
from kd2deploy.distill.sweep import write_best_pipeline
from tests.conftest import TINY_PIPELINE

SEARCH = TINY_PIPELINE.replace("  controls: [scratch]\n", "  controls: [scratch, label_smoothing]\n  search:\n"
                               "    methods: [hinton, dkd]\n    temperatures: [2, 4]\n    epochs: [3, 6]\n")


def test_space_defaults_to_the_pipelines_values(write_pipeline):
    d = load_config(write_pipeline(SEARCH)).distill
    space = study.default_space(d)
    assert space["kd"]["method"] == ["hinton", "dkd"] and space["kd"]["temperature"] == [2.0, 4.0]
    assert space["kd"]["alpha"] == [0.5, 0.9] and space["kd"]["munge_passes"] == [0]  # alpha unset: candidates
    assert space["kd"]["epochs"] == [3, 6] and space["label_smoothing"]["epochs"] == [3, 6]  # same budget
    assert space["label_smoothing"]["label_smoothing"] == [0.05, 0.1, 0.2] and set(space["scratch"]) == {"epochs", "lr"}
    assert study.grid_size(space["kd"]) == 16


def test_settings_the_file_sets_stay_fixed_and_unset_ones_are_searched(write_pipeline):
    fixed = TINY_PIPELINE.replace("  seeds: [0, 1]\n", "  seeds: [0, 1]\n  temperature: 3.0\n  alpha: 0.7\n"
                                  "  control_label_smoothing: 0.15\n")
    d = load_config(write_pipeline(fixed)).distill
    assert d.search.enabled and d.search.sampler == "auto"  # on by default
    space = study.default_space(d)
    assert space["kd"]["temperature"] == [3.0] and space["kd"]["alpha"] == [0.7]
    assert space["label_smoothing"]["label_smoothing"] == [0.15]
    assert all(study.grid_size(f) == 1 for f in space.values())  # nothing to search: no trial runs
    unset = study.default_space(load_config(write_pipeline(TINY_PIPELINE)).distill)
    assert unset["kd"]["temperature"] == [1.0, 2.0, 4.0] and unset["kd"]["alpha"] == [0.5, 0.9]
    assert study.resolve_sampler("auto", unset["kd"]) == "grid"  # 6 combinations: every one once
    assert study.resolve_sampler("auto", {"a": list(range(13))}) == "tpe"


def test_kd_options_keep_what_the_method_takes():
    p = {"method": "hinton", "hard_label_smoothing": 0.1, "standardize_logits": False, "nontarget_weight": 4.0}
    assert study.kd_options(p) == (("label_smoothing", 0.1),)
    assert study.kd_options({**p, "method": "dkd"}) == (("label_smoothing", 0.1), ("nontarget_weight", 4.0))
    assert study.kd_options({**p, "method": "mse-logits"}) == ()


def test_best_overrides_make_a_valid_pipeline(write_pipeline, tmp_path):
    src = write_pipeline(SEARCH)
    summary = {"families": {
        "kd": {"best": {"params": {"method": "dkd", "temperature": 4.0, "alpha": 0.9, "nontarget_weight": 2.0,
                                   "standardize_logits": True, "hard_label_smoothing": 0.0, "munge_passes": 1,
                                   "calibrate_teacher": False, "epochs": 6, "lr": 0.01}}},
        "label_smoothing": {"best": {"params": {"label_smoothing": 0.2, "epochs": 3, "lr": 0.003}}},
        "scratch": {"best": None}}}
    changes = study.best_overrides(summary)
    assert changes["options"] == {"standardize_logits": True, "nontarget_weight": 2.0}
    cfg = load_config(write_best_pipeline(src, changes, tmp_path / "best.yaml"))
    d = cfg.distill
    assert (d.loss, d.temperature, d.alpha, d.munge.passes, d.train.epochs) == ("dkd", 4.0, 0.9, 1, 6)
    assert d.control_label_smoothing == 0.2 and d.control_train["label_smoothing"].lr == 0.003
    assert "scratch" not in d.control_train and d.train.batch_size == 128  # the rest of the file is kept


def _tiny_problem():
    import torch

    from kd2deploy.config import DataConfig, TrainConfig
    from kd2deploy.data import load_data
    from kd2deploy.distill.train import to_tensors
    from kd2deploy.models import build_model
    from kd2deploy.models.nets import Standardized

    d = load_data(DataConfig(), seed=0)
    x_tr, y_tr, x_va, y_va = to_tensors(d.x_train[:128], d.y_train[:128], d.x_val[:64], d.y_val[:64])

    def build(arch="cnn-tiny"):
        return Standardized(build_model(arch, d.input_shape, 10, {}, "student"), float(x_tr.mean()),
                            float(x_tr.std()))

    torch.manual_seed(0)
    return study.Problem(build=build, x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va,
                         teacher=build("cnn-small").eval(), train=TrainConfig(epochs=2, batch_size=64, lr=0.01),
                         seeds=[0, 1])


def test_trials_count_over_reruns_and_the_grid_ends_the_study(tmp_path):
    """A stored study's finished trials count against the next run's trial budget; a grid stops when done."""
    import optuna

    space = {"kd": {"method": ["hinton"], "temperature": [1.0, 2.0, 4.0], "alpha": [0.5],
                    "nontarget_weight": [8.0], "standardize_logits": [False], "hard_label_smoothing": [0.0],
                    "munge_passes": [0], "calibrate_teacher": [False], "epochs": [2], "lr": [0.01]}}
    db, problem = tmp_path / "study.db", _tiny_problem()

    def finished(out):
        return [t for t in out["families"]["kd"]["trials"] if t["state"] in ("COMPLETE", "PRUNED")]

    out = study.search(problem, space, db, families=("kd",), n_trials=2, sampler="grid", study_prefix="t")
    assert len(finished(out)) == 2
    out = study.search(problem, space, db, families=("kd",), n_trials=2, sampler="grid", study_prefix="t")
    assert len(out["families"]["kd"]["trials"]) == 2  # 2 already finished: nothing more to do
    out = study.search(problem, space, db, families=("kd",), n_trials=5, sampler="grid", study_prefix="t")
    kd = out["families"]["kd"]
    assert sorted(t["params"]["temperature"] for t in kd["trials"]) == [1.0, 2.0, 4.0]  # the grid's 3 points
    assert all(len(t["val_accuracy_per_seed"]) == 2 and len(t["curve"]) == 2 for t in kd["trials"])
    assert [t["curve"][-1] for t in kd["trials"]] == [t["val_accuracy"] for t in kd["trials"]]
    assert kd["best"]["value"] == max(t["value"] for t in kd["trials"])
    stored = optuna.load_study(study_name="t-kd", storage=f"sqlite:///{db}")
    assert stored.user_attrs["space"]["temperature"] == [1.0, 2.0, 4.0]
