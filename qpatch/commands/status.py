from __future__ import annotations

from qpatch import engine
from qpatch.output import Console
from qpatch.result import Result
from qpatch.session import session


def status(out: Console, result: Result, *, target: str | None) -> int:
    with session(out, result, target, require_running=False, exclusive=False) as ctx:
        return engine.status(ctx)
