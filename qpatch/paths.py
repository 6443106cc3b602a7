"""Where qpatch keeps its own state on this host, shared by the ledger mirror and the
local target's server log so both land in one folder per target, and how it is written."""

from __future__ import annotations

import os
from pathlib import Path


def host_state_dir() -> Path:
    """XDG state: survives reboots unlike /tmp, needs no root unlike /var/lib."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "qpatch"


def write_atomically(path: Path, data: bytes) -> None:
    """A temp file beside it, then a rename: a reader (or a kill) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
