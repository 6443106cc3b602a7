"""`when:` conditions: what an edit needs to be true of the server, decided from evidence.

One small language serves the patch files (a step, env var or flag may carry `when:`) and the
effects table (qpatch/effects.yaml), so a rule and a patch say "ComfyUI 0.15 or later under
Dynamic VRAM" the same way:

    when: {comfyui: ">=0.15", dynamic_vram: true}
    when: {not: {weights_dtype: [fp8_e4m3fn, fp8_e5m2]}}

Keys are ANDed. Evidence can be missing (no workflow to read the weights from, a server that
does not answer), so a condition is three-valued: True, False, or None with what was not known.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qpatch.errors import BadInput
from qpatch.evidence import Evidence, Fact, version_tuple

_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)\s*$")


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)), b + (0,) * (n - len(b))


_OPS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass(frozen=True)
class VersionRange:
    """ ">=0.15,<0.18": every clause must hold."""

    text: str
    clauses: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        clauses = []
        for part in text.split(","):
            found = _CLAUSE.match(part)
            if not found:
                raise ValueError(f"{part.strip()!r} is not like '>=0.15'")
            clauses.append((found.group(1), tuple(int(p) for p in found.group(2).split("."))))
        return cls(text, tuple(clauses))

    def contains(self, version: tuple[int, ...]) -> bool:
        return all(_OPS[op](*_pad(version, bound)) for op, bound in self.clauses)


@dataclass(frozen=True)
class Outcome:
    """A condition's value: True/False, or None (not known); `why` says on what evidence."""

    value: bool | None
    why: str


@dataclass(frozen=True)
class Condition:
    """A parsed `when:`: (key, expected) pairs, ANDed; `negated` for a `not:`."""

    terms: tuple[tuple[str, Any], ...] = ()
    negated: tuple[Condition, ...] = ()
    text: str = ""  # as written, for messages

    def decide(self, evidence: Evidence, flags: Sequence[str] = ()) -> Outcome:
        """Whether it holds on this server; `flags` are the server's flags after the edit."""
        outcomes = [_term(key, want, evidence, flags) for key, want in self.terms]
        for inner in self.negated:
            o = inner.decide(evidence, flags)
            outcomes.append(Outcome(None if o.value is None else not o.value, f"not ({o.why})"))
        false = [o for o in outcomes if o.value is False]
        if false:
            return Outcome(False, "; ".join(o.why for o in false))
        unknown = [o for o in outcomes if o.value is None]
        if unknown:
            return Outcome(None, "; ".join(o.why for o in unknown))
        return Outcome(True, "; ".join(o.why for o in outcomes))


KEYS = ("comfyui", "torch", "dynamic_vram", "device", "allocator", "weights_dtype", "flags")


def parse_condition(value: object, where: str) -> Condition:
    """A `when:` mapping, checked; BadInput naming `where` (e.g. "p.yaml: steps[2].when")."""
    if not isinstance(value, dict) or not value:
        raise BadInput(f"{where}: expected a mapping of conditions ({', '.join(KEYS)}, not)")
    terms: list[tuple[str, Any]] = []
    negated: list[Condition] = []
    for key, want in value.items():
        if key == "not":
            negated.append(parse_condition(want, f"{where}.not"))
        elif key in ("comfyui", "torch"):
            try:
                terms.append((key, VersionRange.parse(str(want))))
            except ValueError as e:
                raise BadInput(f"{where}.{key}: {e} (a version range: '>=0.15,<0.18')") from None
        elif key == "dynamic_vram":
            if not isinstance(want, bool):
                raise BadInput(f"{where}.dynamic_vram: expected true or false")
            terms.append((key, want))
        elif key in ("device", "allocator", "weights_dtype", "flags"):
            items = [want] if isinstance(want, str) else want
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise BadInput(f"{where}.{key}: expected a string or a list of strings")
            terms.append((key, tuple(items)))
        else:
            raise BadInput(f"{where}.{key}: unknown condition (known: {', '.join(KEYS)}, not)")
    return Condition(tuple(terms), tuple(negated), _words(value))


def _words(value: Mapping[str, Any]) -> str:
    def shown(v: Any) -> str:
        if isinstance(v, list):
            return " or ".join(map(str, v))
        if isinstance(v, dict):
            return f"({_words(v)})"
        return str(v).lower() if isinstance(v, bool) else str(v)

    return ", ".join(
        f"{k} {shown(v)}" if k == "not" else f"{k}: {shown(v)}" for k, v in value.items()
    )


def _term(key: str, want: Any, evidence: Evidence, flags: Sequence[str]) -> Outcome:
    if key == "flags":
        missing = [f for f in want if f not in flags]
        return Outcome(
            not missing,
            f"the server runs {' '.join(want)}"
            if not missing
            else f"the server does not run {' '.join(missing)}",
        )
    fact: Fact = getattr(evidence, key)
    if fact.value is None:
        return Outcome(None, f"{fact.label} not known ({fact.source})")
    seen = f"{fact.label} {fact.shown} ({fact.source})"
    if isinstance(want, VersionRange):
        version = version_tuple(str(fact.value))
        if version is None:
            return Outcome(None, f"{fact.label} {fact.value!r} is no version ({fact.source})")
        return Outcome(want.contains(version), f"{seen}, wanted {want.text}")
    if isinstance(want, bool):
        return Outcome(fact.value is want, seen)
    values = fact.value if isinstance(fact.value, tuple) else (fact.value,)
    matching = [v in want for v in values]
    wanted = f"{seen}, wanted {' or '.join(want)}"
    if any(matching) and not all(matching):  # files of several dtypes: some fit, some not
        return Outcome(None, f"{wanted}: only some of them")
    return Outcome(all(matching), wanted)
