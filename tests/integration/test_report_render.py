"""The stakeholder report on one real tiny run: schema, rendering in headless Chromium, numbers that agree
across JSON / HTML / Markdown, re-rendering, comparison, and the shipped (stamped) student.

One pipeline run (module fixture) feeds every test; tests that change files work on copies.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kd2deploy.errors import ConfigError
from tests.conftest import TINY_PIPELINE

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from kd2deploy.config import load_config
    from kd2deploy.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("report")
    pipeline = root / "tiny.yaml"
    pipeline.write_text(TINY_PIPELINE)
    run = run_pipeline(load_config(pipeline), root / "runs", source=pipeline)
    return run.dir


@pytest.fixture(scope="module")
def results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


# ------------------------------------------------------------------------------------------------ schema
def test_results_json_validates_and_errors_name_the_path(results):
    from kd2deploy.report.schema import validate_results

    validate_results(results)
    bad = copy.deepcopy(results)
    bad["benchmark"]["results"][1]["p50_us"] = "fast"
    with pytest.raises(
        ConfigError, match=r"^r\.json: \$\.benchmark\.results\[1\]\.p50_us: 'fast' is not of type"
    ):
        validate_results(bad, source="r.json")
    del bad["headline"]
    with pytest.raises(ConfigError, match=r"\$: 'headline' is a required property"):
        validate_results(bad)
    with pytest.raises(ConfigError, match=r"\$\.schema_version: 2; this kd2deploy reads schema_version 1"):
        validate_results({**results, "schema_version": 2})


def _variants(results: dict) -> dict[str, dict]:
    """The run as it would look with sections missing: energy off, one seed, no baseline, no controls."""
    from kd2deploy.pipeline import headline

    out = {}
    r = copy.deepcopy(results)
    r["energy"] = {"enabled": False}
    r["headline"] = headline(r)
    out["energy disabled"] = r
    r = copy.deepcopy(results)
    d = r["distill"]
    d["seeds"], d["per_seed"] = d["seeds"][:1], d["per_seed"][:1]
    d["summary"] = {
        a: {"mean": v["test_accuracy"], "sd": 0.0, "n": 1} for a, v in d["per_seed"][0].items() if a != "seed"
    }
    out["one seed"] = r
    r = copy.deepcopy(results)
    b = r["benchmark"]
    b["results"] = [x for x in b["results"] if "@" not in x["model"]]
    b["ratios"] = [x for x in b["ratios"] if "@" not in x["numerator"]]
    b["settings"]["torch_baseline"] = False
    out["no torch baseline"] = r
    r = copy.deepcopy(results)
    r["export"].pop("student_scratch", None)
    d = r["distill"]
    d["arms"], d["gap_closed"] = ["kd"], None
    d["summary"] = {"kd": d["summary"]["kd"]}
    d["per_seed"] = [{"seed": s["seed"], "kd": s["kd"]} for s in d["per_seed"]]
    r["headline"] = headline(r)
    out["no controls"] = r
    r = copy.deepcopy(results)
    r["variants"]["student"]["failed"] = [{"name": "fp16-keepio", "kind": "fp16", "reason": "variant failed: X"}]
    out["a variant failed"] = r
    r = copy.deepcopy(results)
    r["variants"] = {}
    out["no variants"] = r
    return out


def test_reports_render_with_sections_missing(results, monkeypatch):
    from kd2deploy.report import plots, render_html, render_markdown
    from kd2deploy.report.schema import validate_results

    assert 'id="kpi-energy">–' in render_html(_variants(results)["energy disabled"])  # with its real figures
    for name in ("tradeoff_plot", "latency_plot", "throughput_plot", "curves_plot", "energy_plot"):
        monkeypatch.setattr(plots, name, lambda *a, **k: None)  # the rest: templates and view only (fast)
    for name, r in _variants(results).items():
        validate_results(r, source=name)
        md, html = render_markdown(r), render_html(r)
        assert r["headline"]["text"] in md and "## Provenance" in md, name
        assert 'id="kpi-accuracy"' in html and 'id="provenance"' in html, name
    md = render_markdown(_variants(results)["energy disabled"])
    assert "Not measured: energy tracking was disabled" in md and "| Energy per inference | **–** |" in md
    assert "one seed: no spread" in render_markdown(_variants(results)["one seed"])
    assert "teacher@torch-eager-cpu" not in render_markdown(_variants(results)["no torch baseline"])
    assert "**student.fp16-keepio**: not made: variant failed: X" in render_markdown(
        _variants(results)["a variant failed"])
    assert "shipping guard" not in render_markdown(_variants(results)["no variants"])


def test_report_says_what_the_search_did(results, monkeypatch):
    """distill.search is on by default: the tiny pipeline leaves T and alpha unset, so its report names the
    candidates and the choice; a search with nothing to choose, and one that could not run, say so."""
    from kd2deploy.report import plots, render_markdown

    search = results["distill"]["search"]
    assert set(search["families"]) == {"kd"}  # scratch has nothing to choose
    assert search["families"]["kd"]["space"]["temperature"] == [1.0, 2.0, 4.0]
    md = render_markdown(results)
    assert "Settings searched on the validation split" in md and "kd (temperature in [1.0, 2.0, 4.0], alpha in" in md
    assert f"temperature = {search['chosen']['temperature']}" in md
    for name in ("tradeoff_plot", "latency_plot", "throughput_plot", "curves_plot", "energy_plot"):
        monkeypatch.setattr(plots, name, lambda *a, **k: None)
    fixed, skipped = copy.deepcopy(results), copy.deepcopy(results)
    fixed["distill"]["search"] = {"families": {}, "selection": search["selection"], "chosen": {}}
    assert "Settings search (distill.search, on): nothing to choose" in render_markdown(fixed)
    skipped["distill"]["search"] = {"skipped": "not run under --nproc (every rank would run its own study)"}
    assert "Settings search (distill.search) not run: not run under --nproc" in render_markdown(skipped)


# ------------------------------------------------------------------------------------------------ HTML
def test_html_is_self_contained_and_printable(run_dir):
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "external resource"
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", html, re.I) and "@import" not in html
    assert "<script" not in html
    srcs = re.findall(r"""src=["']([^"']+)""", html)
    assert len(srcs) >= 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    hrefs = re.findall(r"""href=["']([^"']+)""", html)  # in-page anchors, or ship/MODEL_CARD.md beside it
    assert all(not re.match(r"[a-z][a-z0-9+.-]*:|//|/", h, re.I) for h in hrefs), hrefs
    assert "@media print" in html


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (CI installs it: apt-get install chromium)"
)
def test_html_renders_in_headless_chromium(run_dir, tmp_path):
    from PIL import Image

    url = (run_dir / "report.html").as_uri()
    common = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "report.png"
    out = subprocess.run(
        [*common, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1200,3000", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), out.stderr[-2000:]
    console = [
        ln
        for ln in out.stderr.splitlines()
        if "CONSOLE" in ln or "Uncaught" in ln or "Failed to load resource" in ln or "net::ERR_" in ln
    ]
    assert not console, "\n".join(console)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (3000, 1200)
    rgb = img.reshape(-1, 3).astype(np.uint32)
    assert len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])) > 50, (
        "the screenshot is (nearly) one colour"
    )
    assert (img.reshape(-1, 3) < 100).all(axis=1).mean() > 0.002, "no dark text on the page"
    top = img[:400]  # the verdict banner (green or orange) is drawn near the top
    assert ((top[..., 0].astype(int) - top[..., 2]) > 20).mean() > 0.01, "no verdict banner at the top"


# ------------------------------------------------------------------------------------------------ numbers
def _numbers(text: str, fmt: str) -> dict[str, str]:
    pats = {
        "html": [
            r'id="kpi-speedup">([\d.]+)×',
            r'id="kpi-energy">([\d.]+)× (less|more)',
            r'id="kpi-accuracy">([+-][\d.]+) pp',
        ],
        "md": [
            r"\| Speed-up \| \*\*([\d.]+)×",
            r"\| Energy per inference[^|]*\| \*\*([\d.]+)× (less|more)",
            r"\| Accuracy change \| \*\*([+-][\d.]+) pp",
        ],
    }[fmt]
    found = [re.search(p, text) for p in pats]
    assert all(found), (fmt, [p for p, f in zip(pats, found, strict=True) if not f])
    speed, energy, acc = found
    e = float(energy.group(1))
    return {
        "speedup": speed.group(1),
        "energy": f"{e if energy.group(2) == 'less' else 1 / e:.2f}",
        "accuracy": acc.group(1),
        "energy_dir": energy.group(2),
    }


def test_headline_numbers_agree_in_json_html_markdown(run_dir, results):
    h = results["headline"]
    assert h["speedup_p50_ratio"] and h["energy_ratio"] and h["accuracy_delta_pp"] is not None
    from_json = {
        "speedup": f"{h['speedup_p50_ratio']:.2f}",
        "accuracy": f"{h['accuracy_delta_pp']:+.2f}",
        "energy": f"{h['energy_ratio']:.2f}",
    }
    html = _numbers((run_dir / "report.html").read_text(), "html")
    md = _numbers((run_dir / "report.md").read_text(), "md")
    assert html == md
    assert html["speedup"] == from_json["speedup"] and html["accuracy"] == from_json["accuracy"]
    if html["energy_dir"] == "less":
        assert html["energy"] == from_json["energy"]
    else:  # shown as 1/ratio "× more": equal up to the rounding of the shown figure
        assert abs(1 / float(html["energy"]) - h["energy_ratio"]) < 0.01 * h["energy_ratio"] + 1e-3
    # the verdict is the same sentence everywhere
    from kd2deploy.report.view import verdict

    title = verdict(results)["title"]
    assert (
        f"**{title}**" in (run_dir / "report.md").read_text()
        and title in (run_dir / "report.html").read_text()
    )


# ------------------------------------------------------------------------------------------------ re-render
def test_rerender_reproduces_the_reports(run_copy):
    from kd2deploy.report.rerender import rerender

    before = {f: (run_copy / f).read_text() for f in ("report.md", "report.html")}
    (run_copy / "report.md").unlink()
    written = rerender(run_copy)
    assert sorted(p.name for p in written) == ["report.html", "report.md"]
    assert (run_copy / "report.md").read_text() == before["report.md"]
    assert (run_copy / "report.html").read_text() == before["report.html"]


def test_rerender_errors_name_the_file(run_copy, tmp_path):
    from kd2deploy.report.rerender import rerender

    res = run_copy / "results.json"
    res.write_text(res.read_text()[:-20])
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(res))}:\d+:\d+: not valid JSON"):
        rerender(run_copy)
    res.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(res))}: \$: '\w+' is a required property"):
        rerender(run_copy)
    res.rename(run_copy / "results.partial.json")
    with pytest.raises(ConfigError, match=r"results\.json: file not found; results\.partial\.json is there"):
        rerender(run_copy)
    with pytest.raises(ConfigError, match="run folder not found"):
        rerender(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ compare
def test_compare_run_with_itself(run_dir, tmp_path):
    from kd2deploy.report.compare import (
        compare_runs,
        render_compare_html,
        render_compare_markdown,
        write_compare,
    )

    cmp = compare_runs(run_dir, run_dir)
    assert cmp["config"]["identical"] and cmp["config"]["differences"] == []
    assert all(r["same"] for r in cmp["environment"])
    assert cmp["latency"] and all(r["b_over_a"] == pytest.approx(1.0) for r in cmp["latency"])
    assert {(r["model"], r["batch_size"]) for r in cmp["latency"]} >= {("teacher", 1), ("student", 1)}
    assert all(r["ci_overlap"] for r in cmp["ratios"])
    assert all(r["delta_pp"] == 0 for r in cmp["accuracy"]["models"])
    assert cmp["energy"]["a_label"] == cmp["energy"]["b_label"] in ("measured", "modelled")
    md, html = render_compare_markdown(cmp), render_compare_html(cmp)
    assert "configurations are identical" in md and cmp["config"]["a_hash"] in md
    assert "teacher / student" in md and "| CPU |" in md
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) and 'id="config-verdict"' in html
    assert write_compare(run_dir, run_dir, tmp_path / "c.html").read_text() == html
    with pytest.raises(ConfigError, match=r"c\.txt: the comparison is written as \.md or \.html"):
        write_compare(run_dir, run_dir, tmp_path / "c.txt")


def test_compare_reports_config_differences(run_dir, results, tmp_path):
    from kd2deploy.report.compare import compare_results

    other = copy.deepcopy(results)
    other["pipeline"]["resolved"]["benchmark"]["intra_op_threads"] = 4
    other["pipeline"]["config_hash"] = "0" * 64
    other["environment"]["cpu"] = "Cortex-A76"
    cmp = compare_results(results, other)
    assert not cmp["config"]["identical"]
    assert cmp["config"]["differences"] == [{"key": "benchmark.intra_op_threads", "a": 1, "b": 4}]
    assert [r["field"] for r in cmp["environment"] if not r["same"]] == ["CPU"]


# ------------------------------------------------------------------------------------------------ shipping
def test_ship_student_stamps_metadata_and_keeps_outputs(run_copy, results):
    import onnx
    import onnxruntime as ort

    from kd2deploy.export.onnx_export import sha256_file
    from kd2deploy.report.schema import validate_results
    from kd2deploy.ship.package import PREPROCESSING, ship_student, stamp_onnx

    res = copy.deepcopy(results)
    path = ship_student(res, run_copy)
    assert path == run_copy / "ship" / "student.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    for key in (
        "accuracy",
        "latency_p50",
        "teacher",
        "config_hash",
        "kd2deploy_version",
        "input_name",
        "input_shape",
        "preprocessing",
        "labels",
    ):
        assert meta.get(key), key
    assert (
        meta["config_hash"] == results["pipeline"]["config_hash"] and meta["preprocessing"] == PREPROCESSING
    )
    assert meta["input_name"] == "input" and meta["input_shape"] == "[batch, 1, 8, 8]"
    assert meta["accuracy"].startswith(f"{results['headline']['student_accuracy']:.4f}")
    assert res["ship"]["sha256"] == sha256_file(path) != results["export"]["student"]["sha256"]
    assert res["ship"]["source_sha256"] == results["export"]["student"]["sha256"]
    validate_results(res)

    x = np.random.default_rng(0).uniform(0, 16, (5, 1, 8, 8)).astype(np.float32)
    outs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (run_copy / "models" / "student.onnx", path)
    ]
    np.testing.assert_array_equal(outs[0], outs[1])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map["config_hash"] == meta["config_hash"]

    stamp_onnx(path, {"accuracy": "replaced", "extra": "1"})  # same key replaced, others kept
    props = [(p.key, p.value) for p in onnx.load(str(path)).metadata_props]
    assert [k for k, _ in props].count("accuracy") == 1 and ("accuracy", "replaced") in props
    assert ("config_hash", meta["config_hash"]) in props and ("extra", "1") in props
    assert not [f for f in path.parent.iterdir() if f.name.startswith(".")], "temporary file left behind"
    with pytest.raises(TypeError, match="must be str"):
        stamp_onnx(path, {"accuracy": 0.9})


def test_the_guards_pick_is_what_ships(run_copy, results):
    """When the guard picks a variant, ship/student.onnx is that variant, stamped with its own numbers."""
    import onnx

    from kd2deploy.ship.package import ship_student

    res = copy.deepcopy(results)
    entry = res["variants"]["student"]
    (v,) = entry["variants"]
    entry["selection"]["shipped"] = v["label"]
    path = ship_student(res, run_copy)
    assert res["ship"]["model"] == v["label"] and res["ship"]["variant"] == v["name"]
    assert res["ship"]["source"] == f"models/variants/{v['path']}" and res["ship"]["source_sha256"] == v["sha256"]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["accuracy"].startswith(f"{v['accuracy']:.4f}") and meta["model"].endswith(f"{v['name']} variant")
    assert "kd2deploy.variant" in meta  # the variant's own settings travel too
    assert f"made from `models/variants/{v['path']}`" in (run_copy / "ship" / "MODEL_CARD.md").read_text()


def test_latency_from_another_device_joins_the_report(run_copy, tmp_path, capsys):
    """The standalone harness's JSON, matched to the run's files by sha256, is added and rendered."""
    from kd2deploy.bench import harness
    from kd2deploy.report.device import attach_device, device_entry
    from kd2deploy.report.schema import validate_results

    args = [str(run_copy / "models" / "teacher.onnx"), str(run_copy / "models" / "student.onnx"),
            "--batch-sizes", "1", "--min-duration", "0.02", "--min-runs", "20", "--warmup-s", "0", "--rounds", "2",
            "--no-flops-probe", "--quiet", "--json", str(tmp_path / "pi5.json")]
    assert harness.main(args) == 0
    capsys.readouterr()
    assert attach_device(run_copy, tmp_path / "pi5.json") == "pi5"
    results = json.loads((run_copy / "results.json").read_text())
    validate_results(results)
    dev = results["devices"]["pi5"]
    assert {r["model"] for r in dev["results"]} == {"teacher", "student"} and not dev["not_this_run"]
    assert (run_copy / "devices" / "pi5.json").is_file()
    out = subprocess.run([sys.executable, "-m", "kd2deploy", "report", str(run_copy), "--device",
                          str(tmp_path / "pi5.json"), "--device-name", "board-b"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    md = (run_copy / "report.md").read_text()
    assert "## Latency on pi5" in md and "## Latency on board-b" in md and "p50 teacher / student at batch 1:" in md
    assert 'id="device-pi5"' in (run_copy / "report.html").read_text()
    doc = json.loads((tmp_path / "pi5.json").read_text())
    doc["models"][1]["sha256"] = "0" * 64  # a re-exported student: not this run's file
    entry = device_entry(doc, results, "devices/x.json")
    assert entry["not_this_run"] == ["student"]
    assert {(r["model"], r["this_run"]) for r in entry["results"]} == {("teacher", True), ("student", False)}
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": []}')
    with pytest.raises(ConfigError, match=r"bad\.json: not a harness JSON: missing settings, environment, models"):
        attach_device(run_copy, bad)


def test_model_card_says_what_matters_and_its_snippet_runs(run_copy, results, monkeypatch, capsys):
    from kd2deploy.ship.package import ship_student

    res = copy.deepcopy(results)
    path = ship_student(res, run_copy)
    card = (path.parent / "MODEL_CARD.md").read_text()
    assert res["ship"]["sha256"] in card and results["pipeline"]["config_hash"] in card
    assert "standardisation is inside the graph" in card and results["energy"]["label"] in card
    assert "intra-op" in card and "batch 1" in card and "CPUExecutionProvider" in card
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert len(snippet.strip().splitlines()) == 5
    monkeypatch.chdir(path.parent)
    exec(compile(snippet, "MODEL_CARD.md", "exec"), {})  # noqa: S102 - our own generated snippet
    assert re.fullmatch(r"\[\d+\]\n", capsys.readouterr().out)


# ------------------------------------------------------------------------------------------------ first screen
MEASURE = """<script>
window.addEventListener("load", () => {
  const box = (sel) => { const e = document.querySelector(sel); return e ? e.getBoundingClientRect() : null; };
  const t = document.querySelector("#models-table");
  const m = {verdict: box("#verdict"), kpis: box("#headline"), glance: box("#glance"),
             models_scroll: t ? t.scrollWidth : null, models_box: t ? t.parentElement.clientWidth : null,
             inner: [window.innerWidth, window.innerHeight]};
  document.body.setAttribute("data-measure", JSON.stringify(m));
});
</script>"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (CI installs it: apt-get install chromium)"
)
def test_first_screen_at_1280px_decides_and_the_models_table_fits(run_dir, tmp_path):
    """At 1280 x 800 the verdict about ship/student.onnx, its uncertainty and the three tiles are on the first
    screen, and the models table is not wider than its box (its right columns were cut off)."""
    import html as html_mod

    page = tmp_path / "report.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", MEASURE + "</body>"))
    out = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,800", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    found = re.search(r'data-measure="([^"]+)"', out.stdout)
    assert found, out.stderr[-2000:]
    m = json.loads(html_mod.unescape(found.group(1)))
    assert m["inner"][0] == 1280
    assert m["verdict"]["bottom"] <= 800 and m["kpis"]["bottom"] <= 800, m
    assert m["models_scroll"] <= m["models_box"], m
    text = (run_dir / "report.html").read_text()
    verdict_html = text[text.index('id="verdict"'):text.index('id="headline"')]
    assert "ship/student.onnx" in verdict_html and "95 % CI" in verdict_html  # about the file, with uncertainty
    assert "FP32 teacher" in verdict_html


def test_training_curves_show_the_error_rate_on_a_log_axis(results):
    """The arms differ in the last percent: the plot shows 1 - accuracy on a log scale, floored at half a
    validation sample so a perfect epoch stays on the axis."""
    from kd2deploy.report.plots import curve_errors

    data = curve_errors(results)
    epochs, stack = data["kd"]
    d = results["distill"]["per_seed"][0]["kd"]["curve"]
    assert stack[0][0] == pytest.approx(max(1 - d[0]["val_acc"], 0.5 / results["data"]["n_val"]))
    assert (stack > 0).all() and len(epochs) == len(d)


def test_model_card_numbers_equal_the_reports_for_the_shipped_file(run_dir, results):
    from kd2deploy.ship.package import card_numbers

    card = (run_dir / "ship" / "MODEL_CARD.md").read_text()
    report = (run_dir / "report.html").read_text()
    h = results["headline"]
    n = card_numbers(h)
    assert h["shipped"]["label"] == results["ship"]["model"]
    assert f"| p50 speed-up vs the FP32 teacher at batch {h['speedup_p50_batch']} | {n['speedup']}× " \
           f"[95 % CI {n['speedup_ci']}]" in card
    assert f'id="kpi-speedup">{n["speedup"]}×' in report and f"95 % CI {n['speedup_ci']}" in report
    assert f"| accuracy change vs the FP32 teacher (paired, test) | {n['accuracy_delta']} pp " \
           f"[95 % CI {n['accuracy_delta_ci']} pp]" in card
    assert f'id="kpi-accuracy">{n["accuracy_delta"]} pp' in report
    acc = h["accuracy"]["shipped"]
    shown = f"{100 * acc['accuracy']:.2f} % [{100 * acc['ci95'][0]:.1f}–{100 * acc['ci95'][1]:.1f}]"
    assert shown in card and shown.split(" [")[0] in report
    assert h["verdict"]["title"] in card
