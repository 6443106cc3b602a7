"""Steps the engine and every applier share: restart with the health gate, put the
original files back, read a file's hash as it is now."""

from __future__ import annotations

import time
from typing import Any

from qpatch import health
from qpatch.context import Context
from qpatch.errors import QpatchError
from qpatch.ledger import Ledger, sha256
from qpatch.targets.base import Target


def restart_and_wait(
    ctx: Context, why: str, ledger: Ledger, *, save_after: bool = True
) -> dict[str, Any]:
    """Restart and health-gate, with the ledger saying so meanwhile (restart_pending): a
    restart qpatch began is qpatch's to finish, even after a kill. A caller that saves the
    ledger right after (apply's `applied`) passes save_after=False; one that set the flag
    in the save before saves nothing extra up front."""
    if not ledger.restart_pending:
        ledger.restart_pending = True
        ctx.store.save(ledger)
    ctx.out.step(f"restarting ComfyUI ({why})")
    began = time.monotonic()
    ctx.target.restart()
    stats = wait_healthy(ctx)
    ctx.result.restart_s = round(time.monotonic() - began, 2)
    ledger.restart_pending = False
    if save_after:
        ctx.store.save(ledger)
    return stats


def finish_restart(ctx: Context, ledger: Ledger) -> None:
    """A restart an interrupted command began: ComfyUI must answer before anything else."""
    if not ctx.target.state().running:
        ctx.out.step("starting ComfyUI again (an interrupted qpatch run had stopped it)")
        ctx.target.start()
    wait_healthy(ctx)
    ledger.restart_pending = False
    ctx.store.save(ledger)


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
