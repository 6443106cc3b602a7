"""Named baselines: a measurement kept on this host by `qpatch measure --save NAME`, so
`qpatch verify --baseline NAME` can compare a patched run with a run made before (another
day, another server's flags, the inference floor) instead of only with apply's own."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from qpatch.errors import BadInput
from qpatch.paths import host_state_dir, write_atomically

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def folder() -> Path:
    return host_state_dir() / "baselines"


def load_name_check(name: str) -> None:
    """Refuse a name that could not be saved, before any work is done."""
    _path(name)


def _path(name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise BadInput(
            f"baseline name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)"
        )
    return folder() / f"{name}.json"


def save(name: str, *, target: str, workflow: str, measurement: dict[str, Any]) -> Path:
    """Keep it atomically (a reader never sees half a file); an older one of that name is
    replaced. `measurement` is a series' JSON (`vram.Series.to_json`): the median view
    a single-run reader reads, with every run and each row's spread under `series`."""
    path = _path(name)
    data = {
        "name": name,
        "target": target,
        "workflow": workflow,
        "time": time.time(),
        "measurement": measurement,
    }
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True).encode())
    return path


def load(name: str) -> dict[str, Any]:
    """The saved measurement of that name, as a series' JSON; a clear error when there is
    none. A file an older qpatch saved (one run standing for `runs`, each made the same
    way, after /free) reads back as the series of those runs, the first one cold."""
    path = _path(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        known = sorted(p.stem for p in folder().glob("*.json")) if folder().is_dir() else []
        raise BadInput(
            f"no saved baseline {name!r} (saved: {', '.join(known) or 'none'})",
            hint="save one with: qpatch measure TARGET --workflow FILE --save NAME",
        ) from None
    except (OSError, ValueError) as e:
        raise BadInput(f"baseline {name!r} at {path} cannot be read: {e}") from e
    try:
        return upgrade(data)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BadInput(f"baseline {name!r} at {path} is not a saved measurement: {e}") from e


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A saved file's measurement as a series' JSON, whichever qpatch saved it."""
    from qpatch.vram import Series  # NVML's bindings only for the commands that measure

    measurement = data["measurement"]
    if isinstance(measurement.get("series"), dict):
        return measurement
    runs = data.get("runs") or []
    if len(runs) >= 2:
        return Series.from_runs_json(runs).to_json()
    return Series.from_json(measurement).to_json()
