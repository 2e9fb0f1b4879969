"""The shipping guard: a pure choice over fake candidates, then one real case measured with the harness.

No assertion depends on which model happens to be faster on this machine.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError

from kd2deploy.ship.guard import ShipPolicy, candidates_from_bench, select


def cand(name, accuracy, p50_us, ratio=None, ci=None, source="int8-static"):
    """A candidate; ``ratio`` is FP32 p50 / this p50 (above 1: faster), ``ci`` its 95 % interval."""
    r = None if ratio is None else {"ratio_p50": ratio, "ci95": list(ci or (ratio * 0.95, ratio * 1.05))}
    return {"name": name, "source": source, "accuracy": accuracy, "p50_us": p50_us, "ratio_vs_source": r}


FP32 = cand("student", 0.982, 10.0, source="fp32")


def reasons(decision) -> dict[str, str]:
    return {r["name"]: r["reason"] for r in decision["rejected"]}


# ---------------------------------------------------------------------------------------------- policy
def test_policy_defaults_and_yaml():
    p = ShipPolicy()
    assert (p.rule, p.min_relative_accuracy, p.max_accuracy_drop_pp, p.batch_size, p.require_faster) == (
        "fastest_within_accuracy",
        0.99,
        None,
        1,
        True,
    )
    p = ShipPolicy.model_validate(yaml.safe_load("{max_accuracy_drop_pp: 0.5, batch_size: 32}"))
    assert p.min_relative_accuracy is None  # the alternative replaces the default relative rule
    assert p.accuracy_floor(0.98)[0] == pytest.approx(0.975)


def test_both_rules_apply_when_both_are_set_and_the_stricter_binds():
    p = ShipPolicy(min_relative_accuracy=0.99, max_accuracy_drop_pp=0.5)
    floor, words = p.accuracy_floor(0.98)
    assert floor == pytest.approx(0.975) and "allowed drop 0.5 pp" in words


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"min_relative_accuracy": None}, "needs an accuracy rule"),
        ({"rule": "smallest"}, "fastest_within_accuracy"),
        ({"min_relative_accuracy": 1.5}, "less than or equal to 1"),
        ({"min_speedup": 0.9}, "greater than or equal to 1"),
        ({"batch": 1}, "batch"),
    ],
)
def test_bad_policies_are_rejected(data, needle):
    with pytest.raises(ValidationError, match=needle):
        ShipPolicy.model_validate(data)


# ---------------------------------------------------------------------------------------------- select
def test_a_slower_variant_is_rejected_with_its_ratio():
    d = select(
        [FP32, cand("int8-dynamic-qint8", 0.982, 23.3, 0.43, (0.41, 0.45), "int8-dynamic")], ShipPolicy()
    )
    assert d["shipped"] == "student"
    assert reasons(d)["int8-dynamic-qint8"] == (
        "slower than FP32 by 2.3x at batch 1 (p50 ratio 0.43, 95 % CI 0.41–0.45)"
    )
    assert "FP32 is the fallback" in d["reason"]


def test_an_accuracy_damaging_variant_is_rejected_even_when_faster():
    d = select([FP32, cand("int8-static-qdq-minmax", 0.964, 5.0, 2.0, (1.9, 2.1))], ShipPolicy())
    assert d["shipped"] == "student"
    assert reasons(d)["int8-static-qdq-minmax"] == (
        "accuracy 96.4 % (-1.8 pp; needs >= 99 % of FP32 98.2 %: 97.2 %)"
    )


def test_the_fastest_passing_variant_ships_and_the_rest_say_why_not():
    cands = [
        FP32,
        cand("a", 0.980, 6.0, 1.66, (1.6, 1.7)),
        cand("b", 0.981, 5.0, 2.0, (1.9, 2.1)),
        cand("c", 0.950, 3.0, 3.3, (3.2, 3.4)),  # fastest, but loses accuracy
        cand("d", 0.982, 9.7, 1.03, (1.02, 1.04)),  # faster beyond noise, but not by 5 %
        cand("e", 0.982, 9.5, 1.05, (0.97, 1.12)),  # within noise
        cand("f", 0.982, 4.0, None),  # never compared with FP32
    ]
    before = copy.deepcopy(cands)
    d = select(cands, ShipPolicy())
    assert cands == before  # pure: the input is not modified
    assert d["shipped"] == "b"
    assert d["reason"].startswith("b: 2.0x faster than FP32 at batch 1 (p50 ratio 2.00, 95 % CI 1.90–2.10)")
    assert "accuracy 98.1 % vs FP32 98.2 %" in d["reason"]
    why = reasons(d)
    assert [r["name"] for r in d["rejected"]] == ["student", "a", "c", "d", "e", "f"]
    assert why["student"].startswith("passes, but b is faster") and why["a"].startswith("passes, but b")
    assert why["c"].startswith("accuracy 95.0 %")
    assert why["d"].startswith("only 1.03x faster than FP32 at batch 1, needs a 95 % CI above 1.05x")
    assert why["e"].startswith("not faster than FP32 beyond noise")
    assert why["f"] == "no p50 ratio against FP32 was measured at batch 1"
    assert d["accuracy_floor"] == pytest.approx(0.99 * 0.982)


def test_without_require_faster_the_lowest_p50_wins():
    cands = [FP32, cand("e", 0.982, 9.5, 1.05, (0.97, 1.12)), cand("slow", 0.982, 20.0, 0.5, (0.48, 0.52))]
    d = select(cands, ShipPolicy(require_faster=False))
    assert d["shipped"] == "e"
    assert reasons(d)["slow"].startswith("passes, but e is faster at batch 1 (p50 9.5 vs 20.0 µs)")


def test_fp32_alone_ships():
    d = select([FP32], ShipPolicy())
    assert (d["shipped"], d["rejected"], d["speedup_required"], d["batch_size"]) == ("student", [], 1.05, 1)
    assert "no variants were made" in d["reason"]


def test_an_aa_control_raises_the_speed_bar_to_what_fp32_shows_against_itself():
    """Measured here under load: the student's own FP32 file in a second session came out '1.28x faster'
    (95 % CI 1.24-1.30). A variant must beat that, not just the harness's within-window interval."""
    control = cand("student-again", None, 7.8, 1.28, (1.24, 1.30), source="control")
    del control["accuracy"]  # controls need none
    cands = [
        FP32,
        control,
        cand("small-gain", 0.982, 8.2, 1.22, (1.21, 1.23)),
        cand("big-gain", 0.982, 5.0, 2.0, (1.9, 2.1)),
    ]
    d = select(cands, ShipPolicy())
    assert d["shipped"] == "big-gain" and d["speedup_required"] == pytest.approx(1.30)
    assert [r["name"] for r in d["rejected"]] == ["student", "small-gain"]  # a control never ships
    assert reasons(d)["small-gain"] == (
        "only 1.22x faster than FP32 at batch 1 (p50 ratio 1.22, 95 % CI 1.21–1.23), within the 1.30x that "
        "FP32 showed against itself (A/A control student-again)"
    )
    # A control that came out slower counts the same way: 1 / 0.8 = 1.25x apparent speed-up.
    slow_control = {**control, "ratio_vs_source": {"ratio_p50": 0.9, "ci95": [0.8, 1.0]}}
    assert select([FP32, slow_control], ShipPolicy())["speedup_required"] == pytest.approx(1.25)


@pytest.mark.parametrize(
    "cands, needle",
    [
        ([cand("a", 0.9, 1.0, 2.0)], "exactly one candidate must have source 'fp32'"),
        ([FP32, dict(FP32)], "distinct"),
        ([FP32, {"name": "a", "accuracy": 0.9}], "lacks p50_us, ratio_vs_source, source"),
        ([FP32, {**cand("a", 0.9, 1.0, 2.0), "batch_size": 32}], "timed at batch 32"),
        ([FP32, cand("c", None, 1.0, None, source="control")], "needs its ratio_vs_source"),
    ],
)
def test_malformed_candidate_lists_raise(cands, needle):
    with pytest.raises(ValueError, match=needle):
        select(cands, ShipPolicy())


# -------------------------------------------------------------------------------------------- real case
def test_guard_on_the_tiny_students_real_variants(tmp_path):
    """The cnn-tiny student, its int8-dynamic variant, a static variant calibrated on inputs that were scaled
    twice (a preprocessing mismatch) and an A/A control: timed with the harness at batch 1, then judged.

    The damaged variant must be rejected for accuracy whatever the timings; the dynamic variant's timing is
    asserted on only when the harness says it is slower beyond noise (the usual outcome on this CPU).
    """
    from kd2deploy.bench.harness import HarnessSettings, batch_inputs, create_ort_session, measure, ort_runner
    from kd2deploy.config import DataConfig
    from kd2deploy.data import load_data
    from kd2deploy.export.variants import Int8DynamicSpec, Int8StaticSpec, evaluate_variant, make_variant
    from tests.unit.test_variants import train_and_export

    d = load_data(DataConfig(), 0)
    src = train_and_export("cnn-tiny", d, tmp_path)
    dynamic = make_variant(src, Int8DynamicSpec(), tmp_path, d.x_train)
    damaged = make_variant(src, Int8StaticSpec(name="int8-static-miscalibrated"), tmp_path, d.x_train / 16)
    evals = {p: evaluate_variant(p, src, d.x_test, d.y_test) for p in (dynamic, damaged)}
    accuracies = {
        "student": evals[dynamic]["accuracy_source"],
        **{e["name"]: e["accuracy"] for e in evals.values()},
    }
    assert accuracies["int8-static-miscalibrated"] < 0.9 * accuracies["student"]

    settings = HarnessSettings(
        warmup_s=0.01, warmup_runs=5, min_duration_s=0.05, min_runs=50, rounds=2, bootstrap=300
    )
    x = batch_inputs(d.x_test, 1)
    paths = {
        "student": src,
        "student-again": src,
        "int8-dynamic-qint8": dynamic,
        "int8-static-miscalibrated": damaged,
    }
    runners = {name: {1: ort_runner(create_ort_session(p, settings)[0], x)} for name, p in paths.items()}
    results = measure(runners, settings, keep_samples=True)
    cands = candidates_from_bench(
        results,
        "student",
        accuracies,
        1,
        kinds={"int8-dynamic-qint8": "int8-dynamic", "int8-static-miscalibrated": "int8-static"},
        controls=["student-again"],
    )
    assert [c["source"] for c in cands] == ["fp32", "int8-dynamic", "int8-static", "control"]
    assert cands[0]["ratio_vs_source"] is None and cands[1]["ratio_vs_source"]["ci95"][0] > 0

    d_ = select(cands, ShipPolicy())
    why = reasons(d_)
    assert d_["shipped"] in ("student", "int8-dynamic-qint8")
    shippable = {"student", "int8-dynamic-qint8", "int8-static-miscalibrated"}
    assert {r["name"] for r in d_["rejected"]} == shippable - {d_["shipped"]}  # the control is not listed
    assert why["int8-static-miscalibrated"].startswith("accuracy ")
    assert "needs >= 99 % of FP32" in why["int8-static-miscalibrated"]
    dyn = cands[1]["ratio_vs_source"]
    if dyn["ci95"][1] < 1:  # slower beyond noise: the guard must say so
        assert d_["shipped"] == "student"
        assert why["int8-dynamic-qint8"].startswith("slower than FP32 by ")
    shipped = next(c for c in cands if c["name"] == d_["shipped"])
    assert shipped["accuracy"] >= d_["accuracy_floor"]
