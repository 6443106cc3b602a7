from __future__ import annotations

from typing import Any

from qpatch.output import Console
from qpatch.patchspec import list_patches


def patches(out: Console, result: dict[str, Any]) -> int:
    rows = list_patches()
    result["patches"] = [{"name": n, "description": d} for n, d in rows]
    for name, description in rows:
        out.line(f"{name}\n    {description}")
    return 0
