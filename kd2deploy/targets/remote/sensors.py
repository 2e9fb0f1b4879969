"""Energy sensors of an edge device, read around a benchmark window. Standard library only (runs on the target).

Three kinds, each read from the running machine (``root="/"``); the tests point ``root`` at recorded layouts:

- **rapl**: Linux powercap, ``/sys/class/powercap/intel-rapl:N/energy_uj`` (package domains; sub-domains such as
  ``intel-rapl:0:0`` are inside their package and are not added again). A cumulative counter in microjoules,
  read before and after a window; a wrap at ``max_energy_range_uj`` is undone. AMD CPUs expose the same files.
  Since 2020 kernels make ``energy_uj`` readable by root only: a sensor that exists but cannot be read is said so.
- **ina3221**: the INA3221 power monitor of NVIDIA Jetson boards. Mainline hwmon (L4T 34+):
  ``/sys/class/hwmon/hwmonN/name`` is ``ina3221``, channel i has ``in{i}_label``, ``in{i}_input`` (mV) and
  ``curr{i}_input`` (mA). Older L4T (ina3221x, iio): ``/sys/bus/i2c/drivers/ina3221x/*/iio:device*/`` with
  ``rail_name_{i}`` and ``in_power{i}_input`` (mW). The board's input rail (``VDD_IN``, ``POM_5V_IN``) is used
  when there is one, else the sum of the rails. Sampled in a thread, integrated over time.
- **pi5-pmic**: Raspberry Pi 5, ``vcgencmd pmic_read_adc``: the PMIC's rail currents (``X_A current(n)=...A``)
  and voltages (``X_V volt(n)=...V``); power is the sum of I x V over rails that have both. It covers the
  PMIC's rails, not the 5 V input's conversion losses or USB devices. Sampled in a thread.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
import time

SAMPLE_S = 0.1
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class CounterSensor:
    """RAPL package energy counters (microjoules), read before and after a window."""

    kind = "rapl"

    def __init__(self, domains):
        self.domains = domains  # [(name, energy_uj path, max_energy_range_uj)]
        names = ", ".join(n for n, _, _ in domains)
        self.source = f"Linux powercap RAPL ({names})"

    def _now(self):
        return [int(_read(p)) for _, p, _ in self.domains]

    def begin(self):
        return self._now()

    def end(self, token):
        total = 0
        for (_, _, top), a, b in zip(self.domains, token, self._now()):  # noqa: B905 - runs on Python 3.8 too
            total += b - a if b >= a else b + top - a
        return total / 1e6


class SampledSensor:
    """A power reading (watts) sampled every ``SAMPLE_S`` in a thread and integrated (trapezoids) over time."""

    def __init__(self, kind, source, read_w, interval=SAMPLE_S):
        self.kind, self.source, self.read_w, self.interval = kind, source, read_w, interval

    def begin(self):
        state = {"samples": [(time.perf_counter(), self.read_w())], "stop": threading.Event()}

        def loop():
            while not state["stop"].wait(self.interval):
                state["samples"].append((time.perf_counter(), self.read_w()))

        state["thread"] = threading.Thread(target=loop, daemon=True)
        state["thread"].start()
        return state

    def end(self, state):
        state["stop"].set()
        state["thread"].join()
        samples = state["samples"] + [(time.perf_counter(), self.read_w())]
        return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(samples, samples[1:]))  # noqa: B905


def rapl(root="/"):
    """(sensor or None, note): the package domains under ``root``/sys/class/powercap."""
    found = []
    for d in sorted(glob.glob(os.path.join(root, "sys/class/powercap/intel-rapl:*"))):
        if d.count(":") != 1 or not os.path.exists(os.path.join(d, "energy_uj")):
            continue  # a sub-domain (core, uncore, dram) is counted in its package already
        name = _read(os.path.join(d, "name")) if os.path.exists(os.path.join(d, "name")) else os.path.basename(d)
        try:
            top = int(_read(os.path.join(d, "max_energy_range_uj")))
        except (OSError, ValueError):
            top = 2**32
        found.append((f"{os.path.basename(d)} {name}", os.path.join(d, "energy_uj"), top))
    if not found:
        return None, "no RAPL powercap domains"
    try:
        sensor = CounterSensor(found)
        sensor.begin()
    except PermissionError:
        return None, "RAPL powercap present but energy_uj is readable by root only"
    except (OSError, ValueError) as e:
        return None, f"RAPL powercap present but unreadable ({type(e).__name__})"
    return sensor, "RAPL powercap readable"


def _hwmon_ina3221(root):
    for d in sorted(glob.glob(os.path.join(root, "sys/class/hwmon/hwmon*"))):
        try:
            if _read(os.path.join(d, "name")) != "ina3221":
                continue
        except OSError:
            continue
        rails = []
        for label in sorted(glob.glob(os.path.join(d, "in*_label"))):
            i = re.findall(r"in(\d+)_label$", label)[0]
            volt, curr = os.path.join(d, f"in{i}_input"), os.path.join(d, f"curr{i}_input")
            if os.path.exists(volt) and os.path.exists(curr):
                rails.append((_read(label), volt, curr))
        if rails:
            return d, rails
    return None, []


def _iio_ina3221(root):
    rails = []
    for d in sorted(glob.glob(os.path.join(root, "sys/bus/i2c/drivers/ina3221x/*/iio:device*"))):
        for name in sorted(glob.glob(os.path.join(d, "rail_name_*"))):
            i = name.rsplit("_", 1)[1]
            power = os.path.join(d, f"in_power{i}_input")
            if os.path.exists(power):
                rails.append((_read(name), power))
    return rails


def ina3221(root="/"):
    """(sensor or None, note): Jetson INA3221 rails (hwmon, else the older iio driver)."""
    d, rails = _hwmon_ina3221(root)
    if rails:
        chosen = [r for r in rails if r[0] in _INPUT_RAILS] or rails

        def read_w():
            return sum(float(_read(v)) * float(_read(c)) / 1e6 for _, v, c in chosen)  # mV x mA -> W

        how = "board input rail" if chosen is not rails else "sum of rails"
        sensor = SampledSensor("ina3221", f"INA3221 hwmon {os.path.basename(d)} ({how}: "
                               f"{', '.join(r[0] for r in chosen)})", read_w)
    else:
        iio = _iio_ina3221(root)
        if not iio:
            return None, "no INA3221 power monitor"
        chosen = [r for r in iio if r[0] in _INPUT_RAILS] or iio

        def read_w():
            return sum(float(_read(p)) / 1e3 for _, p in chosen)  # mW -> W

        sensor = SampledSensor("ina3221", f"INA3221 iio ({', '.join(r[0] for r in chosen)})", read_w)
    try:
        sensor.read_w()
    except (OSError, ValueError) as e:
        return None, f"INA3221 present but unreadable ({type(e).__name__})"
    return sensor, "INA3221 readable"


_PMIC = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-+0-9.eE]+)[AV]\s*$")


def parse_pmic_adc(text):
    """Watts from ``vcgencmd pmic_read_adc`` output: the sum of I x V over rails that report both."""
    amps, volts = {}, {}
    for line in text.splitlines():
        m = _PMIC.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    rails = sorted(set(amps) & set(volts))
    if not rails:
        raise ValueError("no rail with both a current and a voltage in pmic_read_adc output")
    return sum(amps[r] * volts[r] for r in rails)


def pi5_pmic(root="/", vcgencmd=None):
    """(sensor or None, note): Raspberry Pi 5 PMIC rails through ``vcgencmd pmic_read_adc``."""
    exe = vcgencmd or (shutil.which("vcgencmd") if root == "/" else None)
    if not exe:
        return None, "no vcgencmd"

    def read_w():
        out = subprocess.run([exe, "pmic_read_adc"], capture_output=True, text=True, timeout=5, check=True)
        return parse_pmic_adc(out.stdout)

    try:
        read_w()
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return None, f"vcgencmd pmic_read_adc unusable ({type(e).__name__}; a Raspberry Pi 5 is needed)"
    return SampledSensor("pi5-pmic", "Raspberry Pi 5 PMIC rails (vcgencmd pmic_read_adc)", read_w, 0.2), \
        "pi5-pmic readable"


READERS = {"rapl": rapl, "ina3221": ina3221, "pi5-pmic": pi5_pmic}


def discover(which="auto", root="/"):
    """The sensor to use and what was found: ``(sensor or None, {kind: note})``."""
    if which == "none":
        return None, {"none": "sensors switched off (energy.sensor: none)"}
    notes = {}
    for kind in READERS if which == "auto" else [which]:
        sensor, note = READERS[kind](root)
        notes[kind] = note
        if sensor is not None:
            return sensor, notes
    return None, notes
