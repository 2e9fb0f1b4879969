"""What the command line and the pipeline call: ``targets check``, ``bench --target``, and the targets stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kd2deploy.errors import ConfigError
from kd2deploy.targets.config import TargetConfig, adhoc_target
from kd2deploy.targets.ssh import TargetError


def check_all(targets: Sequence[TargetConfig], echo: Callable[[str], object], source: str = "the pipeline") -> int:
    """Connects to every target and prints its facts; returns 0 when all answered with onnxruntime, else 1."""
    from kd2deploy.targets.runner import check_target, format_facts

    if not targets:
        echo(f"{source}: no targets: section (add one, see the README's 'Measuring on edge devices')")
        return 1
    failed = 0
    for t in targets:
        try:
            facts = check_target(t)
        except TargetError as e:
            echo(f"error: {e}")
            failed += 1
            continue
        for line in format_facts(t, facts):
            echo(line)
        failed += bool(facts.get("import_errors"))
    return 1 if failed else 0


def resolve_target(spec: str, pipeline: Path | None = None, **adhoc: Any) -> TargetConfig:
    """``--target``: ``ssh://user@host:port`` (options from ``adhoc``), or a name in ``pipeline``'s targets."""
    if spec.startswith("ssh://"):
        from pydantic import ValidationError

        try:
            return adhoc_target(spec, **adhoc)
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"--target {spec!r}: {'.'.join(map(str, err['loc']))}: "
                              f"{err['msg'].removeprefix('Value error, ')}") from None
        except ValueError as e:
            raise ConfigError(f"--target: {e}") from None
    if pipeline is None:
        raise ConfigError(f"--target {spec!r}: give ssh://user@host[:port], or a target name with --pipeline FILE")
    from kd2deploy.config import load_config

    cfg = load_config(pipeline)
    names = [t.name for t in cfg.targets]
    for t in cfg.targets:
        if t.name == spec:
            return t
    raise ConfigError(f"--target {spec!r}: no such target in {pipeline}; allowed: {', '.join(names) or '(none)'}")


def bench_target_cli(spec: str, models: Sequence[Path], batch_sizes: Sequence[int], settings: Any, inputs: Any,
                     *, pipeline: Path | None = None, energy_window_s: float | None = None,
                     **adhoc: Any) -> dict[str, Any]:
    """``kd2deploy bench MODEL ... --target X``: the files timed on the target; ratios compare the first with each."""
    from kd2deploy.bench.harness import unique_labels
    from kd2deploy.targets.runner import bench_on_target
    from kd2deploy.ui import step

    cpu_power_w = adhoc.pop("cpu_power_w", None)
    t = resolve_target(spec, pipeline, **adhoc)
    if cpu_power_w is not None:
        if cpu_power_w <= 0:
            raise ConfigError(f"--cpu-power-w: must be > 0, got {cpu_power_w}")
        t = t.model_copy(update={"energy": t.energy.model_copy(update={"cpu_power_w": cpu_power_w})})
    labels = unique_labels(models)
    if len(set(labels)) != len(labels):
        raise ConfigError("the model files have the same path twice")
    energy = None
    if energy_window_s is not None:
        if energy_window_s <= 0:
            raise ConfigError(f"--energy-window: must be > 0, got {energy_window_s}")
        energy = {"window_s": energy_window_s, "repeats": t.energy.repeats or 2, "batch_size": 1,
                  "idle": t.energy.idle_baseline}
    return bench_on_target(t, dict(zip(labels, models, strict=True)), batch_sizes=list(dict.fromkeys(batch_sizes)),
                           settings=settings, inputs=inputs, pairs=[(labels[0], o) for o in labels[1:]],
                           energy=energy, progress=step)


def run_targets(cfg: Any, results: dict[str, Any], models: dict[str, Path], inputs: Any,
                progress: Callable[[str], object] | None = None) -> dict[str, Any]:
    """The targets stage: every target of ``cfg`` benchmarks ``models`` ({label: file}); returns
    ``{name: entry}``.

    A target that fails is kept as ``{"status": "missing", "reason": ...}`` and a warning in ``results``; with
    ``required: true`` its :class:`TargetError` is raised instead (the caller keeps what was made locally).
    """
    from kd2deploy.bench.harness import HarnessSettings
    from kd2deploy.targets.runner import bench_on_target, missing_entry

    b = cfg.benchmark
    settings = HarnessSettings(
        intra_op_threads=b.intra_op_threads, inter_op_threads=b.inter_op_threads,
        graph_optimization=b.graph_optimization, warmup_s=b.warmup_s, warmup_runs=b.warmup_runs,
        min_duration_s=b.min_duration_s, min_runs=b.min_runs, rounds=b.rounds, seed=cfg.seed,
        renew_sessions=b.renew_sessions)
    names = list(models)
    pairs = [("teacher", n) for n in names if n != "teacher"] if "teacher" in models else []
    out: dict[str, Any] = {}
    for t in cfg.targets:
        e = t.energy
        energy = None if not e.enabled else {
            "window_s": e.window_s or cfg.energy.window_s, "repeats": e.repeats or cfg.energy.repeats,
            "batch_size": e.batch_size or cfg.energy.batch_size, "idle": e.idle_baseline}
        try:
            out[t.name] = bench_on_target(t, models, batch_sizes=t.batch_sizes or b.batch_sizes, settings=settings,
                                          inputs=inputs, pairs=pairs, energy=energy, progress=progress)
        except TargetError as err:
            if t.required:
                results.setdefault("targets", {})[t.name] = missing_entry(t, err)
                raise TargetError(t.name, f"{err.reason} (required: true, so the run stops; everything made "
                                  "locally is kept)", err.kind) from None
            out[t.name] = missing_entry(t, err)
            results.setdefault("warnings", []).append(f"target {t.name} is missing from this report: {err.reason}")
            if progress is not None:
                progress(f"warning: target {t.name}: {err.reason}")
    return out
