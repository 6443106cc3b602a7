"""The one unified diff qpatch prints (dry runs, drifted files): bytes in, text out,
undecodable bytes shown as replacement characters rather than refused."""

from __future__ import annotations

import difflib


def unified_diff(a: bytes, b: bytes, name_a: str, name_b: str) -> str:
    lines_a = a.decode("utf-8", "replace").splitlines(keepends=True)
    lines_b = b.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(lines_a, lines_b, name_a, name_b))
