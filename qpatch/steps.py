"""Steps the engine and every applier share: restart with the health gate, put the
original files back, read a file's hash as it is now."""

from __future__ import annotations

from typing import Any

from qpatch import health
from qpatch.context import Context
from qpatch.errors import QpatchError
from qpatch.ledger import Ledger, sha256
from qpatch.targets.base import Target


def restart_and_wait(ctx: Context, why: str) -> dict[str, Any]:
    ctx.out.step(f"restarting ComfyUI ({why})")
    ctx.target.restart()
    return health.wait_healthy_shown(ctx.api, ctx.out, timeout=ctx.timeout)


def wait_healthy(ctx: Context, where: str = "") -> dict[str, Any]:
    return health.wait_healthy_shown(ctx.api, ctx.out, timeout=ctx.timeout, where=where)


def current_sha(target: Target, path: str) -> str | None:
    return sha256(target.read_file(path)[0]) if target.exists(path) else None


def restore_files(ctx: Context, ledger: Ledger) -> list[str]:
    """Put every original back and check its hash; return the paths that were rewritten."""
    restored = []
    for rec in ledger.files:
        if current_sha(ctx.target, rec.path) == rec.sha256_before:
            continue
        original = ctx.store.backup(rec)
        ctx.target.write_file(rec.path, original, rec.stat)
        if current_sha(ctx.target, rec.path) != rec.sha256_before:
            raise QpatchError(f"{rec.path}: restored bytes do not match the original's sha256")
        restored.append(rec.path)
        ctx.out.step(f"restored {rec.path}")
    return restored
