"""Terminal output: one rich console (stderr) for progress and messages, and a progress-bar factory."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False)


def progress() -> Progress:
    """A progress display for epochs and benchmark windows (transient lines are kept short)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _quiet() -> bool:
    """Ranks other than 0 of a torchrun job train silently: rank 0 speaks for the run."""
    import os

    return os.environ.get("RANK", "0") != "0"


def step(msg: str) -> None:
    if _quiet():
        return
    console.print(f"[green]✓[/green] {msg}")


def warn(msg: str) -> None:
    if _quiet():
        return
    console.print(f"[yellow]![/yellow] {msg}")
