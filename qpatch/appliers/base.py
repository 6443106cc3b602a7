"""The ways a patch lands on a target, behind one small protocol (docs/design.md,
"Appliers"): files edited in place, or a container swapped for a patched replacement.

The engine picks one from the plan (apply) or the ledger (everything after) and only ever
calls these verbs, so a new way of landing a patch (a Swarm service rolled to a baked
image) is one new module that implements them."""

from __future__ import annotations

from typing import Any, Protocol

from qpatch.context import Context
from qpatch.errors import QpatchError
from qpatch.ledger import Ledger
from qpatch.plan import Plan

#: (check, ok, detail) lines an applier adds to `qpatch verify`
Check = tuple[str, bool, str]


class Applier(Protocol):
    #: Whether the target the command holds is still there after a rollback: where a copy
    #: of a file changed since apply can be kept (inside the target, or on this host only).
    target_survives_rollback: bool

    def prepare(self, ctx: Context, plan: Plan, ledger: Ledger) -> None:
        """Before the first change: refuse what could not be undone, record what undo
        will need in the ledger."""

    def apply(self, ctx: Context, plan: Plan, ledger: Ledger, *, restart: bool) -> Any:
        """Write the change and restart; /system_stats once healthy, None when not
        restarted. Advances the ledger before each step; the engine calls undo() on any
        exception."""

    def undo(
        self, ctx: Context, ledger: Ledger, cause: BaseException, *, restarted: bool
    ) -> QpatchError:
        """After a failure past the first change: the target back as it was (Restored,
        exit 1), or what is left to do by hand (NotRestored, exit 4)."""

    def recover(self, ctx: Context, ledger: Ledger) -> str:
        """Finish the undo of a run that was killed half-way; a line saying what is back."""

    def rollback(self, ctx: Context, ledger: Ledger, *, restart: bool, forced: bool) -> str:
        """Undo an applied patch on request; a line saying what is back."""

    def manual_steps(self, ctx: Context, ledger: Ledger) -> str:
        """How to undo by hand, for a message that says qpatch could not."""

    def checks(self, ctx: Context, ledger: Ledger) -> list[Check]:
        """What verify checks beyond the files' hashes and the health gate."""

    def describe(self, ctx: Context, ledger: Ledger) -> str | None:
        """A line for `qpatch status` beyond the files, or None."""

    def dry_run(self, plan: Plan) -> str | None:
        """What a dry run shows beyond the diffs, or None."""
