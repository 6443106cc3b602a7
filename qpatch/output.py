"""Human lines and progress on the terminal, or one JSON object on stdout for scripts:
with --json everything for people goes to stderr, so stdout stays parseable."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click


def say(text: str, *, err: bool, nl: bool = True, **style: Any) -> None:
    """click.secho that outlives its reader. A fleet's child writes to pipes its parent
    reads; a parent gone (killed, its terminal closed) must not turn a child's next line
    into an exception in the middle of restoring a target."""
    with contextlib.suppress(OSError):  # BrokenPipeError, or EIO from a closed terminal
        click.secho(text, err=err, nl=nl, **style)


class Console:
    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self._err = as_json  # human output to stderr when stdout carries JSON
        self._last_progress = 0.0
        # a fleet's child: each step goes to the parent's live view too (qpatch.fleet)
        fd = os.environ.pop("QPATCH_PROGRESS_FD", None)
        self._phases = os.fdopen(int(fd), "w", buffering=1) if fd and fd.isdigit() else None

    def line(self, msg: str = "", **style: Any) -> None:
        say(msg, err=self._err, **style)

    def step(self, msg: str) -> None:
        self.line(f"• {msg}")
        self._phase(msg)

    def _phase(self, msg: str) -> None:
        if self._phases is not None:
            try:
                self._phases.write(msg.replace("\n", " ") + "\n")
            except OSError:
                self._phases = None  # the parent went away: the command goes on

    def ok(self, msg: str) -> None:
        self.line(f"✓ {msg}", fg="green")
        self._phase(msg)

    def warn(self, msg: str) -> None:
        say(f"! {msg}", err=True, fg="yellow")

    def progress(self, label: str) -> Callable[[float], None]:
        """A callback for long waits: an updating line on a terminal, a line every 10 s else."""
        tty = sys.stderr.isatty()

        def show(elapsed: float) -> None:
            if tty:
                say(f"\r  {label} … {elapsed:4.0f} s", err=True, nl=False)
            elif time.monotonic() - self._last_progress >= 10:
                self._last_progress = time.monotonic()
                say(f"  {label} … {elapsed:.0f} s", err=True)

        return show

    def end_progress(self) -> None:
        if sys.stderr.isatty():
            say("\r" + " " * 60 + "\r", err=True, nl=False)

    def result(self, obj: dict[str, Any]) -> None:
        if self.as_json:
            say(json.dumps(obj, indent=2, sort_keys=True, default=str), err=False)
