"""Check the flags a patch adds against the target's own ComfyUI, before anything is written.

ComfyUI parses its command line with argparse at import, so a flag it does not know, an
ambiguous abbreviation, or two members of one mutually exclusive group stop the server
with exit status 2. Flags differ between versions, so the truth is the target's own
`main.py --help`, parsed here; nothing is hard-coded but the suggestions for intents
that are not flags at all (the post's `--fp16`, `--cpu-offload`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qpatch.errors import BadInput
from qpatch.report import Report
from qpatch.startup import FlagEdit

OnConflict = Literal["error", "skip", "replace"]


@dataclass(frozen=True)
class CliOption:
    """One option of ComfyUI's parser, as its help text describes it."""

    name: str  # the spelling qpatch writes: the first long one
    spellings: tuple[str, ...]  # every option string: ("-h", "--help")
    takes_value: bool = False
    value_optional: bool = False  # nargs "?" or "*": the flag alone is fine too
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ComfyCli:
    """The options and mutually exclusive groups of one ComfyUI."""

    options: tuple[CliOption, ...]
    groups: tuple[frozenset[str], ...]  # option names of each exclusive group

    def exact(self, spelling: str) -> CliOption | None:
        return next((o for o in self.options if spelling in o.spellings), None)

    def prefix_matches(self, spelling: str) -> list[CliOption]:
        """Options argparse would take `spelling` for as an abbreviation (long ones only)."""
        if not spelling.startswith("--"):
            return []
        return [o for o in self.options if any(s.startswith(spelling) for s in o.spellings)]

    def group_of(self, name: str) -> frozenset[str]:
        return next((g for g in self.groups if name in g), frozenset())


@dataclass(frozen=True)
class FlagRequest:
    """A flag a patch wants on the launch line (from the patch spec)."""

    flag: str
    value: str | None = None
    on_conflict: OnConflict = "error"
    when: Any = None  # a qpatch.conditions.Condition: written only where it holds
    allow_harmful: bool = False  # written even where qpatch/effects.yaml calls it harmful


# ------------------------------------------------------------------------ parsing

_OPTION_LINE = re.compile(r"^  (-\S.*?)(?:\s{2,}\S.*)?$")


def _value_shape(metavar: str) -> tuple[bool, bool, tuple[str, ...] | None]:
    """(takes_value, value_optional, choices) from how argparse prints the metavar."""
    if not metavar:
        return False, False, None
    optional = metavar.startswith("[")  # "[IP]", "[FAST ...]"; not "PATH [PATH ...]"
    inner = metavar.strip("[]").split(" ")[0]
    braces = re.fullmatch(r"\{(.*)\}", inner)
    if braces:
        return True, optional, tuple(braces.group(1).split(","))
    if optional and "," in inner and "..." not in metavar:
        # A literal metavar "[a,b,c]" (ComfyUI's EnumAction for --preview-method): a
        # required choice, not an optional value; argparse would print that as [{a,b,c}].
        return True, False, tuple(inner.split(","))
    return True, optional, None


def _parse_option_line(invocation: str) -> CliOption:
    parts = [p.strip() for p in invocation.split(", ")]
    spellings = tuple(p.split(" ", 1)[0] for p in parts)
    metavar = parts[-1].split(" ", 1)[1] if " " in parts[-1] else ""
    name = next((s for s in spellings if s.startswith("--")), spellings[0])
    return CliOption(name, spellings, *_value_shape(metavar))


def _usage(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("usage:")), None)
    if start is None:
        return ""
    block = [lines[start][len("usage:") :]]
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def _groups(usage: str) -> list[list[str]]:
    """Members of each `[--a | --b VAL | …]` (or `(…)`) in the usage line."""
    groups, depth, start = [], 0, 0
    for i, c in enumerate(usage):
        if c in "[(":
            depth += 1
            if depth == 1:
                start = i + 1
        elif c in "])":
            depth -= 1
            if depth == 0:
                members = _split_top(usage[start:i], " | ")
                if len(members) > 1:
                    groups.append([m.split(" ", 1)[0] for m in members])
    return groups


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "[({"
        depth -= c in "])}"
        if depth == 0 and text.startswith(sep, i):
            parts.append(text[last:i])
            last = i + len(sep)
    return [*parts, text[last:]]


def parse_help(text: str) -> ComfyCli:
    """Read the options and exclusive groups from the text of `main.py --help`."""
    options = [
        _parse_option_line(m.group(1)) for m in map(_OPTION_LINE.match, text.splitlines()) if m
    ]
    if not any(o.name == "--listen" for o in options):
        raise BadInput(
            "the target's `main.py --help` does not look like ComfyUI's",
            hint="check --comfyui-root and the python the start script uses",
        )
    cli = ComfyCli(tuple(options), ())
    groups = []
    for members in _groups(_usage(text)):
        found = [o.name for s in members if (o := cli.exact(s))]
        groups.append(frozenset(found))
    return ComfyCli(tuple(options), tuple(groups))


# ---------------------------------------------------------------------- checking

# Intents people write as flags that ComfyUI does not have (docs/design.md, section 9; "nearest real
# flags"): what to suggest instead, and why.
_INTENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "fp16": (
        ("--force-fp16", "--fp16-unet"),
        "Qwen-Image runs in bf16 in ComfyUI and fp16 risks overflow and black images; "
        "--bf16-unet is the safe precision flag",
    ),
    "cpu-offload": (
        ("--lowvram", "--novram", "--async-offload"),
        "--lowvram splits the model to offload parts to RAM; --novram offloads more",
    ),
}
_INTENTS["half"] = _INTENTS["fp16"]
_INTENTS["offload"] = _INTENTS["cpu-offload"]


def suggestions(cli: ComfyCli, flag: str) -> tuple[list[str], str | None]:
    """Nearest real flags for one this ComfyUI does not accept, and a note on the intent.

    A known intent beats spelling: difflib would offer `--fp16-vae` for `--fp16`, which
    is not what someone asking for fp16 to save memory meant."""
    key = flag.lstrip("-").lower().replace("_", "-")
    known, note = _INTENTS.get(key, ((), None))
    names = [o.name for o in cli.options]
    found = [n for n in known if n in names]
    return found or difflib.get_close_matches(flag, names, n=3, cutoff=0.6), note


def _resolve(cli: ComfyCli, flag: str, report: Report) -> CliOption | str:
    """The option argparse takes `flag` for, or why it refuses it."""
    exact = cli.exact(flag)
    if exact:
        return exact
    matches = cli.prefix_matches(flag)
    if len(matches) == 1:
        report.find(f"{flag} is short for {matches[0].name}; written in full", severity="info")
        return matches[0]
    near, note = suggestions(cli, flag)
    if matches:
        why = (
            f"{flag} is ambiguous for this ComfyUI (it could be "
            f"{', '.join(m.name for m in matches)}) and would stop it at start"
        )
    else:
        why = f"{flag} is not a flag of this ComfyUI and would stop it at start"
    near_text = f"; nearest: {', '.join(near)}" if near else ""
    return f"{why}{near_text}" + (f" ({note})" if note else "")


def _check_value(opt: CliOption, value: str | None) -> str | None:
    if value is not None and not opt.takes_value:
        return f"{opt.name} takes no value (got {value!r})"
    if value is None and opt.takes_value and not opt.value_optional:
        return f"{opt.name} needs a value"
    if value is not None and opt.choices and value not in opt.choices:
        return f"{opt.name} {value!r} is not one of {', '.join(opt.choices)}"
    return None


def _on_line(cli: ComfyCli, existing: Sequence[str], report: Report) -> list[tuple[str, CliOption]]:
    """(spelling, option) of each flag already on the launch line."""
    found = []
    for token in existing:
        if not token.startswith("-") or re.fullmatch(r"-\d.*", token):
            continue  # a value, not a flag
        spelling = token.split("=", 1)[0]
        opt = cli.exact(spelling)
        matches = cli.prefix_matches(spelling)
        if opt is None and len(matches) == 1:
            opt = matches[0]
        if opt is None:
            report.find(f"the launch line has {spelling}, which this ComfyUI does not accept")
        else:
            found.append((spelling, opt))
    return found


def plan_flags(
    cli: ComfyCli, requests: Sequence[FlagRequest], existing: Sequence[str]
) -> tuple[list[FlagEdit], Report]:
    """Turn a patch's flags into edits for the start script, or refuse all of them.

    `existing` is the words after main.py on the launch line(s) (startup.Launch.flags; for
    several launches, all of them). Every problem is collected and raised as one BadInput,
    so the user fixes the patch once.
    """
    report = Report()
    on_line = _on_line(cli, existing, report)
    errors: list[str] = []
    edits: list[FlagEdit] = []
    wanted: dict[str, str] = {}  # option name → the request that asked for it
    for req in requests:
        opt = _resolve(cli, req.flag, report)
        if isinstance(opt, str):
            errors.append(opt)
            continue
        if problem := _check_value(opt, req.value):
            errors.append(problem)
            continue
        group = cli.group_of(opt.name)
        clash = next((w for n, w in wanted.items() if n in group and n != opt.name), None)
        if clash:
            errors.append(
                f"the patch asks for both {clash} and {req.flag}, which exclude each other"
            )
            continue
        wanted[opt.name] = req.flag
        rivals = [s for s, o in on_line if o.name in group and o.name != opt.name]
        abbreviations = tuple(s for s, o in on_line if o is opt and s != opt.name)
        if rivals and req.on_conflict == "error":
            errors.append(
                f"{opt.name} is not allowed with {rivals[0]}, which the launch line already has"
            )
        elif rivals and req.on_conflict == "skip":
            report.find(f"{opt.name} not added: the server runs {rivals[0]}")
        else:
            edits.append(FlagEdit(opt.name, req.value, (*rivals, *abbreviations)))
    if errors:
        raise BadInput(
            "; ".join(errors),
            hint="fix the patch's flags (a conflict can say on_conflict: skip or replace)",
        )
    return edits, report
