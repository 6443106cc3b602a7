from __future__ import annotations

from qpatch import engine
from qpatch.output import Console
from qpatch.result import Result
from qpatch.session import session


def rollback(
    out: Console,
    result: Result,
    *,
    target: str | None,
    host: str | None = None,
    no_restart: bool,
    force: bool,
    timeout: float,
    restart_cmd: str | None,
) -> int:
    with session(
        out,
        result,
        target,
        require_running=False,
        timeout=timeout,
        restart_cmd=restart_cmd,
        host=host,
    ) as ctx:
        return engine.rollback(ctx, restart=not no_restart, force=force)
