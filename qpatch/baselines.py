"""Named baselines: a measurement kept on this host by `qpatch measure --save NAME`, so
`qpatch verify --baseline NAME` can compare a patched run with a run made before (another
day, another server's flags, the inference floor) instead of only with apply's own."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from qpatch.errors import BadInput
from qpatch.paths import host_state_dir

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


def save(
    name: str,
    *,
    target: str,
    workflow: str,
    measurement: dict[str, Any],
    runs: list[dict[str, Any]],
) -> Path:
    """Keep it atomically (a reader never sees half a file); an older one of that name is
    replaced."""
    path = _path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "name": name,
        "target": target,
        "workflow": workflow,
        "time": time.time(),
        "measurement": measurement,
        "runs": runs,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def load(name: str) -> dict[str, Any]:
    """The saved measurement of that name; a clear error when there is none."""
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
    return data["measurement"]
