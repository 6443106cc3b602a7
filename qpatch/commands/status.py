from __future__ import annotations

from qpatch import engine
from qpatch.output import Console
from qpatch.result import Result
from qpatch.session import session


def status(out: Console, result: Result, *, target: str | None, host: str | None = None) -> int:
    with session(out, result, target, require_running=False, exclusive=False, host=host) as ctx:
        return engine.status(ctx)
