"""Energy labelling and per-inference arithmetic, without running a tracker."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from kd2deploy.config import TargetProfile
from kd2deploy.energy import quiet
from kd2deploy.energy.labels import _a, classify, detected_facts
from kd2deploy.energy.meter import (
    J_PER_KWH,
    EnergyMeter,
    EnergyRecord,
    active_j_per_inference,
    g_co2e_per_million,
    gross_j_per_inference,
    kwh_per_million,
    mean_sd,
    measure_inference_energy,
    summarize_model,
    target_energy_kwh,
    window_power_w,
)


def facts(cpu=None, gpu=None, ram=None, tracking_mode="machine"):
    """Detected facts in the shape detected_facts returns; defaults are this 2-vCPU VM."""
    base_cpu = {
        "device": "CPU",
        "mode": "cpu_load",
        "model": "AMD EPYC",
        "tdp_w": 8.0,
        "tdp_source": "per-thread default",
        "tracking_mode": tracking_mode,
    }
    base_gpu = {"device": None, "vendor": None, "count": 0, "model": "", "energy_counter": None}
    base_ram = {
        "device": "RAM",
        "power_w": 20.0,
        "forced_power_w": None,
        "tracking_mode": tracking_mode,
        "total_gb": 23.5,
    }
    return {
        "cpu": {**base_cpu, **(cpu or {})},
        "gpu": {**base_gpu, **(gpu or {})},
        "ram": {**base_ram, **(ram or {})},
        "pue": 1.0,
    }


NVML = {"device": "GPU", "vendor": "nvidia", "count": 1, "model": "1 x H100", "energy_counter": True}


# ------------------------------------------------------------------------------------- classify
def test_cpu_load_and_ram_allowance_are_modelled_with_the_expected_sentence():
    m = classify(facts())
    assert m["label"] == "modelled" and m["active_label"] == "modelled" and not m["mixed"]
    assert m["cpu"]["source"] == "cpu_load model" and m["ram"]["source"] == "RAM allowance"
    assert m["gpu"]["label"] is None
    assert m["source"] == "cpu_load model, RAM allowance"
    assert m["modelled_components"] == ["cpu", "ram"] and m["measured_components"] == []
    assert m["explanation"] == (
        "CPU power modelled by CodeCarbon from an 8 W default TDP and CPU load (no RAPL); "
        "RAM a constant 20 W allowance sized from the installed memory; "
        "the student/teacher energy ratio therefore follows run time and load by construction."
    )


def test_rapl_cpu_is_measured_but_ram_allowance_keeps_the_total_modelled():
    m = classify(facts(cpu={"mode": "intel_rapl", "tdp_source": None}))
    assert m["cpu"] == {
        "label": "measured",
        "source": "RAPL",
        "constant": False,
        "text": "CPU energy measured by RAPL",
    }
    assert m["label"] == "modelled" and m["mixed"]
    # the constant RAM allowance cancels in idle-subtracted figures, which are then RAPL only
    assert m["active_label"] == "measured"
    assert "cancel in idle-subtracted figures" in m["explanation"]


def test_all_components_metered_is_measured():
    m = classify(facts(cpu={"mode": "intel_rapl"}, gpu=NVML, ram={"device": None}))
    assert m["label"] == "measured" and m["active_label"] == "measured" and not m["mixed"]
    assert m["source"] == "RAPL, NVML"
    assert m["explanation"] == "CPU energy measured by RAPL; GPU energy measured by NVML (energy counter)."
    pi = classify(
        facts(cpu={"device": "Raspberry", "mode": "raspberry_pmic"}, ram={"device": "raspberry_pmic"})
    )
    assert pi["label"] == "measured" and pi["ram"]["source"] == "Raspberry Pi PMIC"


def test_nvml_gpu_is_measured_next_to_a_modelled_cpu():
    m = classify(facts(gpu=NVML))
    assert m["gpu"]["label"] == "measured" and m["gpu"]["source"] == "NVML"
    assert m["label"] == "modelled" and m["mixed"] and m["active_label"] == "modelled"
    assert m["measured_components"] == ["gpu"] and m["modelled_components"] == ["cpu", "ram"]
    no_counter = classify(facts(gpu={**NVML, "energy_counter": False}))
    assert "NVML (power readings)" in no_counter["explanation"]
    amd = classify(facts(gpu={**NVML, "vendor": "amd"}))
    assert amd["gpu"]["label"] == "measured" and amd["gpu"]["source"] == "AMD SMI"


@pytest.mark.parametrize(
    "mode,source",
    [
        ("windows_emi", "Windows EMI (RAPL)"),
        ("intel_power_gadget", "Intel Power Gadget"),
        ("apple_powermetrics", "powermetrics"),
    ],
)
def test_other_cpu_meters_are_measured(mode, source):
    m = classify(facts(cpu={"mode": mode}))
    assert m["cpu"]["label"] == "measured" and m["cpu"]["source"] == source


def test_constant_tdp_model_follows_run_time_only():
    m = classify(facts(cpu={"mode": "constant", "tdp_w": 85.0, "tdp_source": "generic"}))
    assert m["cpu"]["source"] == "constant TDP model" and m["cpu"]["constant"]
    assert m["label"] == "modelled" and m["active_label"] == "modelled"
    assert "half of an 85 W generic TDP" in m["explanation"]
    assert m["explanation"].endswith("follows run time by construction.")


def test_process_mode_and_user_power_wording():
    m = classify(facts(tracking_mode="process", ram={"power_w": 10.0}))
    assert "this process's CPU time" in m["explanation"]
    assert "RAM a 10 W allowance sized from this process's memory" in m["explanation"]
    assert not m["ram"]["constant"]
    u = classify(facts(cpu={"tdp_w": 15.0, "tdp_source": "user"}, ram={"forced_power_w": 3.0}))
    assert (
        "a 15 W user-given TDP" in u["explanation"]
        and "RAM a constant 3 W given by the user" in u["explanation"]
    )


def test_unknown_or_missing_hardware_is_never_called_measured():
    assert classify(facts(cpu={"mode": "quantum_meter"}))["cpu"]["label"] == "modelled"
    empty = classify({})
    assert empty["label"] == "modelled" and empty["source"] == ""
    assert empty["explanation"].startswith("CodeCarbon detected no hardware")


def test_article():
    assert [_a(w) for w in (8, 11, 18, 20, 85, 110, 4.5)] == ["an", "an", "an", "a", "an", "a", "a"]


# ------------------------------------------------------------------------------- detected_facts
def _hw(name, **attrs):
    return type(name, (), {})() if not attrs else type(name, (), attrs)()


def _tracker(hardware, **attrs):
    t = SimpleNamespace(
        _hardware=hardware,
        _conf={"cpu_model": "AMD EPYC", "gpu_model": "", "ram_total_size": 8.0},
        _tracking_mode="machine",
        _force_cpu_power=None,
        _force_ram_power=None,
        _pue=1.0,
        get_detected_hardware=lambda: {},
    )
    for k, v in attrs.items():
        setattr(t, k, v)
    return t


def test_detected_facts_reads_codecarbon_hardware_objects(monkeypatch):
    import codecarbon.core.util

    monkeypatch.setattr(codecarbon.core.util, "count_cpus", lambda: 2)
    ram = _hw("RAM", total_power=lambda self: SimpleNamespace(W=20.0))
    cpu = _hw("CPU", _mode="cpu_load", _tdp=8, _is_generic_tdp=False)
    nv = _hw("NvidiaGPUDevice", _has_counter=True)
    gpu = _hw("GPU", devices=SimpleNamespace(devices=[nv]))
    f = detected_facts(_tracker([ram, cpu, gpu]))
    assert f["cpu"] == {
        "device": "CPU",
        "mode": "cpu_load",
        "model": "AMD EPYC",
        "tdp_w": 8.0,
        "tdp_source": "per-thread default",
        "tracking_mode": "machine",
    }
    assert f["ram"]["power_w"] == 20.0 and f["ram"]["device"] == "RAM"
    assert f["gpu"]["vendor"] == "nvidia" and f["gpu"]["count"] == 1 and f["gpu"]["energy_counter"] is True
    assert classify(f)["gpu"]["label"] == "measured"

    rapl = detected_facts(_tracker([ram, _hw("CPU", _mode="intel_rapl", _tdp=None, _is_generic_tdp=False)]))
    assert rapl["cpu"]["mode"] == "intel_rapl" and rapl["gpu"]["device"] is None
    assert classify(rapl)["cpu"]["label"] == "measured"
    registry = detected_facts(_tracker([_hw("CPU", _mode="cpu_load", _tdp=65, _is_generic_tdp=False)]))
    assert registry["cpu"]["tdp_source"] == "registry" and registry["ram"]["device"] is None
    forced = detected_facts(
        _tracker([_hw("CPU", _mode="cpu_load", _tdp=15, _is_generic_tdp=False)], _force_cpu_power=15.0)
    )
    assert forced["cpu"]["tdp_source"] == "user"


# ------------------------------------------------------------------------------- arithmetic
def test_idle_subtraction_by_hand():
    idle_kwh = 40 / J_PER_KWH  # 20 W for 2 s
    assert window_power_w(idle_kwh, 2.0) == pytest.approx(20.0)
    busy_kwh = 90 / J_PER_KWH  # 90 J in 3 s for 1000 inferences
    assert gross_j_per_inference(busy_kwh, 1000) == pytest.approx(0.09)
    assert active_j_per_inference(busy_kwh, 3.0, 1000, 20.0) == pytest.approx((90 - 60) / 1000)
    assert active_j_per_inference(50 / J_PER_KWH, 3.0, 10, 20.0) == pytest.approx(-1.0)  # not clipped
    assert kwh_per_million(0.036) == pytest.approx(0.01)
    assert g_co2e_per_million(0.036, 400.0) == pytest.approx(4.0)


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert mean_sd([5.0]) == {"mean": 5.0, "sd": None, "n": 1}
    assert mean_sd([]) == {"mean": None, "sd": None, "n": 0}


def test_target_profile_estimate():
    pi = TargetProfile(name="pi4", cpu_power_w=4.0, ram_power_w=1.0)
    assert target_energy_kwh(pi, 720.0) == pytest.approx(0.001)  # 5 W x 720 s = 3600 J


def test_summarize_model_by_hand():
    # two 2 s windows at 25 W, 100 and 50 inferences; idle 20 W -> active 5 W
    w = [(50 / J_PER_KWH, 2.0, 100), (50 / J_PER_KWH, 2.0, 50)]
    s = summarize_model(w, 20.0, 400.0, TargetProfile(name="edge", cpu_power_w=2.0))
    assert s["j_per_inference_gross"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["j_per_inference_gross"]["sd"] == pytest.approx(math.sqrt(0.125))
    assert s["j_per_inference_active"]["mean"] == pytest.approx((0.1 + 0.2) / 2)
    assert s["per_million_active"]["kwh"] == pytest.approx(0.15e6 / J_PER_KWH)
    assert s["per_million_gross"]["g_co2e"] == pytest.approx(0.75e6 / J_PER_KWH * 400.0)
    assert s["mean_power_w"] == pytest.approx(25.0) and s["inferences_per_window"] == [100, 50]
    assert s["target"]["j_per_inference"]["mean"] == pytest.approx((2 * 2 / 100 + 2 * 2 / 50) / 2)
    assert s["target"]["label"] == "estimate for target edge"
    assert summarize_model(w, None, 400.0)["j_per_inference_active"] is None


# ------------------------------------------------------------------------- measure_inference_energy
class FakeMeter:
    """Tracks nothing: a window draws 20 W idle, 25 W while a model runs."""

    target = None

    def __init__(self):
        self.labels = []

    def mode_info(self):
        return {
            "label": "modelled",
            "active_label": "modelled",
            "explanation": "fake.",
            "carbon_intensity": {"g_co2e_per_kwh": 400.0},
        }

    @contextmanager
    def track(self, label):
        import time

        rec = EnergyRecord(label=label)
        t0 = time.perf_counter()
        yield rec
        rec.duration_s = time.perf_counter() - t0
        watts = 20.0 if "idle" in label else 25.0
        rec.energy_kwh = watts * rec.duration_s / J_PER_KWH
        rec.ram_kwh = 20.0 * rec.duration_s / J_PER_KWH
        rec.cpu_kwh = rec.energy_kwh - rec.ram_kwh
        rec.emissions_kg = rec.energy_kwh * 0.4
        rec.cpu_power_w, rec.ram_power_w, rec.gpu_power_w = watts - 20.0, 20.0, 0.0
        self.labels.append(label)


def test_windows_interleave_and_subtract_idle():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run():
            calls[name] += 1

        return run

    meter, seen = FakeMeter(), []
    res = measure_inference_energy(
        meter,
        {"a": (runner("a"), 4), "b": (runner("b"), 1)},
        0.02,
        3,
        progress=lambda d, t, label: seen.append((d, t)),
    )
    assert meter.labels == [
        "infer:a:r0",
        "infer:b:r0",
        "infer:idle:r0",
        "infer:b:r1",
        "infer:idle:r1",
        "infer:a:r1",
        "infer:idle:r2",
        "infer:a:r2",
        "infer:b:r2",
    ]
    assert seen == [(i, 9) for i in range(1, 10)]
    assert res["idle_power_w"] == pytest.approx(20.0)
    assert res["carbon_intensity_g_co2e_per_kwh"] == pytest.approx(400.0)
    a = res["models"]["a"]
    assert a["batch_size"] == 4 and a["windows"] == 3
    assert sum(a["inferences_per_window"]) == 4 * (calls["a"] - 3)  # 3 warm-up calls are not counted
    for rec, n in zip(a["records"], a["inferences_per_window"], strict=True):
        assert rec["energy_kwh"] * J_PER_KWH / n == pytest.approx(25.0 * rec["duration_s"] / n)
    expected_active = [
        5.0 * r["duration_s"] / n for r, n in zip(a["records"], a["inferences_per_window"], strict=True)
    ]
    assert a["j_per_inference_active"]["mean"] == pytest.approx(sum(expected_active) / 3)
    assert a["label"] == "modelled" and res["label"] == "modelled" and res["explanation"] == "fake."


def test_no_idle_window_gives_no_active_figures():
    meter = FakeMeter()
    res = measure_inference_energy(meter, {"a": (lambda: None, 1)}, 0.01, 1, idle=False)
    assert meter.labels == ["infer:a:r0"]
    assert res["idle"] is None and res["models"]["a"]["j_per_inference_active"] is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        measure_inference_energy(FakeMeter(), {}, 1.0, 1)
    with pytest.raises(ValueError, match="reserved"):
        measure_inference_energy(FakeMeter(), {"__idle__": (lambda: None, 1)}, 1.0, 1)
    with pytest.raises(ValueError, match="measure_power_secs"):
        EnergyMeter("unused", measure_power_secs=0)


# ------------------------------------------------------------------------------------- quiet
def test_codecarbon_log_records_are_captured_not_printed(capfd):
    quiet.silence_logger()
    before = quiet.seen()
    cc = logging.getLogger("codecarbon")
    cc.addHandler(logging.StreamHandler())  # what CodeCarbon adds on every tracker
    try:
        cc.error("boom from codecarbon")
        cc.warning("Multiple instances of codecarbon are allowed to run at the same time.")
    finally:
        cc.handlers.pop()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert quiet.captured(before) == ["error: boom from codecarbon"]


def test_disabled_meter_only_times_and_refuses_inference_energy(tmp_path):
    from kd2deploy.config import EnergyConfig
    from kd2deploy.energy.meter import EnergyError

    meter = EnergyMeter.from_config(
        EnergyConfig(enabled=False, tracking_mode="process"), tmp_path, project="p"
    )
    assert (meter.enabled, meter.tracking_mode, meter.project) == (False, "process", "p")
    with meter.track("train:teacher") as rec:
        pass
    assert rec.duration_s is not None and rec.energy_kwh is None and rec.energy_j is None
    assert meter.records == [rec] and meter.mode_info()["label"] is None
    assert not (tmp_path / "emissions.csv").exists()
    with pytest.raises(EnergyError, match="disabled"):
        measure_inference_energy(meter, {"a": (lambda: None, 1)}, 0.01, 1)


def test_stop_waits_for_the_timer_measurement_instead_of_doubling_it():
    import threading
    import time

    from kd2deploy.energy.meter import _covered_s, _serialize_measurements

    active, overlaps = [0], []

    def measure():
        active[0] += 1
        overlaps.append(active[0])
        time.sleep(0.02)
        active[0] -= 1

    tracker = SimpleNamespace(_measure_power_and_energy=measure, _scheduler=SimpleNamespace(function=measure))
    _serialize_measurements(tracker)
    timer = threading.Thread(target=tracker._scheduler.function)
    timer.start()
    tracker._measure_power_and_energy()  # what stop() calls
    timer.join()
    assert overlaps == [1, 1]
    assert _covered_s(10.0, 12.5) == 2.5
    assert _covered_s(10.0, None) is None and _covered_s(None, 1.0) is None
