"""A command's outcome as one typed object, the JSON object `--json` prints.

Each command fills in what it knows; what it never set is left out of the JSON (a dry run
has no `comparison`, a `patches` listing no `files`), while a field set to None stays
(`"patch": null` says "no patch", which is an answer)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass
class Result:
    status: str = UNSET
    target: str = UNSET
    patch: str | None = UNSET
    files: list[dict[str, Any]] = UNSET
    findings: list[str] = UNSET
    container: dict[str, Any] = UNSET  # apply --recreate: the planned Env and command
    evidence: dict[str, Any] = UNSET  # apply: what the server is, each fact with its source
    effects: list[dict[str, Any]] = UNSET  # apply: every env and flag edit, with its effect
    argv: list[str] | None = UNSET  # the flags the patched server really runs with
    restart_s: float = UNSET  # the last restart, from stop to healthy
    engine: str = UNSET  # the --host the target was reached through, where one was given
    checks: list[dict[str, Any]] = UNSET  # verify
    measurement: dict[str, Any] = UNSET  # verify --workflow
    measurements: dict[str, Any] = UNSET  # apply --measure: baseline and after
    comparison: dict[str, Any] = UNSET
    history: list[dict[str, Any]] = UNSET  # status
    ledger: str = UNSET  # status: where the ledger lives in the target
    recreate: dict[str, Any] = UNSET  # status of a swapped container
    patches: list[dict[str, str]] = UNSET  # qpatch patches
    baked: dict[str, Any] = UNSET  # a container born from a baked image; bake's image
    targets: list[dict[str, Any]] = UNSET
    tasks: dict[str, Any] = (
        UNSET  # a service: each reachable task's files  # a fleet command: one object per target
    )
    error: str = UNSET
    exit_code: int = UNSET
    #: commands run by this one (the demo's apply, verify, rollback), by name
    steps: dict[str, Result] = field(default_factory=dict)

    def step(self, name: str) -> Result:
        """The result of a command run as part of this one."""
        self.steps[name] = Result()
        return self.steps[name]

    def to_json(self) -> dict[str, Any]:
        data = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "steps" and getattr(self, f.name) is not UNSET
        }
        data.update({name: sub.to_json() for name, sub in self.steps.items()})
        return data
