"""Human lines and progress on the terminal, or one JSON object on stdout for scripts:
with --json everything for people goes to stderr, so stdout stays parseable."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click


class Console:
    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self._err = as_json  # human output to stderr when stdout carries JSON
        self._last_progress = 0.0

    def line(self, msg: str = "", **style: Any) -> None:
        click.secho(msg, err=self._err, **style)

    def step(self, msg: str) -> None:
        self.line(f"• {msg}")

    def ok(self, msg: str) -> None:
        self.line(f"✓ {msg}", fg="green")

    def warn(self, msg: str) -> None:
        click.secho(f"! {msg}", err=True, fg="yellow")

    def progress(self, label: str) -> Callable[[float], None]:
        """A callback for long waits: an updating line on a terminal, a line every 10 s else."""
        tty = sys.stderr.isatty()

        def show(elapsed: float) -> None:
            if tty:
                click.echo(f"\r  {label} … {elapsed:4.0f} s", err=True, nl=False)
            elif time.monotonic() - self._last_progress >= 10:
                self._last_progress = time.monotonic()
                click.echo(f"  {label} … {elapsed:.0f} s", err=True)

        return show

    def end_progress(self) -> None:
        if sys.stderr.isatty():
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)

    def result(self, obj: dict[str, Any]) -> None:
        if self.as_json:
            click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
