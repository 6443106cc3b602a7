"""Fault injection for the tests that prove nothing is lost when qpatch dies half-way."""

from __future__ import annotations

import os
import signal


def fault_point(name: str) -> None:
    """QPATCH_FAULT=<name> kills this process at that point exactly as `kill -9` would."""
    if os.environ.get("QPATCH_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
