"""Energy of training stages and inference windows, tracked with CodeCarbon offline and labelled honestly.

CodeCarbon measures only where the hardware offers a meter (RAPL, NVML, powermetrics); elsewhere it
*models* power from a TDP and the CPU load, and charges RAM a constant allowance. Every figure this module
returns carries that label ("measured" or "modelled"), the sources per component and a one-sentence
explanation, derived from what the tracker actually detected (see :mod:`kd2deploy.energy.labels`).

The tracker is kept quiet and offline whatever ``~/.codecarbon.config`` or ``CODECARBON_*`` variables say:
every setting that could send data out or change the numbers is passed explicitly (constructor arguments win
over the config file), the output handlers are checked before a window starts, CodeCarbon's log records are
captured (:meth:`EnergyMeter.messages`, :mod:`kd2deploy.energy.quiet`) instead of printed.

codecarbon is imported inside functions so that ``kd2deploy --help`` stays fast.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from kd2deploy.config import TargetProfile
from kd2deploy.energy import quiet as _q
from kd2deploy.energy.labels import carbon_intensity, classify, detected_facts
from kd2deploy.energy.quiet import import_codecarbon, quiet
from kd2deploy.errors import StageError

__all__ = [
    "J_PER_KWH",
    "EnergyError",
    "EnergyMeter",
    "EnergyRecord",
    "TargetProfile",
    "active_j_per_inference",
    "carbon_intensity",
    "classify",
    "detected_facts",
    "g_co2e_per_million",
    "gross_j_per_inference",
    "kwh_per_million",
    "mean_sd",
    "measure_inference_energy",
    "target_energy_kwh",
    "window_power_w",
]

J_PER_KWH = 3.6e6
IDLE = "__idle__"


class EnergyError(StageError):
    """CodeCarbon could not be set up or did not return a measurement."""


# ------------------------------------------------------------------------------ records
def target_energy_kwh(target: TargetProfile, duration_s: float) -> float:
    """Energy of a target device drawing its profile's constant power for ``duration_s``."""
    return (target.cpu_power_w + target.ram_power_w) * duration_s / J_PER_KWH


def _target_label(target: TargetProfile) -> str:
    return f"estimate for target {target.name}"


@dataclass
class EnergyRecord:
    """One tracked window; the numbers are filled in when the ``with`` block exits.

    Energies stay None (not 0) when nothing was measured: a disabled meter only times the window. Powers are
    means over the window (component energy / duration), not CodeCarbon's ``*_power`` fields, which average
    samples by count and include the sample taken at start.
    """

    label: str
    duration_s: float | None = None  # seconds the energy covers (start to the last measurement)
    energy_kwh: float | None = None
    cpu_kwh: float | None = None
    gpu_kwh: float | None = None
    ram_kwh: float | None = None
    emissions_kg: float | None = None
    cpu_power_w: float | None = None
    gpu_power_w: float | None = None
    ram_power_w: float | None = None
    mode: str | None = None  # "measured" | "modelled", from EnergyMeter.mode_info()
    target: dict[str, Any] | None = None  # {"name", "energy_kwh", "label": "estimate for target <name>"}
    complete: bool = False

    @property
    def energy_j(self) -> float | None:
        return None if self.energy_kwh is None else self.energy_kwh * J_PER_KWH

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ the meter
def _covered_s(started: Any, last_measured: Any) -> float | None:
    """Seconds the energy figures cover: from ``start()`` to the last measurement ``stop()`` took.

    CodeCarbon's ``duration`` runs until the row is written, a few to tens of milliseconds later; dividing by
    it biases short windows' power low (1-4 % here), and the idle baseline with it, which the idle-subtracted
    figures amplify (0.2 W off a 20.8 W idle is 20 % of a 1 W active draw).
    """
    if isinstance(started, float) and isinstance(last_measured, float) and last_measured > started:
        return last_measured - started
    return None


def _serialize_measurements(tracker: Any) -> None:
    """Makes CodeCarbon's periodic measurement and the one ``stop()`` takes run one after the other.

    CodeCarbon 3.3 measures from a timer thread every ``measure_power_secs`` and once more in ``stop()``. When
    ``stop()`` lands while the timer's measurement is still running (likely when a window lasts a whole number
    of intervals), both compute the interval from the same ``_last_measured_time`` and the interval is counted
    twice: in process mode a 2 s window showed 14.7 W of a 10 W RAM allowance. Behind one lock, ``stop()``
    waits, then measures only the few milliseconds left.
    """
    measure = getattr(tracker, "_measure_power_and_energy", None)
    scheduler = getattr(tracker, "_scheduler", None)
    if measure is None or scheduler is None or not hasattr(scheduler, "function"):
        return
    lock = threading.Lock()

    def serialized() -> None:
        with lock:
            measure()

    tracker._measure_power_and_energy = serialized  # used by start() and stop()
    scheduler.function = serialized  # the timer captured the bound method when the tracker was built


class EnergyMeter:
    """Tracks labelled windows of one pipeline run with CodeCarbon, offline and quietly.

    One fresh ``OfflineEmissionsTracker`` per window, not one tracker with ``start_task``/``stop_task``:
    CodeCarbon caches its hardware probe per process (``codecarbon.core.hardware_cache``), so after the
    first tracker (about 2.5 s, paid by :meth:`warm_up` outside any window) a new one costs about 10 ms.
    A fresh tracker gives each window its own start/stop measurements, its own CSV row, a correct duration
    and consistent power fields; the tasks API resets the measurement clock at ``start_task`` (energy since
    the last scheduled measurement is dropped, the final row's duration covers the last task only) and
    pauses the scheduler.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        country_iso_code: str = "USA",
        measure_power_secs: float = 1.0,
        tracking_mode: Literal["machine", "process"] = "machine",
        target: TargetProfile | None = None,
        project: str = "kd2deploy",
        output_file: str = "emissions.csv",
        enabled: bool = True,
    ) -> None:
        if measure_power_secs < 1:
            raise ValueError(
                f"measure_power_secs must be >= 1, got {measure_power_secs}: shorter intervals make "
                "CodeCarbon spin a core and under-count"
            )
        if tracking_mode not in ("machine", "process"):
            raise ValueError(f"tracking_mode must be 'machine' or 'process', got {tracking_mode!r}")
        self.output_dir = Path(output_dir)
        self.country_iso_code = country_iso_code
        self.measure_power_secs = float(measure_power_secs)
        self.tracking_mode = tracking_mode
        self.target = target
        self.project = project
        self.output_file = output_file
        self.enabled = enabled
        self.records: list[EnergyRecord] = []
        self._mode: dict[str, Any] | None = None
        self._seen0 = _q.seen()
        _q.silence_logger()

    @classmethod
    def from_config(cls, cfg: Any, output_dir: str | Path, project: str = "kd2deploy") -> EnergyMeter:
        """Builds a meter from an :class:`kd2deploy.config.EnergyConfig`."""
        return cls(
            output_dir,
            country_iso_code=cfg.country_iso_code,
            measure_power_secs=cfg.measure_power_secs,
            tracking_mode=cfg.tracking_mode,
            target=cfg.target,
            project=project,
            enabled=cfg.enabled,
        )

    # -- trackers
    def _tracker(self, label: str, csv: bool) -> Any:
        cc = import_codecarbon()
        from codecarbon.output_methods.base_output import OutputMethod

        self.output_dir.mkdir(parents=True, exist_ok=True)
        with quiet():
            # Every argument that ~/.codecarbon.config or CODECARBON_* could set to send data out or to change
            # the numbers is given here: explicit arguments win over CodeCarbon's config layers.
            tracker = cc.OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code,
                region=None,
                cloud_provider=None,
                cloud_region=None,
                country_2letter_iso_code=None,
                project_name=f"{self.project}:{label}",
                experiment_name=label,
                measure_power_secs=self.measure_power_secs,
                api_call_interval=-1,
                output_dir=str(self.output_dir),
                output_file=self.output_file,
                output_methods=[OutputMethod.CSV] if csv else [],
                output_handlers=[],
                emissions_endpoint=None,
                electricitymaps_api_token="",
                tracking_mode=self.tracking_mode,
                log_level="warning",
                on_csv_write="append",
                logger_preamble="",
                allow_multiple_runs=True,
                gpu_ids=None,
                force_cpu_power=None,
                force_ram_power=None,
                pue=1.0,
                wue=0.0,
                force_carbon_intensity_g_co2e_kwh=None,
                force_mode_cpu_load=False,
                rapl_include_dram=False,
                rapl_prefer_psys=False,
                metadata=None,
            )
        self._check_offline(tracker)
        _serialize_measurements(tracker)
        return tracker

    def _check_offline(self, tracker: Any) -> None:
        """Refuses a tracker that is half-built (its constructor swallows errors) or could reach a network."""
        if not hasattr(tracker, "run_id") or not hasattr(tracker, "_scheduler_monitor_power"):
            raise EnergyError(f"CodeCarbon tracker could not be built: {self._last_messages()}")
        handlers = [type(h).__name__ for h in getattr(tracker, "_output_handlers", [])]
        if (
            set(handlers) - {"FileOutput"}
            or getattr(tracker, "_emissions_endpoint", None)
            or getattr(tracker, "_electricitymaps_api_token", None)
        ):
            raise EnergyError(
                f"CodeCarbon tracker is not offline (output handlers {handlers}); refusing to start"
            )

    def _last_messages(self, n: int = 5) -> str:
        msgs = self.messages()[-n:]
        return " | ".join(msgs) if msgs else "no message from CodeCarbon"

    def warm_up(self) -> None:
        """Pays CodeCarbon's one-off costs (imports, hardware probe) now, outside any tracked window."""
        if self._mode is None:
            self.mode_info()

    def mode_info(self) -> dict[str, Any]:
        """What is measured and what is modelled here: :func:`classify` of the detected hardware, plus
        ``detected`` (the facts), ``tracking_mode``, ``carbon_intensity`` and ``codecarbon_version``."""
        if not self.enabled:
            return {"label": None, "active_label": None, "source": "", "explanation": "Energy not tracked."}
        if self._mode is None:
            # csv=True also imports CodeCarbon's output modules (~1 s once), so the first window starts fast
            tracker = self._tracker("probe", csv=True)
            facts = detected_facts(tracker)
            self._mode = {
                **classify(facts),
                "detected": facts,
                "tracking_mode": self.tracking_mode,
                "measure_power_secs": self.measure_power_secs,
                "carbon_intensity": carbon_intensity(self.country_iso_code),
                "codecarbon_version": import_codecarbon().__version__,
            }
        return self._mode

    @contextmanager
    def track(self, label: str) -> Iterator[EnergyRecord]:
        """Tracks the ``with`` block; yields an :class:`EnergyRecord`, filled in on exit (also on errors).

        A disabled meter (``energy.enabled: false``) only times the block: energies stay None.
        """
        if not self.enabled:
            record, t0 = EnergyRecord(label=label), time.perf_counter()
            try:
                yield record
            finally:
                record.duration_s = time.perf_counter() - t0
                self.records.append(record)
            return
        mode = self.mode_info()["label"]
        record = EnergyRecord(label=label, mode=mode)
        tracker = self._tracker(label, csv=True)
        with quiet():
            tracker.start()
        started = getattr(tracker, "_start_time", None)
        if started is None:
            raise EnergyError(f"CodeCarbon tracker did not start for {label!r}: {self._last_messages()}")
        try:
            yield record
        finally:
            with quiet():
                tracker.stop()
            data = getattr(tracker, "final_emissions_data", None)
            if data is None:
                raise EnergyError(
                    f"CodeCarbon returned no measurement for {label!r}: {self._last_messages()}"
                )
            self._fill(record, data, _covered_s(started, getattr(tracker, "_last_measured_time", None)))
            self.records.append(record)

    def _fill(self, record: EnergyRecord, data: Any, covered_s: float | None) -> None:
        d = covered_s if covered_s is not None else float(data.duration)
        record.duration_s = d
        record.energy_kwh = float(data.energy_consumed)
        record.cpu_kwh = float(data.cpu_energy)
        record.gpu_kwh = float(data.gpu_energy)
        record.ram_kwh = float(data.ram_energy)
        record.emissions_kg = float(data.emissions)
        if d > 0:
            record.cpu_power_w = window_power_w(record.cpu_kwh, d)
            record.gpu_power_w = window_power_w(record.gpu_kwh, d)
            record.ram_power_w = window_power_w(record.ram_kwh, d)
        if self.target is not None:
            record.target = {
                "name": self.target.name,
                "energy_kwh": target_energy_kwh(self.target, d),
                "label": _target_label(self.target),
            }
        record.complete = True

    def messages(self) -> list[str]:
        """CodeCarbon's warnings and errors since this meter was made (kept off the terminal)."""
        return _q.captured(self._seen0)

    def close(self) -> None:
        """Nothing stays running between windows; kept so callers can close the meter in ``finally``."""

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ arithmetic (pure)
def window_power_w(energy_kwh: float, duration_s: float) -> float:
    """Mean power of a window: E / t."""
    return energy_kwh * J_PER_KWH / duration_s


def gross_j_per_inference(energy_kwh: float, inferences: int) -> float:
    """Everything the window drew, divided by the inferences it ran."""
    return energy_kwh * J_PER_KWH / inferences


def active_j_per_inference(
    energy_kwh: float, duration_s: float, inferences: int, idle_power_w: float
) -> float:
    """Idle-subtracted energy per inference, ``(E_window - P_idle * t_window) / inferences``.

    Not clipped: a negative value means the workload's draw is below the idle baseline's noise.
    """
    return (energy_kwh * J_PER_KWH - idle_power_w * duration_s) / inferences


def kwh_per_million(j_per_inference: float) -> float:
    """kWh for one million inferences."""
    return j_per_inference * 1e6 / J_PER_KWH


def g_co2e_per_million(j_per_inference: float, g_co2e_per_kwh: float) -> float:
    """Grams CO2e for one million inferences at a grid intensity."""
    return kwh_per_million(j_per_inference) * g_co2e_per_kwh


def mean_sd(values: Sequence[float]) -> dict[str, float | None]:
    """``{"mean", "sd", "n"}``; sd is the sample standard deviation, None below two values."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    return {
        "mean": statistics.fmean(vals),
        "sd": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
    }


def _per_million(j: dict[str, Any], intensity: float) -> dict[str, float | None]:
    m = j["mean"]
    return {
        "kwh": None if m is None else kwh_per_million(m),
        "g_co2e": None if m is None else g_co2e_per_million(m, intensity),
    }


def summarize_model(
    windows: Sequence[tuple[float, float, int]],
    idle_power_w: float | None,
    g_co2e_per_kwh: float,
    target: TargetProfile | None = None,
) -> dict[str, Any]:
    """Per-inference energy of one model from its windows ``(energy_kwh, duration_s, inferences)``."""
    gross = mean_sd([gross_j_per_inference(e, n) for e, _, n in windows])
    out: dict[str, Any] = {
        "windows": len(windows),
        "window_s": statistics.fmean(t for _, t, _ in windows),
        "inferences_per_window": [n for _, _, n in windows],
        "inferences_per_window_mean": statistics.fmean(n for _, _, n in windows),
        "s_per_inference": statistics.fmean(t / n for _, t, n in windows),
        "mean_power_w": statistics.fmean(window_power_w(e, t) for e, t, _ in windows),
        "j_per_inference_gross": gross,
        "per_million_gross": _per_million(gross, g_co2e_per_kwh),
        "j_per_inference_active": None,
        "per_million_active": None,
        "idle_power_w": idle_power_w,
        "target": None,
    }
    if idle_power_w is not None:
        active = mean_sd([active_j_per_inference(e, t, n, idle_power_w) for e, t, n in windows])
        out["j_per_inference_active"] = active
        out["per_million_active"] = _per_million(active, g_co2e_per_kwh)
    if target is not None:
        tj = mean_sd([target_energy_kwh(target, t) * J_PER_KWH / n for _, t, n in windows])
        out["target"] = {
            "name": target.name,
            "label": _target_label(target),
            "j_per_inference": tj,
            "per_million": _per_million(tj, g_co2e_per_kwh),
            "assumes": "the target runs as many inferences per second as this machine",
        }
    return out


# ------------------------------------------------------------------------------ inference windows
def measure_inference_energy(
    meter: EnergyMeter,
    runners: dict[str, tuple[Callable[[], Any], int]],
    window_s: float,
    repeats: int,
    idle: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    warmup_calls: int = 3,
) -> dict[str, Any]:
    """Energy per inference of each model, from interleaved fixed-length windows and an idle baseline.

    Args:
        meter: the run's meter.
        runners: model name -> (zero-argument callable running one inference, batch size).
        window_s: length of each window; each callable loops until it is over (at least one call).
        repeats: rounds; each round runs every model and the idle window once, the order rotated each round.
        idle: also track idle windows (``time.sleep``) and report idle-subtracted ("active") figures.
        progress: called after each window with (windows done, windows total, window label).
        warmup_calls: untracked calls of each runner before the first window.

    Returns:
        ``{"window_s", "repeats", "idle": {...} | None, "idle_power_w", "carbon_intensity_g_co2e_per_kwh",
        "label", "active_label", "explanation", "mode", "target", "models": {name: summarize_model(...) +
        {"batch_size", "label", "records"}}}``. Ratios between models are left to the caller.
    """
    if not runners:
        raise ValueError("runners is empty: nothing to measure")
    if IDLE in runners:
        raise ValueError(f"{IDLE!r} is reserved for the idle window")
    if window_s <= 0 or repeats < 1:
        raise ValueError(f"window_s must be > 0 and repeats >= 1, got {window_s} and {repeats}")
    if not getattr(meter, "enabled", True):
        raise EnergyError(
            "energy tracking is disabled (energy.enabled: false); no inference energy to measure"
        )
    mode = meter.mode_info()  # pays the hardware probe before any window
    for fn, _ in runners.values():
        for _ in range(warmup_calls):
            fn()
    slots = list(runners) + ([IDLE] if idle else [])
    got: dict[str, list[tuple[EnergyRecord, int]]] = {s: [] for s in slots}
    total, done = len(slots) * repeats, 0
    for r in range(repeats):
        k = r % len(slots)
        for name in slots[k:] + slots[:k]:
            label = f"infer:{'idle' if name == IDLE else name}:r{r}"
            if name == IDLE:
                with meter.track(label) as rec:
                    time.sleep(window_s)
                got[name].append((rec, 0))
            else:
                fn, batch = runners[name]
                calls = 0
                with meter.track(label) as rec:
                    end = time.perf_counter() + window_s
                    while True:
                        fn()
                        calls += 1
                        if time.perf_counter() >= end:
                            break
                got[name].append((rec, calls * batch))
            done += 1
            if progress is not None:
                progress(done, total, label)

    all_recs = [rec for pairs in got.values() for rec, _ in pairs]
    e_sum = sum(r.energy_kwh for r in all_recs)
    intensity = (
        sum(r.emissions_kg for r in all_recs) / e_sum * 1000.0
        if e_sum > 0  # kg/kWh -> g/kWh
        else mode["carbon_intensity"]["g_co2e_per_kwh"]
    )
    idle_info, p_idle = None, None
    if idle:
        recs = [rec for rec, _ in got[IDLE]]
        powers = mean_sd([window_power_w(r.energy_kwh, r.duration_s) for r in recs])
        p_idle = powers["mean"]
        idle_info = {
            "windows": len(recs),
            "window_s": statistics.fmean(r.duration_s for r in recs),
            "power_w": powers,
            "cpu_power_w": statistics.fmean(r.cpu_power_w or 0.0 for r in recs),
            "gpu_power_w": statistics.fmean(r.gpu_power_w or 0.0 for r in recs),
            "ram_power_w": statistics.fmean(r.ram_power_w or 0.0 for r in recs),
            "records": [r.as_dict() for r in recs],
        }
    models = {}
    for name in runners:
        pairs = got[name]
        summary = summarize_model(
            [(r.energy_kwh, r.duration_s, n) for r, n in pairs], p_idle, intensity, meter.target
        )
        models[name] = {
            "batch_size": runners[name][1],
            "label": mode["label"],
            "active_label": mode["active_label"] if idle else None,
            **summary,
            "records": [r.as_dict() for r, _ in pairs],
        }
    return {
        "window_s": window_s,
        "repeats": repeats,
        "idle": idle_info,
        "idle_power_w": p_idle,
        "carbon_intensity_g_co2e_per_kwh": intensity,
        "label": mode["label"],
        "active_label": mode["active_label"] if idle else None,
        "explanation": mode["explanation"],
        "mode": mode,
        "target": None
        if meter.target is None
        else {
            "name": meter.target.name,
            "cpu_power_w": meter.target.cpu_power_w,
            "ram_power_w": meter.target.ram_power_w,
            "label": _target_label(meter.target),
        },
        "models": models,
    }
