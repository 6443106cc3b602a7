"""The patch lands as files edited in place: back up, write each file atomically,
restart ComfyUI through the target, health-gate; undo puts the originals back byte-exact
and restarts."""

from __future__ import annotations

from typing import Any

from qpatch.appliers.base import Check
from qpatch.context import Context
from qpatch.errors import CheckFailed, NotRestored, QpatchError, Restored
from qpatch.faults import fault_point
from qpatch.ledger import Ledger, State
from qpatch.plan import Plan
from qpatch.steps import restart_and_wait, restore_files


class FilesApplier:
    target_survives_rollback = True

    def prepare(self, ctx: Context, plan: Plan, ledger: Ledger) -> None:
        """Nothing to refuse: plan.validate already checked every file can be replaced."""

    def apply(self, ctx: Context, plan: Plan, ledger: Ledger, *, restart: bool) -> Any:
        for edit in plan.changed_edits:
            ctx.target.write_file(edit.path, edit.after, edit.stat)
            ctx.out.step(f"wrote {edit.path}")
        fault_point("after-write")
        ctx.store.advance(ledger, State.WRITTEN)
        if not restart:
            return None
        ledger.restart_pending = True
        ctx.store.advance(ledger, State.RESTARTING)
        return restart_and_wait(ctx, "to load the patch", ledger, save_after=False)

    def undo(
        self, ctx: Context, ledger: Ledger, cause: BaseException, *, restarted: bool
    ) -> QpatchError:
        ctx.out.warn(f"{cause}; restoring the originals")
        logs = ctx.target.logs(20)
        try:
            restore_files(ctx, ledger)
            ledger.restart_pending = restarted or not ctx.target.state().running
            ctx.store.advance(ledger, State.RESTORED, f"apply failed and was undone: {cause}")
            if ledger.restart_pending:
                restart_and_wait(ctx, "with the originals", ledger)
        except Exception as e:
            return NotRestored(
                f"could not restore after: {cause}\n  restore failed: {e}\n"
                + self.manual_steps(ctx, ledger)
            )
        tail = "\n".join("    " + line for line in logs.splitlines()[-20:])
        return Restored(
            f"apply failed: {cause}\n  every file is back as it was and ComfyUI answers.\n"
            f"  the server's last log lines before the restore:\n{tail}"
        )

    def recover(self, ctx: Context, ledger: Ledger) -> str:
        restore_files(ctx, ledger)
        was_restarting = ledger.state == State.RESTARTING
        ledger.restart_pending = was_restarting or not ctx.target.state().running
        ctx.store.advance(ledger, State.RECOVERED, "interrupted run recovered: originals restored")
        if ledger.restart_pending:
            restart_and_wait(ctx, "the interrupted run had restarted it", ledger)
        return "recovered: every file is back as it was before the interrupted run"

    def rollback(self, ctx: Context, ledger: Ledger, *, restart: bool, forced: bool) -> str:
        try:
            restore_files(ctx, ledger)
        except QpatchError as e:
            raise NotRestored(f"rollback failed: {e}\n" + self.manual_steps(ctx, ledger)) from e
        event = "rolled back" + (" (forced over drift)" if forced else "")
        ledger.restart_pending = restart
        ctx.store.advance(ledger, State.ROLLED_BACK, event)
        if restart:
            try:
                restart_and_wait(ctx, "to unload the patch", ledger)
            except CheckFailed as e:
                raise CheckFailed(f"files restored, but ComfyUI is not healthy: {e}") from e
        return f"rolled back {ledger.patch}: every file is byte-exact as before"

    def manual_steps(self, ctx: Context, ledger: Ledger) -> str:
        lines = [f"Restore by hand in {ctx.target.description}:"]
        for rec in ledger.files:
            lines.append(
                f"  cp {ctx.store.path(rec.backup_name)} {rec.path}   "
                f"# host copy: {ctx.store.mirror / rec.backup_name}; sha256 {rec.sha256_before}"
            )
        lines.append("  then restart ComfyUI and run: qpatch status")
        return "\n".join(lines)

    def checks(self, ctx: Context, ledger: Ledger) -> list[Check]:
        return []

    def describe(self, ctx: Context, ledger: Ledger) -> str | None:
        return None

    def dry_run(self, plan: Plan) -> str | None:
        return None
