from __future__ import annotations

from typing import Any

from qpatch import engine
from qpatch.commands import session
from qpatch.output import Console


def status(out: Console, result: dict[str, Any], *, target: str | None) -> int:
    with session(out, result, target, require_running=False, exclusive=False) as ctx:
        return engine.status(ctx)
