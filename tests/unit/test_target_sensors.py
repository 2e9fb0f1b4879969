"""Energy sensor readers against recorded sysfs layouts (tests/data/sensors), and the target energy summary."""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import pytest

from kd2deploy.targets.remote import sensors

DATA = Path(__file__).resolve().parents[1] / "data" / "sensors"


@pytest.fixture
def layout(tmp_path):
    def copy(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(DATA / name, root)
        return root

    return copy


def _set(root: Path, rel: str, value: int) -> None:
    (root / rel).write_text(f"{value}\n")


def test_rapl_adds_package_domains_only_and_undoes_a_wrap(layout):
    root = layout("rapl-intel")
    sensor, note = sensors.rapl(str(root))
    assert sensor is not None and note == "RAPL powercap readable"
    assert [n for n, _, _ in sensor.domains] == ["intel-rapl:0 package-0", "intel-rapl:1 psys"]
    token = sensor.begin()
    _set(root, "sys/class/powercap/intel-rapl:0/energy_uj", 123456789 + 2_500_000)  # +2.5 J
    _set(root, "sys/class/powercap/intel-rapl:0:0/energy_uj", 10**11)  # a sub-domain: never added
    top = 262143328850
    _set(root, "sys/class/powercap/intel-rapl:1/energy_uj", 500_000)  # wrapped past max_energy_range_uj
    joules = sensor.end(token)
    assert joules == pytest.approx(2.5 + (500_000 + top - 987654321) / 1e6)


@pytest.mark.skipif(sys.platform != "linux" or __import__("os").geteuid() == 0,
                    reason="root reads any file, so an unreadable energy_uj cannot be made here")
def test_rapl_readable_by_root_only_is_said_so(layout):
    root = layout("rapl-intel")
    for p in root.glob("sys/class/powercap/*/energy_uj"):
        p.chmod(stat.S_IWUSR)
    sensor, note = sensors.rapl(str(root))
    assert sensor is None and "root only" in note


def test_jetson_hwmon_uses_the_board_input_rail(layout):
    root = layout("jetson-orin-hwmon")
    sensor, _ = sensors.ina3221(str(root))
    assert sensor is not None and "VDD_IN" in sensor.source and "VDD_SOC" not in sensor.source
    assert sensor.read_w() == pytest.approx(5072 * 1241 / 1e6)  # mV x mA


def test_jetson_hwmon_without_an_input_rail_sums_the_rails(layout):
    root = layout("jetson-orin-hwmon")
    (root / "sys/class/hwmon/hwmon1/in1_label").write_text("VDD_GPU\n")
    sensor, _ = sensors.ina3221(str(root))
    assert "sum of rails" in sensor.source
    assert sensor.read_w() == pytest.approx((5072 * 1241 + 5064 * 322 + 5064 * 355) / 1e6)


def test_jetson_iio_layout(layout):
    root = layout("jetson-nano-iio")
    sensor, _ = sensors.ina3221(str(root))
    assert sensor is not None and "POM_5V_IN" in sensor.source
    assert sensor.read_w() == pytest.approx(2.313)


def test_sampled_sensor_integrates_power_over_time(layout):
    root = layout("jetson-orin-hwmon")
    sensor, _ = sensors.ina3221(str(root))
    sensor.interval = 0.02
    import time

    token = sensor.begin()
    t0 = time.perf_counter()
    time.sleep(0.3)
    joules = sensor.end(token)
    assert joules == pytest.approx(5072 * 1241 / 1e6 * (time.perf_counter() - t0), rel=0.1)


def test_pi5_pmic_output_is_parsed():
    text = (DATA / "pi5-pmic_read_adc.txt").read_text()
    rails = [("3V7_WL_SW", 0.09466522, 3.629252), ("3V3_SYS", 0.08197812, 3.316529), ("1V8_SYS", 0.1502932, 1.798777),
             ("DDR_VDD2", 0.00390372, 1.101464), ("DDR_VDDQ", 0.0, 0.6062265), ("1V1_SYS", 0.2029934, 1.104028),
             ("0V8_SW", 0.3054661, 0.798534), ("VDD_CORE", 1.11625, 0.74), ("3V3_DAC", 0.0, 3.30586),
             ("3V3_ADC", 0.00018315, 3.30586), ("0V8_AON", 0.00274725, 0.800361), ("HDMI", 0.0166056, 5.1123)]
    assert sensors.parse_pmic_adc(text) == pytest.approx(sum(a * v for _, a, v in rails))  # EXT5V_V, BATT_V: no A
    with pytest.raises(ValueError):
        sensors.parse_pmic_adc("EXT5V_V volt(24)=5.1V\n")


def test_pi5_pmic_reader_runs_vcgencmd(tmp_path):
    fake = tmp_path / "vcgencmd"
    fake.write_text(f"#!/bin/sh\ncat {DATA / 'pi5-pmic_read_adc.txt'}\n")
    fake.chmod(0o755)
    sensor, note = sensors.pi5_pmic(str(tmp_path), vcgencmd=str(fake))
    assert sensor is not None and sensor.read_w() > 1.0


def test_discover_on_this_machine_reports_every_kind():
    sensor, notes = sensors.discover("auto")
    assert set(notes) <= {"rapl", "ina3221", "pi5-pmic"} and notes
    assert sensors.discover("none") == (None, {"none": "sensors switched off (energy.sensor: none)"})


def test_energy_summary_labels():
    from kd2deploy.targets.runner import _energy_summary

    windows = {"teacher": [{"energy_j": 6.0, "duration_s": 1.0, "inferences": 100}],
               "student": [{"energy_j": 5.0, "duration_s": 1.0, "inferences": 1000}]}
    raw = {"sensor": {"kind": "rapl", "source": "Linux powercap RAPL (x)"}, "window_s": 1.0, "repeats": 1,
           "batch_size": 1, "windows": windows, "idle": [{"energy_j": 4.0, "duration_s": 1.0, "inferences": 0}]}
    m = _energy_summary(raw, None, [("teacher", "student")])
    assert m["label"] == "measured" and m["label_text"].startswith("measured (Linux powercap RAPL")
    assert m["models"]["teacher"]["j_per_inference_active"]["mean"] == pytest.approx(0.02)
    assert m["ratios"]["teacher/student"]["active"] == pytest.approx(0.02 / 0.001)
    raw_none = {**raw, "sensor": None, "windows": {k: [{**w, "energy_j": None} for w in v] for k, v in windows.items()}}
    mod = _energy_summary(raw_none, 4.0, [("teacher", "student")])
    assert mod["label"] == "modelled" and mod["models"]["teacher"]["j_per_inference_gross"]["mean"] == 0.04
    assert mod["models"]["teacher"]["j_per_inference_active"] is None
    none = _energy_summary(raw_none, None, [])
    assert none["label"] is None and "no energy sensor" in none["reason"]
