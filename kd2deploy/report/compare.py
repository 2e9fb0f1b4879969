"""Two runs side by side: the same pipeline on a laptop and on an edge board, or two configs on one machine.

``compare_runs`` reads (and validates) both results.json files and returns one dict of rows; the Markdown and
HTML renderings show the same rows. Every row holds the raw numbers of run A and run B, plus display text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError
from kd2deploy.report.view import _get, verdict

MAX_CONFIG_DIFFS = 40


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def _x(v: float | None, ci: list | None = None) -> str:
    if v is None:
        return "–"
    if ci and ci[0] is not None and ci[1] is not None:
        return f"{v:.2f}× [{ci[0]:.2f}–{ci[1]:.2f}]"
    return f"{v:.2f}×"


def _mj(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g} mJ"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _run_meta(r: dict[str, Any], label: str, path: Path | None) -> dict[str, Any]:
    env = r.get("environment", {})
    return {
        "label": label,
        "path": str(path) if path else _get(r, "run", "dir"),
        "pipeline": r["pipeline"]["name"],
        "started": _get(r, "run", "started"),
        "cpu": env.get("cpu"),
        "cores": env.get("logical_cores"),
        "verdict": verdict(r)["text"],
        "ship": verdict(r)["ship"],
    }


def _student_p50(r: dict[str, Any]) -> dict[str, Any] | None:
    rows = [x for x in r["benchmark"]["results"] if x["model"] == "student"]
    return min(rows, key=lambda x: x["batch_size"], default=None)


def _headline(ra: dict[str, Any], rb: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's headline for A and B; each row holds raw values (``a``, ``b``) and display text."""

    def row(metric: str, value, text) -> dict[str, Any]:
        return {"metric": metric, "a": value(ra), "b": value(rb), "a_text": text(ra), "b_text": text(rb)}

    def h(r: dict[str, Any], key: str):
        return r["headline"].get(key)

    def speed(r):
        b = h(r, "speedup_p50_batch")
        text = _x(h(r, "speedup_p50_ratio"), _get(r["headline"], "speedup_p50", str(b), "ci95"))
        return text if b is None else f"{text} at batch {b}"

    def energy(r):
        e = h(r, "energy_ratio")
        return (
            "–" if e is None else f"{e:.2f}× less ({h(r, 'energy_label')}, {h(r, 'energy_basis') or 'gross'})"
        )

    def p50(r):
        x = _student_p50(r)
        return "–" if x is None else f"{x['p50_us']:,.1f} µs at batch {x['batch_size']}"

    return [
        row("verdict", lambda r: verdict(r)["ship"], lambda r: verdict(r)["title"]),
        row("speed-up, teacher ÷ student p50", lambda r: h(r, "speedup_p50_ratio"), speed),
        row("student p50 latency", lambda r: (_student_p50(r) or {}).get("p50_us"), p50),
        row("energy per inference, teacher ÷ student", lambda r: h(r, "energy_ratio"), energy),
        row(
            "accuracy change, student − teacher",
            lambda r: h(r, "accuracy_delta_pp"),
            lambda r: "–" if h(r, "accuracy_delta_pp") is None else f"{h(r, 'accuracy_delta_pp'):+.2f} pp",
        ),
        row(
            "student test accuracy (ONNX)",
            lambda r: h(r, "student_accuracy"),
            lambda r: _pct(h(r, "student_accuracy")),
        ),
        row(
            "teacher test accuracy (ONNX)",
            lambda r: h(r, "teacher_accuracy"),
            lambda r: _pct(h(r, "teacher_accuracy")),
        ),
    ]


def _accuracy(ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    models = []
    for name in dict.fromkeys([*ra["export"], *rb["export"]]):
        a = _get(ra, "export", name, "parity", "accuracy_onnx")
        b = _get(rb, "export", name, "parity", "accuracy_onnx")
        models.append(
            {
                "model": name,
                "a": a,
                "b": b,
                "a_text": _pct(a),
                "b_text": _pct(b),
                "delta_pp": None if a is None or b is None else 100 * (b - a),
            }
        )
    arms = []
    sa, sb = _get(ra, "distill", "summary", default={}), _get(rb, "distill", "summary", default={})
    for arm in dict.fromkeys([*sa, *sb]):
        a, b = sa.get(arm) or {}, sb.get(arm) or {}
        arms.append(
            {
                "arm": arm,
                "a": a.get("mean"),
                "b": b.get("mean"),
                "a_text": f"{_pct(a.get('mean'))} ± {_pct(a.get('sd'))} (n={a.get('n')})" if a else "–",
                "b_text": f"{_pct(b.get('mean'))} ± {_pct(b.get('sd'))} (n={b.get('n')})" if b else "–",
            }
        )
    return {"models": models, "distill": arms}


def _latency(ra: dict[str, Any], rb: dict[str, Any]) -> list[dict[str, Any]]:
    la = {(r["model"], r["batch_size"]): r for r in ra["benchmark"]["results"]}
    lb = {(r["model"], r["batch_size"]): r for r in rb["benchmark"]["results"]}
    rows = []
    for key in dict.fromkeys([*la, *lb]):
        a, b = la.get(key), lb.get(key)
        pa, pb = (a or {}).get("p50_us"), (b or {}).get("p50_us")
        rows.append(
            {
                "model": key[0],
                "batch_size": key[1],
                "a": pa,
                "b": pb,
                "a_ci": (a or {}).get("p50_ci95_us"),
                "b_ci": (b or {}).get("p50_ci95_us"),
                "a_text": "–"
                if a is None
                else f"{pa:,.1f} [{a['p50_ci95_us'][0]:,.1f}–{a['p50_ci95_us'][1]:,.1f}]",
                "b_text": "–"
                if b is None
                else f"{pb:,.1f} [{b['p50_ci95_us'][0]:,.1f}–{b['p50_ci95_us'][1]:,.1f}]",
                "b_over_a": pb / pa if pa and pb else None,
            }
        )
    return sorted(
        rows, key=lambda r: (r["model"] != "teacher", r["model"] != "student", r["model"], r["batch_size"])
    )


def _overlap(a: list | None, b: list | None) -> bool | None:
    if not a or not b or None in a or None in b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def _ratios(ra: dict[str, Any], rb: dict[str, Any]) -> list[dict[str, Any]]:
    qa = {(r["numerator"], r["denominator"], r["batch_size"]): r for r in ra["benchmark"]["ratios"]}
    qb = {(r["numerator"], r["denominator"], r["batch_size"]): r for r in rb["benchmark"]["ratios"]}
    rows = []
    for key in dict.fromkeys([*qa, *qb]):
        a, b = qa.get(key) or {}, qb.get(key) or {}
        rows.append(
            {
                "numerator": key[0],
                "denominator": key[1],
                "batch_size": key[2],
                "a": a.get("ratio_p50"),
                "b": b.get("ratio_p50"),
                "a_ci": a.get("ci95"),
                "b_ci": b.get("ci95"),
                "a_text": _x(a.get("ratio_p50"), a.get("ci95")),
                "b_text": _x(b.get("ratio_p50"), b.get("ci95")),
                "ci_overlap": _overlap(a.get("ci95"), b.get("ci95")),
            }
        )
    return rows


def _energy(ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, Any]:
    ea, eb = ra.get("energy") or {}, rb.get("energy") or {}

    def mj(e, name, basis):
        j = (_get(e, "models", name, f"j_per_inference_{basis}") or {}).get("mean")
        return None if j is None else 1e3 * j

    rows = []
    for name in dict.fromkeys([*(ea.get("models") or {}), *(eb.get("models") or {})]):
        for basis in ("gross", "active"):
            a, b = mj(ea, name, basis), mj(eb, name, basis)
            rows.append({"model": name, "basis": basis, "a": a, "b": b, "a_text": _mj(a), "b_text": _mj(b)})
    return {
        "a_enabled": ea.get("enabled", True) is not False,
        "b_enabled": eb.get("enabled", True) is not False,
        "a_label": ea.get("label"),
        "b_label": eb.get("label"),
        "a_batch": _get(ea, "models", "student", "batch_size"),
        "b_batch": _get(eb, "models", "student", "batch_size"),
        "rows": rows,
    }


def _environment(ra: dict[str, Any], rb: dict[str, Any]) -> list[dict[str, Any]]:
    ea, eb = ra.get("environment", {}), rb.get("environment", {})
    sa, sb = ra["benchmark"].get("settings", {}), rb["benchmark"].get("settings", {})
    fields = [
        ("CPU", ea.get("cpu"), eb.get("cpu")),
        ("logical cores", ea.get("logical_cores"), eb.get("logical_cores")),
        ("platform", ea.get("platform"), eb.get("platform")),
        ("torch threads (training)", ea.get("torch_threads"), eb.get("torch_threads")),
        ("benchmark intra-op threads", sa.get("intra_op_threads"), sb.get("intra_op_threads")),
        ("benchmark inter-op threads", sa.get("inter_op_threads"), sb.get("inter_op_threads")),
        ("execution provider", sa.get("provider"), sb.get("provider")),
        ("graph optimisation", sa.get("graph_optimization"), sb.get("graph_optimization")),
        ("energy label", _get(ra, "energy", "label"), _get(rb, "energy", "label")),
        ("Python", ea.get("python"), eb.get("python")),
        ("kd2deploy", ra.get("kd2deploy_version"), rb.get("kd2deploy_version")),
        ("git commit", ea.get("git_commit"), eb.get("git_commit")),
    ]
    pa, pb = ea.get("packages") or {}, eb.get("packages") or {}
    fields += [(name, pa.get(name), pb.get(name)) for name in dict.fromkeys([*pa, *pb])]
    return [{"field": f, "a": a, "b": b, "same": a == b} for f, a, b in fields]


def _config(ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, Any]:
    ha, hb = ra["pipeline"]["config_hash"], rb["pipeline"]["config_hash"]
    fa, fb = _flatten(ra["pipeline"]["resolved"]), _flatten(rb["pipeline"]["resolved"])
    diffs = [
        {"key": k, "a": fa.get(k), "b": fb.get(k)}
        for k in dict.fromkeys([*fa, *fb])
        if fa.get(k) != fb.get(k)
    ]
    if ha == hb:
        text = (
            "The configurations are identical (same config hash): differences come from machine and software."
        )
    else:
        text = (
            f"The configurations differ in {len(diffs)} value(s): differences come from the configuration as "
            "well as the machine."
            if diffs
            else "The config hashes differ, but the resolved configurations "
            "recorded are equal (a different kd2deploy version hashes differently)."
        )
    return {
        "a_hash": ha,
        "b_hash": hb,
        "identical": ha == hb,
        "text": text,
        "differences": diffs[:MAX_CONFIG_DIFFS],
        "n_differences": len(diffs),
    }


def _where_rows(run: str, r: dict[str, Any]) -> list[dict[str, Any]]:
    """This run's machine and each of its targets: CPU, teacher/student speed-up, student p50, energy ratio."""
    from kd2deploy.targets.report import target_headline

    h = r.get("headline") or {}
    sp = _get(h, "speedup_p50", str(h.get("speedup_p50_batch")))
    lat = {(x["model"], x["batch_size"]): x for x in _get(r, "benchmark", "results", default=[]) or []}
    b = h.get("speedup_p50_batch")
    rows = [{"run": run, "where": "this machine", "cpu": _get(r, "environment", "cpu"), "status": "ok",
             "speedup": sp, "batch": b, "student_p50": _get(lat.get(("student", b)) or {}, "p50_us"),
             "energy_ratio": h.get("energy_ratio"), "energy_label": h.get("energy_label")}]
    for name, e in (r.get("targets") or {}).items():
        if e.get("status") != "ok":
            rows.append({"run": run, "where": name, "status": "missing", "reason": e.get("reason")})
            continue
        th = target_headline(e)
        sp = th["speedup_p50"]
        tl = {(x["model"], x["batch_size"]): x for x in e.get("results") or []}
        rows.append({"run": run, "where": name, "cpu": _get(e, "facts", "cpu_model"), "status": "ok", "speedup": sp,
                     "batch": sp and sp["batch_size"],
                     "student_p50": _get(tl.get(("student", sp and sp["batch_size"])) or {}, "p50_us"),
                     "energy_ratio": th["energy_ratio"], "energy_label": th["energy_label_text"]})
    for row in rows:
        sp = row.get("speedup")
        row["speedup_text"] = (f"{sp['ratio_p50']:.2f}x [{sp['ci95'][0]:.2f}–{sp['ci95'][1]:.2f}]" if sp else "–")
    return rows


def _targets(ra: dict[str, Any], rb: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each run was measured, side by side (empty when neither run has targets)."""
    if not (ra.get("targets") or rb.get("targets")):
        return []
    return _where_rows("A", ra) + _where_rows("B", rb)


def compare_results(
    ra: dict[str, Any], rb: dict[str, Any], a: Path | None = None, b: Path | None = None
) -> dict[str, Any]:
    """Compares two validated results dicts (see :func:`compare_runs`)."""
    return {
        "a": _run_meta(ra, "A", a),
        "b": _run_meta(rb, "B", b),
        "config": _config(ra, rb),
        "headline": _headline(ra, rb),
        "accuracy": _accuracy(ra, rb),
        "latency": _latency(ra, rb),
        "ratios": _ratios(ra, rb),
        "energy": _energy(ra, rb),
        "environment": _environment(ra, rb),
        "targets": _targets(ra, rb),
    }


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """Two finished runs side by side.

    Args:
        a: run folder (or results.json) of run A, e.g. the laptop.
        b: run folder (or results.json) of run B, e.g. the edge board.

    Returns:
        ``{"a", "b"`` (run facts), ``"config"`` (hashes, ``identical``, differing keys), ``"headline"``,
        ``"accuracy"`` (``models``, ``distill``), ``"latency"`` (p50 per model and batch, with ``b_over_a``),
        ``"ratios"`` (with CIs and ``ci_overlap``), ``"energy"``, ``"environment"`` (rows with ``same``)``}``.

    Raises:
        ConfigError: a results.json is missing or invalid (the message names the file).
    """
    from kd2deploy.report.rerender import load_results, results_file

    return compare_results(load_results(a), load_results(b), results_file(a), results_file(b))


def render_compare_markdown(cmp: dict[str, Any]) -> str:
    from kd2deploy.report import _env

    return _env().get_template("compare.md.j2").render(c=cmp)


def render_compare_html(cmp: dict[str, Any]) -> str:
    from kd2deploy.report import _env

    env = _env()
    env.autoescape = True
    return env.get_template("compare.html.j2").render(c=cmp)


def compare_text(a: Path, b: Path, fmt: str = "md") -> str:
    """The comparison of runs ``a`` and ``b`` as Markdown (``md``) or HTML: the classifier comparison, or the
    task's own ``render_compare`` where its adapter has one.

    Raises:
        ConfigError: a results.json is missing or invalid, or the two runs are of different tasks.
    """
    from kd2deploy.report.rerender import load_results, results_file
    from kd2deploy.tasks.base import task_named

    ra, rb = load_results(a), load_results(b)
    ta, tb = ra.get("task", "tensor"), rb.get("task", "tensor")
    if ta != tb:
        raise ConfigError(f"{results_file(b)}: a {tb} run cannot be set beside {results_file(a)}, a {ta} run; "
                          "compare two runs of one task")
    own = getattr(task_named(ta), "render_compare", None)
    if own is not None:
        return own(ra, rb, results_file(a), results_file(b), fmt)
    cmp = compare_results(ra, rb, results_file(a), results_file(b))
    return render_compare_markdown(cmp) if fmt == "md" else render_compare_html(cmp)


def write_compare(a: Path, b: Path, out: Path) -> Path:
    """Compares runs ``a`` and ``b`` and writes the comparison to ``out`` (.md or .html) atomically."""
    from kd2deploy.rundir import write_atomic

    out = Path(out)
    fmt = {".md": "md", ".html": "html"}.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{out}: the comparison is written as .md or .html, not {out.suffix or 'no suffix'!r}"
        )
    return write_atomic(out, compare_text(a, b, fmt))
