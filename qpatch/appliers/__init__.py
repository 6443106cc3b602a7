"""Choose the applier once: from the plan when applying, from the ledger afterwards."""

from __future__ import annotations

from qpatch.appliers.base import Applier, Check
from qpatch.ledger import Ledger
from qpatch.plan import Plan

__all__ = ["Applier", "Check", "for_ledger", "for_plan"]


def for_plan(plan: Plan) -> Applier:
    if plan.recreates:
        from qpatch.appliers.container import ContainerApplier

        return ContainerApplier()
    from qpatch.appliers.files import FilesApplier

    return FilesApplier()


def for_ledger(ledger: Ledger) -> Applier:
    """The applier that wrote this ledger: the one that can undo it."""
    if ledger.recreate is not None:
        from qpatch.appliers.container import ContainerApplier

        return ContainerApplier()
    from qpatch.appliers.files import FilesApplier

    return FilesApplier()
