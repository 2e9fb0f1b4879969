"""The verdict about ship/student.onnx: decisions from intervals, never from a handful of samples; the shipped
student chosen among KD and the controls on validation only."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from kd2deploy.report.verdict import INCONCLUSIVE, NO_SHIP, SHIP, build_headline, decide
from kd2deploy.ship.student import choose_student


def _correct(n: int, wrong: int, flip_from: int = 0) -> np.ndarray:
    c = np.ones(n, bool)
    c[flip_from:flip_from + wrong] = False
    return c


def _results(ship_acc: float, teacher_acc: float, n: int = 360) -> dict:
    return {
        "pipeline": {"resolved": {"report": {"max_accuracy_drop_pp": 1.0}, "ship": {"batch_size": 1}}},
        "data": {"n_test": n},
        "export": {"teacher": {"parity": {"accuracy_onnx": teacher_acc, "n_samples": n}},
                   "student": {"parity": {"accuracy_onnx": ship_acc, "n_samples": n}}},
        "distill": {"shipped_seed": 0, "shipped_arm": "kd", "arms": ["kd"], "per_seed": []},
        "headline": {"speedups": {"teacher": {"1": {"batch_size": 1, "ratio_p50": 4.0, "ci95": [3.8, 4.2]}},
                                  "teacher_best": {}}},
    }


def test_a_drop_that_the_test_split_cannot_resolve_is_inconclusive_with_the_samples_needed():
    """Teacher wrong on 2, student on 7 of 360 (-1.39 pp, five images): the old rule said "do not ship"; the
    paired interval straddles the allowed -1 pp, so the verdict says how many samples would decide."""
    n = 360
    teacher = _correct(n, 2)
    student = _correct(n, 7)
    res = _results(student.mean(), teacher.mean())
    h = build_headline(res, correct={"student": student, "teacher": teacher})
    v = h["verdict"]
    assert h["accuracy_delta_pp"] == pytest.approx(-5 / 3.6)
    assert v["decision"] == INCONCLUSIVE and not v["ship"]
    (why,) = [r for r in v["reasons"] if "cannot resolve" in r]
    assert "360 test samples cannot resolve a 1 pp drop; about " in why
    need = int(why.split("about ")[1].split(" would")[0].replace(",", ""))
    assert need > 360
    lo, hi = h["paired_vs_teacher"]["ci95"]
    assert lo < -0.01 < hi


def test_resolved_drop_is_do_not_ship_and_resolved_keep_is_ship():
    n = 2000
    teacher = _correct(n, 10)
    bad = _correct(n, 90)  # -4 pp, on 80 more samples: resolved beyond -1 pp
    v = build_headline(_results(bad.mean(), teacher.mean(), n), correct={"student": bad, "teacher": teacher})
    assert v["verdict"]["decision"] == NO_SHIP and "beyond the allowed 1 pp drop" in v["verdict"]["text"]
    good = _correct(n, 11)
    h = build_headline(_results(good.mean(), teacher.mean(), n), correct={"student": good, "teacher": teacher})
    assert h["verdict"]["decision"] == SHIP and h["verdict"]["title"] == "Ship ship/student.onnx"
    assert h["text"].startswith("ship/student.onnx (student, kd seed 0): 4.0x faster than the FP32 teacher")


def test_speed_under_the_aa_floor_is_not_faster():
    h = {"paired_vs_teacher": {"diff": 0.0, "ci95": [-0.002, 0.002], "n": 5000, "discordance": 0.001},
         "speedups": {"teacher": {"1": {"batch_size": 1, "ratio_p50": 1.2, "ci95": [1.1, 1.3], "aa_floor": 1.15}}}}
    v = decide(h, 1.0, 1, 5000)
    assert v["decision"] == INCONCLUSIVE and "A/A noise floor" in v["text"]
    h["speedups"]["teacher"]["1"]["ci95"] = [0.7, 0.9]
    assert decide(h, 1.0, 1, 5000)["decision"] == NO_SHIP


def test_the_headline_is_about_the_shipped_variant():
    """When the guard ships student.int8, accuracy and comparisons are the variant's, not the FP32 student's."""
    n = 360
    res = _results(0.99, 0.995, n)
    res["variants"] = {"student": {"variants": [{"label": "student.int8", "accuracy": 0.98}],
                                   "selection": {"shipped": "student.int8"}, "candidates": []},
                       "teacher": {"variants": [{"label": "teacher.int8", "accuracy": 0.995}],
                                   "selection": {"shipped": "teacher.int8"}, "candidates": []}}
    h = build_headline(res)
    assert h["shipped"]["label"] == "student.int8" and h["shipped"]["variant"] == "int8"
    assert h["student_accuracy"] == 0.98 and h["accuracy"]["shipped"]["label"] == "student.int8"
    assert h["teacher_best"] == "teacher.int8" and h["accuracy"]["teacher_best"]["accuracy"] == 0.995
    assert h["accuracy"]["shipped"]["ci95"][0] < 0.98 < h["accuracy"]["shipped"]["ci95"][1]


def _per_seed(val: dict[str, list[float]], test: dict[str, list[float]]) -> dict:
    return {s: {a: {"val_accuracy": val[a][i], "test_accuracy": test[a][i]} for a in val}
            for i, s in enumerate([0, 1, 2])}


def test_a_control_that_beats_kd_on_validation_ships():
    val = {"kd": [0.97, 0.975, 0.97], "scratch": [0.95, 0.96, 0.955], "label_smoothing": [0.98, 0.985, 0.99]}
    test = {"kd": [0.99, 0.99, 0.99], "scratch": [0.9, 0.9, 0.9], "label_smoothing": [0.9, 0.9, 0.9]}
    choice = choose_student(_per_seed(val, test), [0, 1, 2])
    assert (choice["arm"], choice["seed"]) == ("label_smoothing", 2)
    assert "test split is not read" in choice["reason"]


def test_changing_test_accuracies_changes_no_choice():
    """Test labels changed (here: every test accuracy scrambled) leave the shipped arm and seed alone."""
    rng = np.random.default_rng(0)
    val = {"kd": [0.97, 0.98, 0.975], "scratch": [0.96, 0.95, 0.955], "label_smoothing": [0.965, 0.97, 0.96]}
    test = {a: list(rng.random(3)) for a in val}
    first = choose_student(_per_seed(val, test), [0, 1, 2])
    for _ in range(5):
        scrambled = {a: list(rng.random(3)) for a in val}
        again = choose_student(_per_seed(val, scrambled), [0, 1, 2])
        assert (again["arm"], again["seed"]) == (first["arm"], first["seed"]) == ("kd", 1)


def test_ties_go_to_kd_and_the_earlier_seed():
    val = {"kd": [0.97, 0.97, 0.97], "scratch": [0.97, 0.97, 0.97]}
    assert (lambda c: (c["arm"], c["seed"]))(choose_student(_per_seed(val, copy.deepcopy(val)), [0, 1, 2])) == (
        "kd", 0)
    with pytest.raises(ValueError, match="no arm was trained on every seed"):
        choose_student({0: {}}, [0])


def _timed(model: str, p50: float, rng) -> dict:
    from kd2deploy.bench.harness import HarnessSettings, summarize

    rounds = [p50 * np.exp(rng.normal(0, 0.03, 200)) for _ in range(3)]
    res = summarize(rounds, HarnessSettings(rounds=3), model=model, batch_size=1, measured_s=1.0)
    return {**res, "samples_us": np.concatenate(rounds), "rounds_us": rounds}


def test_the_guard_chooses_on_validation_and_changed_test_labels_change_nothing():
    """Variants carry validation and test accuracy; scrambling every test accuracy (as changed test labels would)
    leaves each selection as it was, and a variant that fails only on validation is rejected."""
    from kd2deploy.ship.guard import ShipPolicy, select_variants

    rng = np.random.default_rng(0)
    latency = [_timed("teacher", 60, rng), _timed("teacher@aa", 60, rng), _timed("teacher.int8", 30, rng),
               _timed("teacher.int8b", 25, rng), _timed("student", 8, rng), _timed("student@aa", 8, rng),
               _timed("student.int8", 9, rng)]
    results = {"variants": {
        "teacher": {"accuracy_fp32": 0.99, "accuracy_fp32_val": 0.99, "variants": [
            {"label": "teacher.int8", "kind": "int8-static", "accuracy": 0.99, "accuracy_val": 0.99},
            # fastest, fine on test, but loses 3 pp on validation: rejected
            {"label": "teacher.int8b", "kind": "int8-static", "accuracy": 0.99, "accuracy_val": 0.96}]},
        "student": {"accuracy_fp32": 0.98, "accuracy_fp32_val": 0.98, "variants": [
            {"label": "student.int8", "kind": "int8-static", "accuracy": 0.98, "accuracy_val": 0.98}]},
    }}
    policy = ShipPolicy()
    select_variants(results, latency, policy)
    picks = {m: e["selection"]["shipped"] for m, e in results["variants"].items()}
    assert picks == {"teacher": "teacher.int8", "student": "student"}
    assert results["variants"]["teacher"]["selection"]["split"] == "validation"
    for _ in range(3):
        scrambled = copy.deepcopy(results)
        for e in scrambled["variants"].values():
            e["accuracy_fp32"] = float(rng.random())
            for v in e["variants"]:
                v["accuracy"] = float(rng.random())
        select_variants(scrambled, latency, policy)
        assert {m: e["selection"]["shipped"] for m, e in scrambled["variants"].items()} == picks
