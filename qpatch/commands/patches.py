from __future__ import annotations

from qpatch.output import Console
from qpatch.patchspec import list_patches
from qpatch.result import Result


def patches(out: Console, result: Result) -> int:
    rows = list_patches()
    result.patches = [{"name": n, "description": d} for n, d in rows]
    for name, description in rows:
        out.line(f"{name}\n    {description}")
    return 0
