"""The shipping guard: of the FP32 model and its compressed variants, ship the fastest that keeps accuracy.

Compression that does not pay is not kept. With the default policy a variant must be measurably faster than
its FP32 source at the judged batch size (the lower end of the bootstrap 95 % interval of the p50 speed-up
above ``min_speedup``) and keep at least 99 % of the FP32 accuracy (MLPerf's rule for its "99 %" quality
target). The FP32 model is always eligible, so there is always something to ship, and every candidate that
does not ship gets a reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from kd2deploy.strict import PositiveInt, Strict

FP32 = "fp32"  # the ``source`` of the exported FP32 model itself
CONTROL = "control"  # the ``source`` of an A/A control: the FP32 file timed again as a separate runner


class ShipPolicy(Strict):
    """How :func:`select` picks the model that ships.

    ``min_relative_accuracy`` and ``max_accuracy_drop_pp`` are alternatives: setting only
    ``max_accuracy_drop_pp`` replaces the default relative rule; set both to require both.
    """

    rule: Literal["fastest_within_accuracy"] = "fastest_within_accuracy"
    min_relative_accuracy: Annotated[float, Field(gt=0, le=1)] | None = Field(
        0.99, description="a variant keeps at least this fraction of the FP32 accuracy (0.99: MLPerf's 99 %)"
    )
    max_accuracy_drop_pp: Annotated[float, Field(ge=0)] | None = Field(
        None, description="alternative: a variant loses at most this many percentage points of accuracy"
    )
    batch_size: PositiveInt = Field(1, description="latency is judged at this batch size")
    require_faster: bool = Field(
        True,
        description="a variant must beat FP32 beyond noise: the 95 % CI of FP32 p50 / variant p50 lies above "
        "min_speedup",
    )
    min_speedup: Annotated[float, Field(ge=1)] = Field(
        1.05,
        description="with require_faster: the lower end of that interval must exceed this (1.0: any gain)",
    )

    @model_validator(mode="after")
    def _one_accuracy_rule(self) -> ShipPolicy:
        if self.max_accuracy_drop_pp is not None and "min_relative_accuracy" not in self.model_fields_set:
            self.__dict__["min_relative_accuracy"] = None  # the alternative replaces the default
        if self.min_relative_accuracy is None and self.max_accuracy_drop_pp is None:
            raise ValueError(
                "set min_relative_accuracy or max_accuracy_drop_pp: the guard needs an accuracy rule"
            )
        return self

    def accuracy_floor(self, fp32_accuracy: float) -> tuple[float, str]:
        """The lowest accuracy a variant may have, and the binding rule in words."""
        floors = []
        if self.min_relative_accuracy is not None:
            floors.append(
                (
                    self.min_relative_accuracy * fp32_accuracy,
                    f"needs >= {self.min_relative_accuracy * 100:g} % of FP32 {_pct(fp32_accuracy)}",
                )
            )
        if self.max_accuracy_drop_pp is not None:
            floors.append(
                (
                    fp32_accuracy - self.max_accuracy_drop_pp / 100,
                    f"allowed drop {self.max_accuracy_drop_pp:g} pp from FP32 {_pct(fp32_accuracy)}",
                )
            )
        floor, words = max(floors, key=lambda f: f[0])
        return floor, f"{words}: {_pct(floor)}"


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def _times(x: float) -> str:
    """``2.3x``, or ``1.03x`` near 1 where one decimal would read as no difference."""
    return f"{x:.2f}x" if x < 1.1 else f"{x:.1f}x"


def _ratio_words(r: Mapping[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"p50 ratio {r['ratio_p50']:.2f}, 95 % CI {lo:.2f}–{hi:.2f}"


def _check(candidates: Sequence[Mapping[str, Any]], policy: ShipPolicy) -> Mapping[str, Any]:
    """Validates the candidate list; returns the FP32 candidate."""
    names = []
    for c in candidates:
        need = {"name", "source", "p50_us", "ratio_vs_source"} | (
            {"accuracy"} if c.get("source") != CONTROL else set()
        )
        missing = need - set(c)
        if missing:
            raise ValueError(f"candidate {c.get('name', '?')!r} lacks {', '.join(sorted(missing))}")
        if "batch_size" in c and c["batch_size"] != policy.batch_size:
            raise ValueError(
                f"candidate {c['name']!r} was timed at batch {c['batch_size']}, the policy judges batch "
                f"{policy.batch_size}"
            )
        if c["source"] == CONTROL and c["ratio_vs_source"] is None:
            raise ValueError(f"control {c['name']!r} needs its ratio_vs_source (FP32 p50 / control p50)")
        names.append(c["name"])
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"candidate names must be distinct: {', '.join(dupes)}")
    fp32 = [c for c in candidates if c["source"] == FP32]
    if len(fp32) != 1:
        raise ValueError(f"exactly one candidate must have source {FP32!r} (the FP32 model), got {len(fp32)}")
    return fp32[0]


def noise_floor(candidates: Sequence[Mapping[str, Any]]) -> tuple[float, str | None]:
    """The largest speed-up FP32 showed against itself in any A/A control (within its 95 % CI), and that
    control's name; ``(1.0, None)`` without controls.

    The harness's interval of a p50 ratio covers the spread of calls within the windows, not the drift between
    windows and sessions that a shared machine adds; an A/A control measures that drift directly.
    """
    worst, name = 1.0, None
    for c in candidates:
        if c["source"] != CONTROL:
            continue
        lo, hi = c["ratio_vs_source"]["ci95"]
        apparent = max(hi, 1 / lo if lo > 0 else float("inf"))
        if apparent > worst:
            worst, name = apparent, c["name"]
    return worst, name


def _speed_reason(
    r: Mapping[str, Any] | None, need: float, control: str | None, policy: ShipPolicy
) -> str | None:
    """Why a variant's speed does not pass, or None when it does."""
    b = policy.batch_size
    if not policy.require_faster:
        return None
    if r is None:
        return f"no p50 ratio against FP32 was measured at batch {b}"
    lo, hi = r["ci95"]
    if lo > need:
        return None
    if hi < 1:
        return f"slower than FP32 by {_times(1 / r['ratio_p50'])} at batch {b} ({_ratio_words(r)})"
    if lo <= 1:
        return f"not faster than FP32 beyond noise at batch {b} ({_ratio_words(r)})"
    if control is not None and need > policy.min_speedup:
        return (
            f"only {r['ratio_p50']:.2f}x faster than FP32 at batch {b} ({_ratio_words(r)}), within the "
            f"{need:.2f}x that FP32 showed against itself (A/A control {control})"
        )
    return (
        f"only {r['ratio_p50']:.2f}x faster than FP32 at batch {b}, needs a 95 % CI above "
        f"{policy.min_speedup:g}x ({_ratio_words(r)})"
    )


def select(candidates: list[dict], policy: ShipPolicy) -> dict:
    """Picks the model to ship: the fastest candidate (lowest p50) that passes the policy.

    Args:
        candidates: one dict per model, all timed at ``policy.batch_size``: ``name``; ``source``
            (``"fp32"`` for the exported FP32 model, exactly one; a variant's kind for the others, e.g.
            ``"int8-static"``); ``accuracy`` (a fraction, test split); ``p50_us``; ``ratio_vs_source``:
            ``{"ratio_p50", "ci95": [lo, hi]}`` with ratio = FP32 p50 / candidate p50 (above 1: faster), or
            None when not measured. An optional ``batch_size`` must equal the policy's. Candidates with
            source ``"control"`` are A/A controls (the FP32 file timed again as another runner; no accuracy
            needed): they never ship, and a variant must beat FP32 by more than FP32 beat itself in them.
        policy: the accuracy floor and speed rule.

    Returns:
        ``{"shipped": name, "reason": str, "rejected": [{"name", "reason"}], "accuracy_floor": float,
        "speedup_required": float | None, "batch_size": int}``; ``rejected`` lists every shippable
        candidate that did not ship. The FP32 candidate ships when no variant passes.

    Raises:
        ValueError: the candidate list is malformed (no or several FP32 candidates, duplicate names,
            missing keys).
    """
    fp32 = _check(candidates, policy)
    floor, floor_words = policy.accuracy_floor(fp32["accuracy"])
    noise, control = noise_floor(candidates)
    need = max(policy.min_speedup, noise)
    b = policy.batch_size
    eligible: list[Mapping[str, Any]] = [fp32]
    rejected: list[dict[str, str]] = []
    shippable = [c for c in candidates if c["source"] != CONTROL]
    for c in shippable:
        if c is fp32:
            continue
        reasons = []
        acc = c["accuracy"]
        if acc < floor - 1e-12:
            drop = (acc - fp32["accuracy"]) * 100
            reasons.append(f"accuracy {_pct(acc)} ({drop:+.1f} pp; {floor_words})")
        speed = _speed_reason(c["ratio_vs_source"], need, control, policy)
        if speed:
            reasons.append(speed)
        if reasons:
            rejected.append({"name": c["name"], "reason": "; ".join(reasons)})
        else:
            eligible.append(c)
    best = min(eligible, key=lambda c: (c["p50_us"], c is not fp32))
    for c in eligible:
        if c is not best:
            rejected.append(
                {
                    "name": c["name"],
                    "reason": f"passes, but {best['name']} is faster at batch {b} "
                    f"(p50 {best['p50_us']:.1f} vs {c['p50_us']:.1f} µs)",
                }
            )
    order = {c["name"]: i for i, c in enumerate(candidates)}
    rejected.sort(key=lambda r: order[r["name"]])
    if best is fp32:
        why = "no variant passed the guard" if len(shippable) > 1 else "no variants were made"
        reason = f"{fp32['name']} (FP32, {_pct(fp32['accuracy'])}): {why}; FP32 is the fallback"
    else:
        r = best["ratio_vs_source"]
        speed = (
            f"{_times(r['ratio_p50'])} faster than FP32 at batch {b} ({_ratio_words(r)})"
            if r
            else f"p50 {best['p50_us']:.1f} µs vs FP32 {fp32['p50_us']:.1f} µs at batch {b}"
        )
        reason = (
            f"{best['name']}: {speed}; accuracy {_pct(best['accuracy'])} vs FP32 {_pct(fp32['accuracy'])} "
            f"({(best['accuracy'] - fp32['accuracy']) * 100:+.1f} pp; {floor_words})"
        )
    return {
        "shipped": best["name"],
        "reason": reason,
        "rejected": rejected,
        "accuracy_floor": floor,
        "speedup_required": need if policy.require_faster else None,
        "batch_size": b,
    }


def candidates_from_bench(
    results: Sequence[dict],
    fp32_name: str,
    accuracies: Mapping[str, float],
    batch_size: int,
    *,
    kinds: Mapping[str, str] | None = None,
    controls: Sequence[str] = (),
    bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Builds :func:`select`'s candidates from the latency harness's results.

    Args:
        results: from ``kd2deploy.bench.harness.measure(..., keep_samples=True)``; model labels are candidate
            names, all timed at ``batch_size``.
        fp32_name: the FP32 model's label.
        accuracies: accuracy per shippable label, the FP32 model's included (the pipeline passes validation
            accuracy: test accuracy chooses nothing).
        batch_size: the batch the guard judges.
        kinds: each variant's kind (its ``source``; default ``"variant"``).
        controls: labels of A/A controls: the FP32 file in a second session, timed as another model.
        bootstrap: resamples for the ratio intervals.
        seed: bootstrap seed.
    """
    from kd2deploy.bench.harness import ratios

    p50 = {r["model"]: r["p50_us"] for r in results if r["batch_size"] == batch_size}
    missing = [n for n in [*accuracies, *controls] if n not in p50]
    if missing:
        raise ValueError(f"no batch-{batch_size} timing for {', '.join(missing)}")
    out = []
    for name in [*accuracies, *controls]:
        ratio = None
        if name != fp32_name:
            rows = ratios(results, fp32_name, name, bootstrap=bootstrap, seed=seed)
            row = next(r for r in rows if r["batch_size"] == batch_size)
            ratio = {"ratio_p50": row["ratio_p50"], "ci95": list(row["ci95"])}
        if name in controls:
            out.append(
                {
                    "name": name,
                    "source": CONTROL,
                    "p50_us": p50[name],
                    "ratio_vs_source": ratio,
                    "batch_size": batch_size,
                }
            )
            continue
        source = FP32 if name == fp32_name else (kinds or {}).get(name, "variant")
        out.append(
            {
                "name": name,
                "source": source,
                "accuracy": accuracies[name],
                "p50_us": p50[name],
                "ratio_vs_source": ratio,
                "batch_size": batch_size,
            }
        )
    return out


def select_variants(results: dict[str, Any], latency: Sequence[dict], policy: ShipPolicy) -> None:
    """Runs the guard for every model with variants in ``results["variants"]``, on **validation** accuracy.

    Reads ``accuracy_fp32_val`` and each variant's ``accuracy_val`` (test accuracies are reported, never used to
    choose), and ``latency`` from ``measure(..., keep_samples=True)``; writes each entry's ``candidates`` and
    ``selection`` (with ``split: "validation"``) and a warning per variant slower than its source.
    """
    timed = {r["model"] for r in latency}
    for model, entry in (results.get("variants") or {}).items():
        accuracies = {model: entry["accuracy_fp32_val"], **{v["label"]: v["accuracy_val"] for v in entry["variants"]}}
        control = f"{model}@aa"
        candidates = candidates_from_bench(
            latency, model, accuracies, policy.batch_size,
            kinds={v["label"]: v["kind"] for v in entry["variants"]},
            controls=[control] if control in timed else [],
        )
        entry["candidates"] = candidates
        entry["selection"] = {**select(candidates, policy), "split": "validation"}
        for c in candidates:
            r = c.get("ratio_vs_source")
            if c["source"] not in (FP32, CONTROL) and r and r["ci95"][1] < 1:
                results.setdefault("warnings", []).append(
                    f"variant {c['name']} is slower than its FP32 source: {1 / r['ratio_p50']:.2f}x the p50 at batch "
                    f"{policy.batch_size} (95 % CI of the speed-up {r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}x); "
                    "not shipped")
