"""Patches that survive recreation: an image committed from a patched container carries
labels naming the patch and the sha256 of every file it wrote, so a container born from
it is known to be patched without any ledger; and a container recreated from an image
without the patch is told apart from one that lost its ledger.

Pure but for the reads of `file_states` and `recreated_unpatched` (through the Target)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qpatch.ledger import Ledger, LedgerStore, State
from qpatch.steps import current_sha
from qpatch.targets.base import Target

PREFIX = "io.qpatch."
PATCH = PREFIX + "patch"
PATCH_VERSION = PREFIX + "patch-version"
FILES = PREFIX + "files"  # {path: sha256 as written}
ORIGINALS = PREFIX + "originals"  # {path: sha256 before}
QPATCH_VERSION = PREFIX + "qpatch-version"
SOURCE_IMAGE = PREFIX + "source-image"  # what the patched container ran: the way back
BAKED_FROM = PREFIX + "baked-from"  # the container committed

PATCHED, ORIGINAL, CHANGED, MISSING = "patched", "original", "changed", "missing"


@dataclass(frozen=True)
class Baked:
    patch: str
    patch_version: str
    files: dict[str, str]
    originals: dict[str, str]
    qpatch_version: str
    source_image: str
    baked_from: str

    def to_json(self) -> dict[str, Any]:
        return {
            "patch": self.patch,
            "patch_version": self.patch_version,
            "files": self.files,
            "originals": self.originals,
            "qpatch_version": self.qpatch_version,
            "source_image": self.source_image,
            "baked_from": self.baked_from,
        }


def labels_for(
    ledger: Ledger, *, source_image: str, container: str, qpatch_version: str
) -> dict[str, str]:
    """The labels an image baked from this (applied) ledger's container carries."""
    return {
        PATCH: ledger.patch,
        PATCH_VERSION: ledger.patch_version or "unknown",
        FILES: json.dumps({r.path: r.sha256_after for r in ledger.files}, sort_keys=True),
        ORIGINALS: json.dumps({r.path: r.sha256_before for r in ledger.files}, sort_keys=True),
        QPATCH_VERSION: qpatch_version,
        SOURCE_IMAGE: source_image,
        BAKED_FROM: container,
    }


def read(labels: Mapping[str, str]) -> Baked | None:
    """The patch a container's labels (its image's) say it was born with; None if none,
    or if the labels are not qpatch's own shape (a hand-made label is not evidence)."""
    if PATCH not in labels:
        return None
    try:
        files = json.loads(labels.get(FILES, ""))
        originals = json.loads(labels.get(ORIGINALS, "{}"))
    except json.JSONDecodeError:
        return None
    if not isinstance(files, dict) or not isinstance(originals, dict) or not files:
        return None
    return Baked(
        patch=labels[PATCH],
        patch_version=labels.get(PATCH_VERSION, "unknown"),
        files={str(k): str(v) for k, v in files.items()},
        originals={str(k): str(v) for k, v in originals.items()},
        qpatch_version=labels.get(QPATCH_VERSION, "unknown"),
        source_image=labels.get(SOURCE_IMAGE, ""),
        baked_from=labels.get(BAKED_FROM, ""),
    )


def file_states(target: Target, baked: Baked) -> dict[str, str]:
    """Each baked file as it is now: patched, original, changed or missing."""
    return states(target, baked.files, baked.originals)


def states(target: Target, after: Mapping[str, str], before: Mapping[str, str]) -> dict[str, str]:
    """Each file of `after` (path → sha256 as written) as it is now in `target`."""
    return {p: state_of(current_sha(target, p), sha, before.get(p)) for p, sha in after.items()}


def state_of(now: str | None, after: str, before: str | None) -> str:
    if now is None:
        return MISSING
    if now == after:
        return PATCHED
    return ORIGINAL if now == before else CHANGED


def replaced(target: Target, store: LedgerStore, ledger: Ledger | None) -> bool:
    """Whether the host's ledger is of another container under this name: it names the
    container the patch went into (its ID), this one has another ID and holds no ledger.
    A swap of apply --recreate keeps its ledger on the host by design, and a ledger from
    before IDs were kept proves nothing: neither counts."""
    if ledger is None or ledger.recreate is not None or ledger.instance is None:
        return False
    now = target.instance
    if now is None or now == ledger.instance:
        return False
    return not target.exists(store.path("ledger.json"))


def recreated_unpatched(target: Target, store: LedgerStore, ledger: Ledger | None) -> str | None:
    """Why the host's mirror no longer describes this container, or None when it does.

    The mirror says applied, yet the container was recreated (compose up, docker rm +
    run) from an image that does not carry the patch: its files are not all as written."""
    if ledger is None or ledger.state != State.APPLIED or not replaced(target, store, ledger):
        return None
    now = target.instance or ""
    found = states(
        target,
        {r.path: r.sha256_after for r in ledger.files},
        {r.path: r.sha256_before for r in ledger.files},
    )
    if all(state == PATCHED for state in found.values()):
        return None  # born from an image that carries the edits: the mirror still holds
    shown = ", ".join(f"{p}: {s}" for p, s in found.items())
    was = f" (was {(ledger.instance or '')[:12]}, now {now[:12]})"
    return (
        f"{target.ref} was recreated{was} from an image without the patch: it carries no "
        f"qpatch ledger, though {ledger.patch!r} was applied to the container it replaces "
        f"({shown})"
    )


def recreated_hint(ref: str) -> str:
    return (
        f"re-apply: qpatch apply {ref}; or make it survive recreation: qpatch bake {ref} "
        "--tag IMAGE:TAG after applying, and recreate from that image"
    )
