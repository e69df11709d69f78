"""Where the CLI's output goes: data to stdout, messages and progress to stderr, or one JSON
document.

Commands never print directly; they ask the Output of the current invocation, which knows the
global --quiet and --json settings and whether stderr is a terminal (no progress bars otherwise).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import click

from .common import finite_json


@dataclass
class Settings:
    debug: bool = False
    quiet: bool = False
    json: bool = False


class Output:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._err = None
        self._out = None

    @property
    def json_mode(self) -> bool:
        return self.settings.json

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    @property
    def out(self):
        if self._out is None:
            from rich.console import Console

            # Piped output gets a wide fixed width, so tables of long paths do not fold.
            width = None if sys.stdout.isatty() else 160
            self._out = Console(highlight=False, soft_wrap=True, width=width)
        return self._out

    def info(self, message: str) -> None:
        """A progress or status message (stderr; silent with --quiet or --json)."""
        if not (self.settings.quiet or self.settings.json):
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        """A warning (stderr; silent with --quiet)."""
        if not self.settings.quiet:
            self.err.print(f"warning: {message}", style="yellow", markup=False)

    def line(self, text: str = "", style: str | None = None) -> None:
        """A line of data on stdout."""
        self.out.print(text, style=style, markup=False)

    def render(self, renderable) -> None:
        self.out.print(renderable)

    def emit_json(self, document: object) -> None:
        """The one machine-readable document of --json mode, on stdout."""
        click.echo(finite_json.dumps(document, indent=2, default=str))

    @contextmanager
    def progress(self, total: int | None, description: str) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr when it is a terminal; yields ``advance(amount)``."""
        if self.settings.quiet or self.settings.json or not sys.stderr.isatty():
            yield lambda amount: None
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda amount: bar.advance(task, amount)


def current_output() -> Output:
    """The Output of the running command (works also when a command is invoked directly)."""
    ctx = click.get_current_context(silent=True)
    settings = Settings()
    while ctx is not None:
        if isinstance(ctx.obj, Settings):
            settings = ctx.obj
            break
        ctx = ctx.parent
    local = click.get_current_context(silent=True)
    if local is not None and local.params.get("json_output"):
        settings = Settings(settings.debug, settings.quiet, True)
    return Output(settings)


def json_option(func):
    """``--json``: one machine-readable document on stdout (same as the global ``hps --json``)."""
    return click.option(
        "--json",
        "json_output",
        is_flag=True,
        help="Print one JSON document on stdout instead of text.",
    )(func)
