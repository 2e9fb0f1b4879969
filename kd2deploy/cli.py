"""The ``kd2deploy`` command line: a thin typer app; every command calls the Python API."""

from __future__ import annotations

import functools
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
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    global _debug
    _debug = debug


def handle_errors(fn):
    """Turns kd2deploy errors into one line on stderr and an exit code (2 bad input, 1 failure)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from kd2deploy.ui import console

        try:
            return fn(*args, **kwargs)
        except Kd2DeployError as e:
            if _debug:
                raise
            console.print(f"[red]error:[/red] {e}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]: finished files of this run are kept; partial ones were not written")
            raise typer.Exit(130) from None
        except OSError as e:
            if _debug:
                raise
            what = "the disk is full" if e.errno == 28 else (e.strerror or str(e))
            console.print(f"[red]error:[/red] {e.filename or 'a file'}: {what}", soft_wrap=True)
            raise typer.Exit(1) from None

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


@app.command()
@handle_errors
def run(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    out: Annotated[Path, typer.Option("--out", help="Folder that holds runs/<name>/<timestamp>/.")] = Path("runs"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: key.path=value.")] = None,
) -> None:
    """Run a pipeline: train, distil, export, benchmark, measure energy, write the report."""
    from rich.table import Table

    from kd2deploy.config import load_config
    from kd2deploy.pipeline import run_pipeline, summary_rows
    from kd2deploy.ui import console

    cfg = load_config(pipeline, set_)
    result = run_pipeline(cfg, out, source=pipeline)
    res = result.results
    batches = sorted({r["batch_size"] for r in res.get("benchmark", {}).get("results", [])})
    table = Table(title="kd2deploy summary (onnxruntime CPU)")
    for col in ["model", "params", "test acc (ONNX)", *[f"p50 µs b{b}" for b in batches], "mJ/inf (active)"]:
        table.add_column(col, justify="right" if col != "model" else "left")
    for row in summary_rows(res):
        table.add_row(*row)
    console.print(table)
    console.print(f"[bold]{res['headline']['text']}[/bold]")
    console.print(f"report: {result.dir / 'report.html'}")
    console.print(f"wall time: {res['run']['wall_s']:.1f} s")


def entry() -> None:  # pragma: no cover - console script shim
    app(prog_name="kd2deploy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
