"""The ``kd2deploy`` command line: a thin typer app; every command calls the Python API."""

from __future__ import annotations

import functools
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from kd2deploy import __version__
from kd2deploy.errors import Kd2DeployError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distil a teacher into a student, export both to ONNX, benchmark latency and energy, report.",
)

_debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kd2deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    global _debug
    _debug = debug


def _one_line(text: str) -> str:
    """A message as one line: later lines joined with '; ' (a terminal or a log grep sees all of it)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _launched() -> bool:
    """A rank started by ``kd2deploy run --nproc`` (which reports a lost rank itself)."""
    import os

    from kd2deploy.launch import LAUNCHED_ENV

    return os.environ.get(LAUNCHED_ENV) == "1" and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank() -> int:
    """This process's rank in a torchrun job (0 when not launched by torchrun)."""
    import os

    return int(os.environ.get("RANK", "0"))


def handle_errors(fn):
    """Turns errors into one line on stderr and an exit code: 2 bad input, 1 failure, 130 interrupted.

    ``Kd2DeployError`` carries its own message and exit code; an ``OSError`` (a file that cannot be read or
    written) is named with its cause; anything else is a bug, reported in one line that points at ``--debug``,
    which re-raises every error with its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import logging

        import click
        from rich.markup import escape

        from kd2deploy.errors import os_problem
        from kd2deploy.ui import console

        def fail(msg: str, code: int):
            console.print(f"[red]error:[/red] {escape(_one_line(msg))}", soft_wrap=True)
            return typer.Exit(code)

        raise_logging_errors = logging.raiseExceptions
        logging.raiseExceptions = _debug  # a log file on a full disk must not print a traceback
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, typer.Exit):
            raise
        except Kd2DeployError as e:
            if _debug:
                raise
            if _launched() and (type(e).__name__ == "RankLost" or (e.exit_code == 2 and _rank() != 0)):
                # kd2deploy run --nproc names the lost rank, once; bad input is the same on every rank: rank 0 says it
                raise typer.Exit(e.exit_code) from None
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt as e:
            if _launched():  # torchrun stopped this rank because another one failed: the launcher says so
                raise typer.Exit(128 + getattr(e, "signum", signal.SIGINT)) from None
            console.print("[red]interrupted[/red]: finished files of this run are kept; partial ones were not "
                          "written. Training checkpoints are kept: the same command resumes from the last "
                          "complete epoch.")
            raise typer.Exit(128 + getattr(e, "signum", signal.SIGINT)) from None
        except OSError as e:
            if _debug:
                raise
            names = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None) or "a file"
            raise fail(f"{names}: {os_problem(e)}", 1) from None
        except Exception as e:  # noqa: BLE001 - a bug: still one line, the traceback is one flag away
            if _debug:
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise fail(f"unexpected {type(e).__name__}: {first} (a bug in kd2deploy; run with --debug for the "
                       "traceback)", 1) from None
        finally:
            logging.raiseExceptions = raise_logging_errors

    return wrapper


@app.command()
@handle_errors
def validate(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: key.path=value.")] = None,
) -> None:
    """Check a pipeline file (schema, names, files) without running anything."""
    from kd2deploy.config import load_config
    from kd2deploy.ui import step

    cfg = load_config(pipeline, set_)
    step(f"{pipeline}: valid (pipeline {cfg.name!r}, config hash {cfg.config_hash()[:12]})")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so it stops like Ctrl-C (exit code 143)."""

    signum = signal.SIGTERM


def _terminated(signum, frame):
    raise Terminated()


@app.command()
@handle_errors
def run(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    out: Annotated[Path, typer.Option("--out", help="Folder that holds runs/<name>/<timestamp>/.")] = Path("runs"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: key.path=value.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute cached stages instead of reusing them: all, "
                                        "or those named after it (--force teacher, --force students).")] = False,
    stages: Annotated[list[str] | None, typer.Argument(metavar="STAGE", show_default=False,
                                                       help="With --force: the stages to recompute.")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Train with N processes on this machine: "
                                              "runs this command under torchrun --nproc-per-node N.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (as `kd2deploy plan`) and stop.")] = False,
) -> None:
    """Run a pipeline: train, distil, export, benchmark, measure energy, write the report.

    The teacher and students stages are reused from <out>/.cache/ when nothing they depend on changed.
    """
    if dry_run:
        plan(pipeline, out, set_, force, stages)
        return
    if nproc is not None:
        from kd2deploy.config import load_config
        from kd2deploy.errors import ConfigError
        from kd2deploy.tasks.base import task_of

        cfg = load_config(pipeline, set_)
        if not task_of(cfg).capabilities.distributed:
            raise ConfigError(f"--nproc: task {cfg.task} does not support distributed training yet; run it "
                              "without --nproc")
        from kd2deploy.launch import launch, strip_nproc

        argv = sys.argv[1:] if "run" in sys.argv[1:] else ["run", str(pipeline)]
        raise typer.Exit(launch(nproc, strip_nproc(argv), str(out)))
    from rich.table import Table

    from kd2deploy.cache import resolve_force
    from kd2deploy.config import load_config
    from kd2deploy.errors import ConfigError
    from kd2deploy.pipeline import run_pipeline, summary_table
    from kd2deploy.ui import console

    if stages and not force:
        raise ConfigError(f"unexpected argument {stages[0]!r}: stage names follow --force (e.g. --force teacher)")
    forced = resolve_force(stages or True) if force else frozenset()
    cfg = load_config(pipeline, set_)
    signal.signal(signal.SIGTERM, _terminated)  # SIGTERM stops like Ctrl-C: partial results, kept checkpoints
    # run.log has every message; a library that calls logging.basicConfig (or logging.info) must not echo them
    logging.getLogger("kd2deploy").propagate = False
    result = run_pipeline(cfg, out, source=pipeline, force=forced)
    if _rank() != 0:  # a training process of a torchrun job: rank 0 finishes the run and reports
        from kd2deploy.distill.dist import exit_training_rank

        exit_training_rank()
    res = result.results
    title, columns, rows = summary_table(res)
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col != "model" else "left", no_wrap=col == "model")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"[bold]{res['headline']['text']}[/bold]")
    console.print(f"report: {result.dir / 'report.html'}")
    console.print(f"wall time: {res['run']['wall_s']:.1f} s")


@app.command()
@handle_errors
def plan(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    out: Annotated[Path, typer.Option("--out", help="Folder that holds runs/ and the stage cache.")] = Path("runs"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: key.path=value.")] = None,
    force: Annotated[bool, typer.Option("--force", help="As for run: plan with cached stages recomputed.")] = False,
    stages: Annotated[list[str] | None, typer.Argument(metavar="STAGE", show_default=False,
                                                       help="With --force: the stages to recompute.")] = None,
) -> None:
    """Print the stages `kd2deploy run` would run, in order, and which it would reuse from the cache and why."""
    from rich.table import Table

    from kd2deploy.cache import resolve_force
    from kd2deploy.config import load_config
    from kd2deploy.engine.plan import plan_pipeline
    from kd2deploy.ui import console

    forced = resolve_force(stages or True) if force else frozenset()
    cfg = load_config(pipeline, set_)
    table = Table(title=f"plan of {pipeline} (task {cfg.task}, cache {out / '.cache'})")
    for col in ("stage", "action", "why", "key", "ranks"):
        table.add_column(col)
    for row in plan_pipeline(cfg, out, forced):
        table.add_row(row.name, row.action, row.why, (row.key or "")[:12], row.ranks)
    console.print(table)


@app.command()
@handle_errors
def bench(
    models: Annotated[list[Path], typer.Argument(help="ONNX files; ratios compare the first with each other.")],
    batch_sizes: Annotated[list[int], typer.Option("--batch-size", "-b", help="Batch size (repeatable).")] = [1],  # noqa: B006
    threads: Annotated[int, typer.Option(help="intra-op threads.")] = 1,
    backend: Annotated[str, typer.Option(help="Backend name.")] = "onnxruntime-cpu",
    min_duration_s: Annotated[float, typer.Option(help="Least seconds per window.")] = 1.0,
    min_runs: Annotated[int, typer.Option(help="Least runs per window.")] = 100,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds.")] = 3,
    inputs: Annotated[Path | None, typer.Option(help=".npy of real inputs (default: seeded random).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full results as JSON here.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Run on a target instead of here: a name from "
                                               "--pipeline's targets, or ssh://user@host:port.")] = None,
    pipeline: Annotated[Path | None, typer.Option("--pipeline", help="The pipeline file whose targets: "
                                                  "--target names.")] = None,
    identity_file: Annotated[Path | None, typer.Option("--identity-file", help="ssh -i for an ssh:// target.")] = None,
    known_hosts: Annotated[Path | None, typer.Option("--known-hosts", help="known_hosts file for an ssh:// "
                                                     "target.")] = None,
    accept_new_host_key: Annotated[bool, typer.Option("--accept-new-host-key", help="Accept and remember an "
                                                      "ssh:// target's host key seen for the first time.")] = False,
    python: Annotated[str | None, typer.Option("--python", help="The target's Python (default python3).")] = None,
    energy_window_s: Annotated[float | None, typer.Option("--energy-window", help="Also measure energy on the "
                                                          "target: seconds per window (batch 1, 2 rounds, idle "
                                                          "windows).")] = None,
    cpu_power_w: Annotated[float | None, typer.Option("--cpu-power-w", help="The target's power for a modelled "
                                                      "energy figure when it has no readable sensor.")] = None,
) -> None:
    """Benchmark any ONNX file(s) with the pipeline's harness; print a table, optionally write JSON."""
    import numpy as np

    from kd2deploy.bench.api import bench_onnx
    from kd2deploy.bench.backends import BACKENDS
    from kd2deploy.bench.harness import HarnessSettings, format_table
    from kd2deploy.errors import ConfigError
    from kd2deploy.rundir import write_json
    from kd2deploy.ui import console

    for m in models:
        if not m.is_file():
            raise ConfigError(f"{m}: model file not found")
    BACKENDS.get(backend)
    if any(b < 1 for b in batch_sizes):
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_sizes}")
    x = None
    if inputs is not None:
        try:
            x = np.load(inputs, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{inputs}: --inputs is not a readable .npy file ({type(e).__name__})") from None
    try:
        settings = HarnessSettings(intra_op_threads=threads, min_duration_s=min_duration_s, min_runs=min_runs,
                                   rounds=rounds)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if target is not None:
        from kd2deploy.targets.api import bench_target_cli

        res = bench_target_cli(target, models, batch_sizes, settings, x, pipeline=pipeline,
                               identity_file=identity_file, known_hosts=known_hosts,
                               accept_new_host_key=accept_new_host_key, python=python,
                               energy_window_s=energy_window_s, cpu_power_w=cpu_power_w)
        console.print(f"on target {res['name']} ({res['facts']['cpu_model']}, onnxruntime "
                      f"{res['facts']['onnxruntime']} {res['settings']['provider']}), "
                      f"{res['settings']['intra_op_threads']} intra-op thread(s), "
                      f"per-call latency, {rounds} interleaved rounds; sha256 of every file checked there")
    else:
        res = bench_onnx(models, batch_sizes, settings, backend=backend, inputs=x)
        console.print(f"{backend}, {threads} intra-op thread(s), per-call latency, {rounds} interleaved rounds")
    typer.echo(format_table(res["results"]))
    for r in res["ratios"]:
        for b in r["per_batch"]:
            typer.echo(f"p50 {r['numerator']} / {r['denominator']} at batch {b['batch_size']}: "
                       f"{b['ratio_p50']:.2f}x (95 % CI {b['ci95'][0]:.2f}-{b['ci95'][1]:.2f})")
    for line in _target_energy_lines(res.get("energy")):
        typer.echo(line)
    if json_out is not None:
        write_json(json_out, res)
        console.print(f"wrote {json_out}")


def _target_energy_lines(energy: dict | None) -> list[str]:
    if not energy:
        return []
    if not energy.get("label"):
        return [f"energy: not available ({energy.get('reason')})"]
    lines = [f"energy per inference at batch {energy['batch_size']}, {energy['label_text']}:"]
    for name, m in energy["models"].items():
        g, a = m["j_per_inference_gross"], m["j_per_inference_active"]
        lines.append(f"  {name}: {g['mean'] * 1e3:.4g} mJ gross" + (f" ± {g['sd'] * 1e3:.2g}" if g["sd"] else "")
                     + (f", {a['mean'] * 1e3:.4g} mJ active" if a else ""))
    return lines


targets_app = typer.Typer(no_args_is_help=True, help="Edge devices reached over SSH (a pipeline's targets:).")
app.add_typer(targets_app, name="targets")


@targets_app.command("check")
@handle_errors
def targets_check(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: key.path=value.")] = None,
) -> None:
    """Connect to each target and print what it has: CPU, cores, OS, Python, numpy, onnxruntime, disk, sensors."""
    from kd2deploy.config import load_config
    from kd2deploy.targets.api import check_all

    cfg = load_config(pipeline, set_)
    raise typer.Exit(check_all(cfg.targets, typer.echo, source=str(pipeline)))


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (runs/<name>/<timestamp>/) or its results.json.")],
    format_: Annotated[list[str] | None, typer.Option("--format", help="md or html (repeatable); default: "
                                                      "the run's report.formats.")] = None,
    device: Annotated[Path | None, typer.Option("--device", help="A harness JSON measured on another device "
                                                "(harness.py --json): added to the run, then rendered.")] = None,
    device_name: Annotated[str | None, typer.Option("--device-name", help="Its name in the report "
                                                    "(default: the JSON file's stem).")] = None,
) -> None:
    """Re-render a run's report.md / report.html from its results.json (validated against the schema)."""
    from kd2deploy.report.rerender import rerender
    from kd2deploy.ui import step

    if device is not None:
        from kd2deploy.report.device import attach_device

        step(f"added device {attach_device(run_dir, device, device_name)!r} to {run_dir}")
    for path in rerender(run_dir, format_):
        step(f"wrote {path}")


@app.command()
@handle_errors
def compare(
    run_a: Annotated[Path, typer.Argument(help="Run A (folder or results.json), e.g. on the laptop.")],
    run_b: Annotated[Path, typer.Argument(help="Run B, e.g. the same pipeline on the edge board.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the comparison to this .md or .html file "
                                             "(default: print Markdown).")] = None,
) -> None:
    """Set two runs of one task side by side: headline, quality, latency, ratios with CI overlap, energy,
    environment."""
    from kd2deploy.report.compare import compare_text, write_compare
    from kd2deploy.ui import step

    if out is None:
        typer.echo(compare_text(run_a, run_b, "md"))
    else:
        step(f"wrote {write_compare(run_a, run_b, out)}")


def parse_budget(text: str) -> float:
    """``'20m'`` -> 1200.0; also ``90s``, ``1h``, ``1.5m`` or plain seconds."""
    import re

    from kd2deploy.errors import ConfigError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--budget {text!r}: expected a positive duration like 90s, 20m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@app.command()
@handle_errors
def sweep(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    budget: Annotated[str | None, typer.Option("--budget", help="Time per arm family (KD and each control), e.g. "
                                               "20m; counted over reruns (default: distill.search.budget_s).")] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Finished trials per arm family.")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="auto, tpe or grid (default: distill.search.sampler)."
                                                )] = None,
    method: Annotated[str | None, typer.Option("--method", help="Comma-separated losses, e.g. hinton,dkd.")] = None,
    temperature: Annotated[str | None, typer.Option("--temperature", "-T", help="Comma-separated, e.g. 1,2,4 "
                                                    "(default: distill.search.temperatures, else the pipeline's).")
                           ] = None,
    alpha: Annotated[str | None, typer.Option("--alpha", "-a", help="Comma-separated, e.g. 0.5,0.9.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Holds runs/<name>-sweep/ (study.db, sweep.json, best.yaml)."
                                      )] = Path("runs"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: key.path=value.")] = None,
) -> None:
    """Search the distillation settings (and the controls' own) on validation with an Optuna study; Ctrl-C and
    the same command again continue it."""
    from kd2deploy.config import load_config
    from kd2deploy.distill.study import SAMPLERS
    from kd2deploy.distill.sweep import format_sweep, sweep_pipeline
    from kd2deploy.errors import ConfigError

    def floats(text: str, flag: str) -> list[float]:
        try:
            return [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 1,2,4") from None

    cfg = load_config(pipeline, set_)
    if cfg.task != "tensor":
        raise ConfigError(f"{pipeline}: kd2deploy sweep is not built for task: {cfg.task}; allowed: task tensor")
    if sampler is not None and sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
    overrides: dict[str, list] = {}
    if temperature:
        overrides["temperatures"] = floats(temperature, "--temperature")
    if alpha:
        overrides["alphas"] = floats(alpha, "--alpha")
    if method:
        from kd2deploy.distill.losses import LOSSES

        try:
            overrides["methods"] = [LOSSES.check(m.strip()) for m in method.split(",") if m.strip()]
        except ValueError as e:
            raise ConfigError(f"--method {method!r}: {e}") from None
    try:
        result = sweep_pipeline(cfg, pipeline, out, budget_s=parse_budget(budget) if budget else None,
                                n_trials=trials, sampler=sampler, overrides=overrides)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: finished trials are kept in {out}/{cfg.name}-sweep/study.db; run the same "
                   "command again to continue the study", err=True)
        raise typer.Exit(130) from None
    typer.echo(format_sweep(result))


def entry() -> None:  # pragma: no cover - console script shim
    app(prog_name="kd2deploy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
