"""Run one qpatch child per target, at most N at a time, and keep what each reports.

Each target gets the single-target command, unchanged, in its own process: the engine's
invariant (a failure after the first write restores the target) holds per target as it
does alone, the children share no state, and libcst's work spreads over the cores. The
children run in their own sessions, so the terminal's Ctrl-C reaches only this process,
which decides: the first stops new starts and lets those in flight finish; the second
passes SIGINT on to them, and each restores its target as a single command would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from qpatch.fleet.members import Member

#: The child writes each step it begins (Console.step) to this file descriptor.
PROGRESS_FD_ENV = "QPATCH_PROGRESS_FD"

WAITING, RUNNING, DONE, NOT_STARTED = "waiting", "running", "done", "not-started"


@dataclass
class Outcome:
    """One target's run, as it goes and once it ended."""

    member: Member
    state: str = WAITING
    phase: str = "waiting"
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    result: dict[str, Any] | None = None  # the child's --json object
    log: list[str] = field(default_factory=list)  # the child's lines for people
    reason: str | None = None  # why it never started
    interrupted: bool = False  # Ctrl-C reached it (the fleet's, twice) while it ran

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.monotonic()) - self.started

    @property
    def failed(self) -> bool:
        return self.state == DONE and self.exit_code != 0


class View(Protocol):
    """What the operator sees while the fleet runs (qpatch.fleet.view)."""

    def update(self, outcomes: Sequence[Outcome]) -> None: ...

    def note(self, message: str) -> None: ...

    def close(self, outcomes: Sequence[Outcome]) -> None: ...


class _Child:
    """A started child with threads draining its three pipes (a full pipe would stall it)."""

    def __init__(self, outcome: Outcome, argv: Sequence[str]) -> None:
        self.outcome = outcome
        read_fd, write_fd = os.pipe()
        env = {**os.environ, PROGRESS_FD_ENV: str(write_fd)}
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(write_fd,),
                env=env,
            )
        finally:
            os.close(write_fd)
        self._stdout = bytearray()
        self._signalled = False
        self._threads = [
            _drain(self.proc.stdout, self._stdout.extend),  # type: ignore[arg-type]
            _drain_lines(self.proc.stderr, outcome.log.append),  # type: ignore[arg-type]
            _drain_lines(os.fdopen(read_fd, "rb"), self._phase),
        ]

    def _phase(self, line: str) -> None:
        if line.strip():
            self.outcome.phase = line.strip()

    def poll(self) -> bool:
        """Whether the child ended; then its outcome is complete."""
        if self.proc.poll() is None:
            return False
        for t in self._threads:
            t.join(timeout=5)  # a server it started detached may hold a pipe: not ours to wait
        o = self.outcome
        o.ended, o.state, o.exit_code = time.monotonic(), DONE, self.proc.returncode
        try:
            o.result = json.loads(self._stdout.decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            o.result = None  # it died before printing: its log says why
        o.phase = (o.result or {}).get("status") or f"ended (exit status {o.exit_code})"
        return True

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C on a single command: it restores what it wrote, then exits.
        Once only: a second one could cut the restore itself short."""
        self.outcome.interrupted = True
        if self.proc.poll() is None and not self._signalled:
            self._signalled = True
            self.proc.send_signal(signal.SIGINT)


def _drain(stream: Any, sink: Callable[[bytes], object]) -> threading.Thread:
    def run() -> None:
        with stream:
            for chunk in iter(lambda: stream.read(65536), b""):
                sink(chunk)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _drain_lines(stream: Any, sink: Callable[[str], object]) -> threading.Thread:
    def run() -> None:
        with stream:
            for raw in stream:
                sink(raw.decode("utf-8", errors="replace").rstrip("\n"))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@dataclass
class Fleet:
    """Every member's outcome, in the members' order, and whether Ctrl-C stopped it."""

    outcomes: list[Outcome]
    interrupted: bool


def run(
    members: Sequence[Member],
    argv_for: Callable[[Member], list[str]],
    *,
    parallel: int,
    max_failures: int | None,
    view: View,
    tick: float = 0.2,
) -> Fleet:
    """Run them all. After `max_failures` failed targets no new one starts (those
    running finish); Ctrl-C as the module says."""
    outcomes = [Outcome(m) for m in members]
    pending = deque(outcomes)
    running: list[_Child] = []
    signals = 0  # counted by the handler; acted on by the loop (a handler that printed
    handled = 0  # could land inside the view's own write to stderr: a reentrant write)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1

    def take_signals() -> None:
        nonlocal handled
        while handled < signals:
            handled += 1
            if handled == 1:
                view.note(
                    f"interrupted: no new target starts; the {len(running)} in flight finish "
                    "(Ctrl-C again to stop them: each restores its target)"
                )
            elif handled == 2:
                view.note(f"stopping the {len(running)} in flight: each restores its target")
                for child in running:
                    child.interrupt()
            else:
                view.note("already stopping: each target in flight is restoring itself")

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in caught}
    failures = 0
    try:
        while pending or running:
            take_signals()
            while pending and len(running) < parallel:
                if _stop_reason(signals, failures, max_failures) is not None:
                    break
                outcome = pending.popleft()
                outcome.state, outcome.phase = RUNNING, "starting"
                outcome.started = time.monotonic()
                running.append(_Child(outcome, argv_for(outcome.member)))
                take_signals()  # a second Ctrl-C reaches this child too
            for child in [c for c in running if c.poll()]:
                running.remove(child)
                failures += child.outcome.failed
            if _stop_reason(signals, failures, max_failures) is not None and not running:
                break
            view.update(outcomes)
            time.sleep(tick)
        take_signals()
    finally:
        # this process leaving early (a bug, a kill it could catch): the children restore
        # their targets rather than be left writing to a parent that is gone
        for child in running:
            child.interrupt()
        for child in running:
            child.proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    reason = _stop_reason(signals, failures, max_failures)
    for outcome in pending:
        outcome.state, outcome.phase, outcome.reason = NOT_STARTED, "not started", reason
    view.close(outcomes)
    return Fleet(outcomes, signals > 0)


def _stop_reason(interrupts: int, failures: int, max_failures: int | None) -> str | None:
    if interrupts:
        return "interrupted (Ctrl-C)"
    if max_failures is not None and failures >= max_failures:
        return f"--max-failures {max_failures} reached"
    return None
