"""What an env or flag edit does on this server: effective, no-op, harmful, or unknown.

The facts live in effects.yaml, one row each, so a change upstream is one row and no `if`
here; this module only reads the table and applies its rule: for an edit, the rows naming it
in order, the first whose `when:` holds decides; an earlier row that cannot be decided makes
the effect unknown, since it might have applied.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import yaml

from qpatch.conditions import Condition, parse_condition
from qpatch.errors import BadInput
from qpatch.evidence import Evidence


class Effect(enum.Enum):
    EFFECTIVE = "effective"
    NO_OP = "no-op"
    HARMFUL = "harmful"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Rule:
    kind: str  # "flag" or "env"
    names: tuple[str, ...]
    contains: str | None  # a part the edit's value must have (env values)
    when: Condition
    effect: Effect
    why: str
    source: str

    def names_edit(self, kind: str, name: str, value: str | None) -> bool:
        return (
            kind == self.kind
            and name in self.names
            and (
                self.contains is None
                or _bare(self.contains) in map(_bare, (value or "").split(","))
            )
        )


def _bare(part: str) -> str:
    """`expandable_segments: True` as torch reads it: spaces do not count."""
    return "".join(part.split())


@dataclass(frozen=True)
class Verdict:
    """An edit's effect here, why, and the evidence that decided it."""

    kind: str
    name: str
    value: str | None
    effect: Effect
    why: str
    evidence: str
    source: str = ""

    @property
    def edit(self) -> str:
        if self.kind == "env":
            return f"{self.name}={self.value}"
        return self.name if self.value is None else f"{self.name} {self.value}"

    def __str__(self) -> str:
        return f"{self.edit}: {self.effect.value}: {self.why} ({self.evidence})"

    def to_json(self) -> dict[str, Any]:
        return {
            "edit": self.edit,
            "kind": self.kind,
            "effect": self.effect.value,
            "why": self.why,
            "evidence": self.evidence,
            "source": self.source,
        }


def parse_rules(text: str, source: str) -> tuple[Rule, ...]:
    try:
        rows = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BadInput(f"{source}: not valid YAML: {e}") from None
    if not isinstance(rows, list):
        raise BadInput(f"{source}: expected a list of rules")
    rules = []
    for i, row in enumerate(rows):
        where = f"{source}: [{i}]"
        if not isinstance(row, dict) or ("flag" in row) == ("env" in row):
            raise BadInput(f"{where}: a rule names one `flag:` or one `env:`")
        kind = "flag" if "flag" in row else "env"
        names = row[kind] if isinstance(row[kind], list) else [row[kind]]
        try:
            effect = Effect(row.get("effect"))
        except ValueError:
            raise BadInput(f"{where}.effect: one of {', '.join(e.value for e in Effect)}") from None
        rules.append(
            Rule(
                kind,
                tuple(str(n) for n in names),
                row.get("contains"),
                parse_condition(row["when"], f"{where}.when") if "when" in row else Condition(),
                effect,
                str(row.get("why") or ""),
                str(row.get("source") or ""),
            )
        )
    return tuple(rules)


@cache
def rules() -> tuple[Rule, ...]:
    table = files("qpatch") / "effects.yaml"
    return parse_rules(table.read_text(encoding="utf-8"), "qpatch/effects.yaml")


def judge(
    kind: str,
    name: str,
    value: str | None,
    evidence: Evidence,
    flags: Sequence[str] = (),
    table: Sequence[Rule] | None = None,
) -> Verdict:
    """The effect of setting env `name`=`value` or adding flag `name` [`value`] on this
    server, whose flags after the edit are `flags`."""
    undecided: list[tuple[Rule, str]] = []
    for rule in table if table is not None else rules():
        if not rule.names_edit(kind, name, value):
            continue
        outcome = rule.when.decide(evidence, flags)
        if outcome.value is None:
            undecided.append((rule, outcome.why))
            continue
        if not outcome.value:
            continue
        if undecided:
            break
        return Verdict(
            kind, name, value, rule.effect, rule.why, outcome.why or "always", rule.source
        )
    if undecided:
        rule, why = undecided[0]
        return Verdict(
            kind,
            name,
            value,
            Effect.UNKNOWN,
            f"{rule.effect.value} if {rule.when.text}",
            why,
            rule.source,
        )
    return Verdict(kind, name, value, Effect.UNKNOWN, "no rule says what it does here", "—")
