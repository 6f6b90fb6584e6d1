"""Progress display for the CLI's long operations (project build and ingestion, local model
load, benchmarks). Drawn on stderr and only on a terminal: piped output stays clean."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def progress(console: Console) -> Progress:
    """A transient progress display: description, bar (pulsing while the total is unknown), count
    and elapsed time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}", style="dim"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def spinner(console: Console, description: str) -> Generator[None]:
    """Show `description` with a pulsing bar and the elapsed time while the block runs."""
    if not console.is_terminal:
        yield
        return
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        bar.add_task(description, total=None)
        yield


@contextmanager
def model_load_reporter(console: Console) -> Generator[None]:
    """While the block runs, each local model load (llama.cpp, in a worker thread) is shown."""
    if not console.is_terminal:
        yield
        return
    try:
        from bastion.gateway.formats import llamacpp
    except ImportError:  # pragma: no cover - the module itself has no heavy imports
        yield
        return

    @contextmanager
    def show(name: str) -> Generator[None]:
        with spinner(console, f"loading local model {name}"):
            yield

    previous = llamacpp.on_model_load(show)
    try:
        yield
    finally:
        llamacpp.on_model_load(previous)
