"""What a planning step did and noticed, in words a user understands.

Shared by the codemods and the start-script editor so the engine prints and
serialises them one way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Change:
    kind: str  # e.g. "checkpoint-wrap", "import", "env", "flag"
    line: int | None
    detail: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.detail}"


@dataclass(frozen=True)
class Finding:
    message: str
    line: int | None = None
    severity: Literal["info", "warning"] = "warning"
    # A stable word for scripts and tests (e.g. "pipeline": why a call was left alone).
    code: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{self.severity}: {where}{self.message}"


@dataclass
class Report:
    changes: list[Change] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    already_applied: bool = False

    def change(self, kind: str, line: int | None, detail: str) -> None:
        self.changes.append(Change(kind, line, detail))

    def find(
        self,
        message: str,
        line: int | None = None,
        severity: Literal["info", "warning"] = "warning",
        code: str | None = None,
    ) -> None:
        self.findings.append(Finding(message, line, severity, code))

    def extend(self, other: Report) -> None:
        self.changes.extend(other.changes)
        self.findings.extend(other.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": [asdict(c) for c in self.changes],
            "findings": [asdict(f) for f in self.findings],
            "already_applied": self.already_applied,
        }
