"""Measured or modelled? What CodeCarbon detected on this machine, turned into labels and one sentence.

:func:`detected_facts` reads a live tracker's hardware objects into plain data; :func:`classify` (pure, unit
tested) maps those facts to a label per component (cpu, gpu, ram) and overall, the sources, and the
explanation the report prints next to every energy figure. CodeCarbon 3.x modes: CPU ``intel_rapl``,
``windows_emi``, ``intel_power_gadget`` (metered) or ``cpu_load`` / ``constant`` (TDP models); GPUs through
NVML or AMD SMI (metered); RAM a power allowance sized from the memory (modelled) except on a Raspberry Pi.
"""

from __future__ import annotations

from typing import Any

from kd2deploy.energy.quiet import import_codecarbon, quiet


def _cpu_part(tr: Any) -> Any:
    for hw in getattr(tr, "_hardware", []):
        name = type(hw).__name__
        if name == "CPU" or (
            name in ("AppleSiliconChip", "Raspberry") and hw.chip_part in ("CPU", "Processor")
        ):
            return hw
    return None


def detected_facts(tracker: Any) -> dict[str, Any]:
    """Plain facts about what a CodeCarbon 3.x tracker detected (runs its hardware probe if not done yet).

    Reads the tracker's hardware objects (``tracker._hardware``: ``RAM``, ``CPU`` with ``_mode``/``_tdp``,
    ``GPU`` with NVML/AMD SMI devices, ``AppleSiliconChip``, ``Raspberry``); these are private attributes,
    read defensively, so an unknown layout gives ``None`` facts (classified as modelled), never a crash.
    """
    with quiet():
        tracker.get_detected_hardware()
    from codecarbon.core.cpu import DEFAULT_POWER_PER_CORE
    from codecarbon.core.util import count_cpus

    conf = getattr(tracker, "_conf", {})
    tracking_mode = getattr(tracker, "_tracking_mode", None)
    forced_cpu = getattr(tracker, "_force_cpu_power", None)
    forced_ram = getattr(tracker, "_force_ram_power", None)
    cpu: dict[str, Any] = {
        "device": None,
        "mode": None,
        "model": conf.get("cpu_model"),
        "tdp_w": None,
        "tdp_source": None,
        "tracking_mode": tracking_mode,
    }
    gpu: dict[str, Any] = {
        "device": None,
        "vendor": None,
        "count": 0,
        "model": conf.get("gpu_model") or "",
        "energy_counter": None,
    }
    ram: dict[str, Any] = {
        "device": None,
        "power_w": None,
        "forced_power_w": forced_ram,
        "tracking_mode": tracking_mode,
        "total_gb": conf.get("ram_total_size"),
    }
    hw_cpu = _cpu_part(tracker)
    for hw in getattr(tracker, "_hardware", []):
        name = type(hw).__name__
        part = getattr(hw, "chip_part", None)
        if hw is hw_cpu:
            cpu["device"] = name
            if name == "CPU":
                cpu["mode"] = getattr(hw, "_mode", None)
                tdp = getattr(hw, "_tdp", None)
                cpu["tdp_w"] = float(tdp) if tdp is not None else None
                if forced_cpu is not None:
                    cpu["tdp_source"] = "user"
                elif getattr(hw, "_is_generic_tdp", False):
                    cpu["tdp_source"] = "generic"
                elif tdp is not None and tdp == count_cpus() * DEFAULT_POWER_PER_CORE:
                    # what CodeCarbon assumes for a CPU missing from its registry
                    cpu["tdp_source"] = "per-thread default"
                elif tdp is not None:
                    cpu["tdp_source"] = "registry"
            else:
                cpu["mode"] = "apple_powermetrics" if name == "AppleSiliconChip" else "raspberry_pmic"
        elif name == "GPU":
            devices = getattr(getattr(hw, "devices", None), "devices", [])
            kinds = {type(d).__name__ for d in devices}
            gpu.update(
                device=name,
                count=len(devices),
                vendor="nvidia" if "NvidiaGPUDevice" in kinds else "amd" if kinds else None,
                energy_counter=bool(devices) and all(getattr(d, "_has_counter", False) for d in devices),
            )
        elif name == "AppleSiliconChip" and part == "GPU":
            gpu.update(device=name, vendor="apple", count=1, energy_counter=False)
        elif name == "RAM":
            ram["device"] = name
            try:
                with quiet():
                    ram["power_w"] = float(hw.total_power().W)
            except Exception:  # a fact we could not read stays None
                ram["power_w"] = None
        elif name == "Raspberry" and part == "RAM":
            ram["device"] = "raspberry_pmic"
    return {"cpu": cpu, "gpu": gpu, "ram": ram, "pue": getattr(tracker, "_pue", None)}


_CPU_MEASURED = {
    "intel_rapl": "RAPL",
    "windows_emi": "Windows EMI (RAPL)",
    "intel_power_gadget": "Intel Power Gadget",
    "apple_powermetrics": "powermetrics",
    "raspberry_pmic": "Raspberry Pi PMIC",
}
_GPU_SOURCES = {"nvidia": "NVML", "amd": "AMD SMI", "apple": "powermetrics"}


def _a(watts: float) -> str:
    """'an 8 W' / 'a 20 W'."""
    lead = f"{watts:g}"
    return "an" if lead.startswith("8") or lead in ("11", "18") or lead.startswith(("11.", "18.")) else "a"


def _classify_cpu(cpu: dict[str, Any]) -> dict[str, Any]:
    mode, tdp = cpu.get("mode"), cpu.get("tdp_w")
    if cpu.get("device") is None:
        return {"label": None, "source": "none detected", "constant": True, "text": None}
    if mode in _CPU_MEASURED:
        src = _CPU_MEASURED[mode]
        return {
            "label": "measured",
            "source": src,
            "constant": False,
            "text": f"CPU energy measured by {src}",
        }
    kind = {
        "per-thread default": "default",
        "registry": "datasheet",
        "generic": "generic",
        "user": "user-given",
    }.get(cpu.get("tdp_source") or "", "assumed")
    tdp_txt = f"{_a(tdp)} {tdp:g} W {kind} TDP" if tdp is not None else "an assumed TDP"
    if mode == "cpu_load":
        load = "this process's CPU time" if cpu.get("tracking_mode") == "process" else "CPU load"
        return {
            "label": "modelled",
            "source": "cpu_load model",
            "constant": False,
            "text": f"CPU power modelled by CodeCarbon from {tdp_txt} and {load} (no RAPL)",
        }
    if mode == "constant":
        return {
            "label": "modelled",
            "source": "constant TDP model",
            "constant": True,
            "text": f"CPU power modelled by CodeCarbon as half of {tdp_txt}, whatever the load (no RAPL)",
        }
    return {
        "label": "modelled",
        "source": f"unknown CodeCarbon mode {mode!r}",
        "constant": False,
        "text": f"CPU power from CodeCarbon mode {mode!r}, treated as modelled",
    }


def _classify_gpu(gpu: dict[str, Any]) -> dict[str, Any]:
    vendor = gpu.get("vendor")
    if gpu.get("device") is None or not gpu.get("count"):
        return {"label": None, "source": "none detected", "constant": True, "text": None}
    src = _GPU_SOURCES.get(vendor or "", f"unknown GPU backend {vendor!r}")
    how = "energy counter" if gpu.get("energy_counter") else "power readings"
    if vendor not in _GPU_SOURCES:
        return {"label": "modelled", "source": src, "constant": False, "text": f"GPU energy from {src}"}
    return {
        "label": "measured",
        "source": src,
        "constant": False,
        "text": f"GPU energy measured by {src} ({how})",
    }


def _classify_ram(ram: dict[str, Any]) -> dict[str, Any]:
    if ram.get("device") == "raspberry_pmic":
        return {
            "label": "measured",
            "source": "Raspberry Pi PMIC",
            "constant": False,
            "text": "RAM energy measured by the Raspberry Pi PMIC",
        }
    if ram.get("device") is None:
        return {"label": None, "source": "none detected", "constant": True, "text": None}
    watts = ram.get("forced_power_w")
    if watts is not None:
        return {
            "label": "modelled",
            "source": "user constant",
            "constant": True,
            "text": f"RAM a constant {watts:g} W given by the user",
        }
    watts = ram.get("power_w")
    w_txt = f"{watts:g} W " if watts is not None else ""
    if ram.get("tracking_mode") == "process":
        return {
            "label": "modelled",
            "source": "RAM allowance",
            "constant": False,
            "text": f"RAM {_a(watts) if watts is not None else 'an'} {w_txt}allowance sized from this "
            "process's memory",
        }
    return {
        "label": "modelled",
        "source": "RAM allowance",
        "constant": True,
        "text": f"RAM a constant {w_txt}allowance sized from the installed memory",
    }


def classify(detected: dict[str, Any]) -> dict[str, Any]:
    """Labels energy figures from the plain facts of :func:`detected_facts`.

    Returns ``label`` ("measured" only when every detected component is metered, else "modelled"), ``mixed``,
    ``source`` (component sources joined), ``cpu``/``gpu``/``ram`` (each ``label``, ``source``, ``constant``,
    ``text``), ``active_label`` (label of idle-subtracted figures: components of constant power cancel there)
    and ``explanation`` (one sentence).
    """
    parts = {
        "cpu": _classify_cpu(detected.get("cpu") or {}),
        "gpu": _classify_gpu(detected.get("gpu") or {}),
        "ram": _classify_ram(detected.get("ram") or {}),
    }
    present = {k: v for k, v in parts.items() if v["label"] is not None}
    measured = [k for k, v in present.items() if v["label"] == "measured"]
    modelled = [k for k, v in present.items() if v["label"] == "modelled"]
    label = "measured" if present and not modelled else "modelled"
    varying = {k: v for k, v in present.items() if not v["constant"]}
    active_label = (
        "measured" if varying and all(v["label"] == "measured" for v in varying.values()) else "modelled"
    )
    texts = [v["text"] for v in present.values() if v["text"]]
    sentence = "; ".join(texts) if texts else "CodeCarbon detected no hardware to track"
    if label == "modelled":
        load_modelled = any(v["label"] == "modelled" and not v["constant"] for v in present.values())
        if load_modelled:
            tail = "the student/teacher energy ratio therefore follows run time and load by construction"
        elif measured:
            tail = (
                "the modelled parts are constant power, so they cancel in idle-subtracted figures and "
                "scale gross figures with run time"
            )
        else:
            tail = "the student/teacher energy ratio therefore follows run time by construction"
        sentence = f"{sentence}; {tail}"
    return {
        "label": label,
        "mixed": bool(measured and modelled),
        "active_label": active_label,
        "source": ", ".join(v["source"] for v in present.values()),
        "measured_components": measured,
        "modelled_components": modelled,
        **parts,
        "explanation": sentence[0].upper() + sentence[1:] + ".",
    }


def carbon_intensity(country_iso_code: str) -> dict[str, Any]:
    """Grid carbon intensity CodeCarbon applies offline for a country (no region, no cloud, no API)."""
    import_codecarbon()
    from codecarbon.core.emissions import Emissions
    from codecarbon.input import DataSource

    with quiet():
        source = DataSource()
        mix = source.get_global_energy_mix_data().get(country_iso_code)
        if mix is None:
            world = source.get_carbon_intensity_per_source_data()["world_average"]
            return {
                "country_iso_code": country_iso_code,
                "country_name": None,
                "g_co2e_per_kwh": float(world),
                "year": None,
                "source": "CodeCarbon world average (country not in its energy-mix data)",
            }
        rate = Emissions._global_energy_mix_to_emissions_rate(mix)
    return {
        "country_iso_code": country_iso_code,
        "country_name": mix.get("country_name"),
        "g_co2e_per_kwh": rate.kgs_per_kWh * 1000.0,
        "year": mix.get("year"),
        "source": "CodeCarbon offline energy-mix data (global_energy_mix.json), country average",
    }
