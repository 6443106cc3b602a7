"""Waiting out what the world does to a Docker engine mid-run, boundedly: the engine
restarting (its socket refuses, then answers again), a container paused by someone (exec
is refused until it is unpaused). Past the bound the caller gets one qpatch error that says
what happened and what to run next — never a requests traceback — and the engine's undo
turns it into "restored" or "could not restore, here is what is left"."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import docker.errors
import requests.exceptions

from qpatch.errors import QpatchError

T = TypeVar("T")

POLL_S = 0.5


def engine_wait_s() -> float:
    """How long a vanished engine is waited for (QPATCH_ENGINE_WAIT_S, default 60 s)."""
    return float(os.environ.get("QPATCH_ENGINE_WAIT_S", "60"))


def pause_wait_s() -> float:
    """How long a paused container is waited for (QPATCH_PAUSE_WAIT_S, default 60 s)."""
    return float(os.environ.get("QPATCH_PAUSE_WAIT_S", "60"))


class EngineGone(QpatchError):
    """The Docker engine did not answer within the bound."""


class TargetPaused(QpatchError):
    """The container stayed paused (docker pause) past the bound."""


#: What the SDK raises when the engine's socket is gone or refuses (a restarting dockerd).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
)


def is_paused_refusal(e: BaseException) -> bool:
    """Docker's answer to exec in a paused container: 409, "... is paused"."""
    return isinstance(e, docker.errors.APIError) and "is paused" in str(e)


def through_restarts(what: str, call: Callable[[], T], *, wait: float | None = None) -> T:
    """`call()`, retried while the engine is unreachable, up to `wait` seconds."""
    deadline = time.monotonic() + (engine_wait_s() if wait is None else wait)
    while True:
        try:
            return call()
        except CONNECTION_ERRORS as e:
            if time.monotonic() >= deadline:
                raise EngineGone(
                    f"the Docker engine did not answer for {engine_wait_s():.0f} s while "
                    f"{what} ({type(e).__name__})",
                    hint="once it answers again (systemctl status docker), run the same qpatch "
                    "command again: it finishes or undoes the interrupted run first",
                ) from e
            time.sleep(POLL_S)
