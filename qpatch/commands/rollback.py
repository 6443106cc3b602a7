from __future__ import annotations

from typing import Any

from qpatch import engine
from qpatch.commands import session
from qpatch.output import Console


def rollback(
    out: Console,
    result: dict[str, Any],
    *,
    target: str | None,
    no_restart: bool,
    force: bool,
    timeout: float,
    restart_cmd: str | None,
) -> int:
    with session(
        out, result, target, require_running=False, timeout=timeout, restart_cmd=restart_cmd
    ) as ctx:
        return engine.rollback(ctx, restart=not no_restart, force=force)
