"""Runs a pipeline: plans the stages, then runs each (or restores it from the cache) over a new run folder."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kd2deploy import __version__, ui
from kd2deploy.errors import ConfigError, Kd2DeployError
from kd2deploy.rundir import new_run_dir, write_atomic, write_json

if TYPE_CHECKING:
    from kd2deploy.config import PipelineConfig
    from kd2deploy.engine.stage import Stage
    from kd2deploy.engine.state import RunState

log = logging.getLogger("kd2deploy")

RESULTS_SCHEMA_VERSION = 1
REUSED_NOTE = "reused (trained in an earlier run)"


def run_pipeline(cfg: PipelineConfig, out: Path = Path("runs"), source: Path | None = None,
                 force: bool | Iterable[str] = (), cache: bool = True) -> RunState:
    """Runs every stage of ``cfg`` into a new folder under ``out``; returns the finished run's state.

    Cached stages are reused from ``<out>/.cache/`` when their chained keys are unchanged (see
    :mod:`kd2deploy.engine.plan`); ``force`` (True, or stage names) recomputes them, ``cache=False`` neither
    reads nor writes the cache.
    """
    from kd2deploy.cache import StageCache, resolve_force
    from kd2deploy.distill import dist
    from kd2deploy.energy.meter import EnergyMeter
    from kd2deploy.engine.plan import chain
    from kd2deploy.engine.state import RunState
    from kd2deploy.stages import stages_for
    from kd2deploy.tasks.base import task_of

    adapter = task_of(cfg)
    forced = resolve_force(force)
    t0 = time.perf_counter()
    ctx = dist.init()  # torchrun's environment: several training processes; else a no-op
    if ctx.active and not adapter.capabilities.distributed:
        raise ConfigError(f"--nproc: task {cfg.task} does not support distributed training yet; run it without "
                          "--nproc")
    main = ctx.is_main
    run_dir = Path(dist.broadcast_object(str(new_run_dir(Path(out), cfg.name)) if main else None))
    handler = _setup_logging(run_dir) if main else None
    state = RunState(cfg=cfg, task=adapter(cfg), dir=run_dir, out=Path(out), source=source, use_cache=cache,
                     cache=StageCache(Path(out) / ".cache", forced) if cache and main else None)
    if main:
        write_atomic(state.path("config.yaml"), _yaml(cfg.resolved()))
        if source is not None:
            shutil.copyfile(source, state.path("pipeline.yaml"))
    state.results.update(
        schema_version=RESULTS_SCHEMA_VERSION, kd2deploy_version=__version__, task=cfg.task,
        pipeline={"name": cfg.name, "file": str(source) if source else None, "config_hash": cfg.config_hash(),
                  "resolved": cfg.resolved()},
        run={"dir": str(run_dir), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reused": {}},
        environment=environment(state.task.packages()), warnings=[],
    )
    state.results["run"]["distributed"] = _training_mode(ctx)
    if main:
        ui.console.print(f"[bold]kd2deploy {__version__}[/bold] — {cfg.task} pipeline [cyan]{cfg.name}[/cyan] → "
                         f"{run_dir}" + (f" ({ctx.world_size} training processes, {ctx.backend})"
                                         if ctx.active else ""))
    log.info("run %s started, config hash %s", run_dir, cfg.config_hash())
    state.meter = (EnergyMeter.from_config(cfg.energy, state.path("energy"), project=cfg.name) if main
                   else EnergyMeter(run_dir / "energy", enabled=False))  # rank 0 alone measures and writes
    stages = stages_for(cfg)
    chain(stages, state)
    stage_wall: dict[str, float] = {}
    state.results["run"]["stage_wall_s"] = stage_wall
    try:
        with (ui.progress() if main else _QuietProgress()) as progress:
            for i, stage in enumerate(stages):
                if stage.ranks == "main" and ctx.active and _last_all_ranks(stages) == i - 1:
                    dist.barrier()  # training is over: rank 0 goes on alone
                    dist.cleanup()
                    if not main:
                        return state
                ts = time.perf_counter()
                log.info("stage %s started", stage.name)
                _run_stage(stage, state, progress)
                seconds = time.perf_counter() - ts
                if getattr(stage, "timed", True):
                    stage_wall[stage.name] = seconds
                log.info("stage %s finished in %.1f s", stage.name, seconds)
        # The report stage stamps these before it renders (a re-render must give the same report); else here.
        state.results["run"].setdefault("finished", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        state.results["run"].setdefault("wall_s", time.perf_counter() - t0)
        write_json(state.path("results.json"), state.results)
    except BaseException as e:  # a failure, a bug or Ctrl-C: keep what is known so far
        log.error("%s: %s", type(e).__name__, e)
        if main:
            try:
                write_json(state.path("results.partial.json"), state.results)
            except Kd2DeployError as e2:  # e.g. the disk is full: keep the real cause as the message
                log.error("results.partial.json not written: %s", e2)
        if isinstance(e, dist.RankLost):
            kept = ", ".join(str(r.dir) for r in state.resumes.values()) or str(Path(out) / ".cache")
            raise dist.RankLost(f"{e}; the whole run stopped. The last good checkpoint is kept ({kept}); run the "
                                "same command again to resume from it.") from e
        raise
    finally:
        for resume in state.resumes.values():  # a stopped stage keeps its checkpoints for the next run
            resume.release()
        state.meter.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        dist.cleanup()
    return state


def _last_all_ranks(stages: list[Stage]) -> int:
    return max((i for i, s in enumerate(stages) if s.ranks == "all"), default=-1)


# ------------------------------------------------------------------------------------------ the cache
def _run_stage(stage: Stage, state: RunState, progress: Any) -> None:
    """Restores a cached stage from its entry when it can, else runs it (with its per-epoch resume folder) and
    stores what it made."""
    if stage.cached and _reuse(stage, state, progress):
        return
    names = stage.run(state, progress)
    if stage.cached:
        _store(stage, state, names or [])


def _reuse(stage: Stage, state: RunState, progress: Any) -> bool:
    """``_reuse_here`` on rank 0; in a distributed run rank 0 broadcasts its decision (and what the stage shares,
    e.g. the teacher's weights) so that every rank trains, or skips, the same stages."""
    from kd2deploy.distill import dist

    ctx = dist.context()
    if not ctx.active:
        return _reuse_here(stage, state, progress)
    hit = _reuse_here(stage, state, progress) if ctx.is_main else None
    share = getattr(stage, "share", None)
    payload = share(state) if ctx.is_main and hit and share is not None else None
    hit, payload = dist.broadcast_object((hit, payload))
    if hit and not ctx.is_main and payload is not None:
        stage.receive(state, payload)
    return bool(hit)


def _reuse_here(stage: Stage, state: RunState, progress: Any) -> bool:
    """On a cache hit: rebuilds the stage's output from the entry, copies its checkpoints into the run folder,
    restores its results record and notes the reuse; returns False (compute the stage) otherwise."""
    if state.cache is None:
        return False
    key = state.keys[stage.name]
    entry = state.cache.lookup(stage.name, key)
    if entry is None:
        _open_resume(state, stage.name, key)
        return False
    try:
        record = json.loads(json.dumps(entry.record))  # a private copy
        _reused_energy(record)
        names = stage.restore(state, entry, record)
    except Exception as e:  # noqa: BLE001 - e.g. a model that no longer fits its checkpoint: recompute
        state.cache.discard(stage.name, key, f"{type(e).__name__}: {e}")
        _open_resume(state, stage.name, key)
        return False
    for name in names:
        write_atomic(state.path("checkpoints", name), (entry.dir / name).read_bytes())
    state.results["run"].setdefault("reused", {})[stage.name] = entry.provenance()
    progress.add_task(stage.name, total=1, completed=1, info="reused")
    log.info("stage %s reused cache entry %s (created %s)", stage.name, entry.dir, entry.created)
    return True


def _reused_energy(record: dict[str, Any]) -> None:
    """A reused stage did not train here: its energy is not counted again."""
    if "energy" in record:
        record["energy"] = {"label": record["energy"].get("label"), "duration_s": None, "energy_kwh": None,
                            "emissions_kg": None, "mode": None, "reused": True, "note": REUSED_NOTE}


def _open_resume(state: RunState, stage: str, key: str) -> None:
    """The stage trains: its per-epoch checkpoints live beside its cache entry, so the same command resumes."""
    from kd2deploy.distill.resume import Resume

    resume = Resume(state.cache.root / stage / f"{key}.progress", fresh=stage in state.cache.force)
    if resume.acquire():
        state.resumes[stage] = resume


def _store(stage: Stage, state: RunState, names: list[str]) -> None:
    from kd2deploy.engine.state import writes

    resume = state.resumes.pop(stage.name, None)
    if resume is not None and resume.resumed:
        state.results["run"].setdefault("resumed", {})[stage.name] = dict(resume.resumed)
    record = stage.record(state) if hasattr(stage, "record") else {}
    if state.cache is not None and writes():
        entry = state.cache.store(stage.name, state.keys[stage.name],
                                  {n: state.dir / "checkpoints" / n for n in names}, record,
                                  state.key_inputs[stage.name])
        if entry is None:
            if resume is not None:
                resume.release()  # not stored: keep the checkpoints, a rerun resumes from them
            return
    if resume is not None:
        resume.finish()


# ------------------------------------------------------------------------------------------ run folder
def environment(extra_packages: Iterable[str] = ()) -> dict[str, Any]:
    """Versions, CPU and threads: what a reader needs to judge the numbers."""
    import os
    import platform
    import subprocess
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pkgs = {}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "scikit-learn", "codecarbon", "pydantic",
                 *extra_packages):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import torch

    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
        "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "packages": pkgs,
        "kd2deploy": __version__, "git_commit": commit,
    }


def _setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _training_mode(ctx) -> dict[str, Any]:
    """How training ran, for results.json and the report."""
    return {**ctx.as_dict(), "backend": ctx.backend or "none (one process)",
            "how": (f"{ctx.world_size} processes ({ctx.nnodes} node(s), {ctx.backend}): each trains on its slice of "
                    "every global batch, gradients summed across processes, batch-norm running statistics averaged "
                    "every epoch; rank 0 alone wrote files and ran export, benchmark and energy")
            if ctx.active else "one process"}


class _QuietProgress:
    """A progress stand-in for ranks other than 0 (only rank 0 draws on the terminal)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None
