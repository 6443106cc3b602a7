"""Edit a ComfyUI start script: export variables before the launch command, add flags to it.

Pure: bytes in, (bytes, Report) out. The script is somebody's hand-written one-click
launcher, so everything qpatch does not mean to change stays byte-identical (shebang,
BOM, CRLF, comments in any language, a missing final newline), and a second run returns
the same bytes, so `apply` can be repeated safely.

Words and their positions come from qpatch.shell (read with shlex); values are written
with `shlex.quote`. Edits are spans of the original text, applied at the end in one go.
"""

from __future__ import annotations

import codecs
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from qpatch.errors import BadInput
from qpatch.main_py import MAIN_PY, is_main_py
from qpatch.report import Report
from qpatch.shell import Command, Token, lex, split_commands

BLOCK_END = "# <<< qpatch <<<"


def block_start(patch_name: str) -> str:
    """The marker line that opens a patch's env block; the ledger and verify look for it."""
    return f"# >>> qpatch {patch_name} >>>"


@dataclass(frozen=True)
class FlagEdit:
    """A flag the launch command must carry after the edit (made by comfy_flags.plan_flags).

    `value` None keeps whatever value the flag already has on the line. `replaces` names
    flags to take off the line in its favour: the other member of a mutually exclusive
    group (`on_conflict: replace`), or an abbreviation of the same flag.
    """

    name: str
    value: str | None = None
    replaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Launch:
    """One command in the script that starts ComfyUI, as the engine needs it."""

    line: int  # 1-based line of the interpreter word
    interpreter: str  # "python3", "/root/venv/bin/python"
    script: str  # "main.py", "/root/ComfyUI/main.py"
    flags: tuple[str, ...]  # the words after the script, unquoted
    python_options: tuple[str, ...] = ()  # "-s", "-u" before the script
    runner: tuple[str, ...] = ()  # "env X=1", "conda run -n comfy", "sudo -u comfy"

    def help_argv(self, interpreter: str | None = None) -> list[str]:
        """The argv that asks this very ComfyUI for its flags, run with cwd = the ComfyUI
        root, through the same runner (`conda run`, `sudo -u`, `env`) as the launch;
        `interpreter` replaces a python the launch names relative to its own PATH."""
        python = interpreter or self.interpreter
        return [*self.runner, python, *self.python_options, MAIN_PY, "--help"]


# --------------------------------------------------------------------- launches

_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_CONDA_OPTIONS = frozenset({"-n", "--name", "-p", "--prefix", "--cwd"})
# Commands that run another command, each with its options that take an argument.
_WRAPPERS: dict[str, frozenset[str]] = {
    "exec": frozenset({"-a"}),
    "nohup": frozenset(),
    "command": frozenset(),
    "setsid": frozenset(),
    "nice": frozenset({"-n", "--adjustment"}),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "env": frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}),
    "sudo": frozenset({"-u", "--user", "-g", "--group", "-C", "-D", "--chdir", "-h", "-p"}),
    "conda": _CONDA_OPTIONS,
    "mamba": _CONDA_OPTIONS,
    "micromamba": _CONDA_OPTIONS,
}
_NEEDS_RUN = frozenset({"conda", "mamba", "micromamba"})
# Wrappers that choose the environment python runs in: `--help` must run the same way.
_RUNNERS = frozenset({"env", "sudo", "conda", "mamba", "micromamba"})
_PY_OPTIONS_WITH_ARG = frozenset({"-X", "-W", "-Q"})
_DECLARERS = frozenset({"export", "declare", "typeset", "readonly", "local"})


@dataclass(frozen=True)
class _Match:
    cmd: Command
    interpreter: int  # index of the python word in cmd.words
    script: int  # index of the main.py word
    runner: tuple[str, ...]


def _skip_options(words: list[Token], i: int, with_arg: frozenset[str]) -> int:
    """Index of the first word after a wrapper's options and VAR=value arguments."""
    while i < len(words):
        v = words[i].value
        if v.startswith("-") and v != "-":
            i += 2 if v in with_arg else 1
        elif _ASSIGNMENT.match(words[i].text):
            i += 1
        else:
            break
    return i


def _wrappers(words: list[Token]) -> Iterator[tuple[str, int, int]]:
    """(name, start, end) of each wrapper before the wrapped command; stops at a bad one."""
    i = 0
    while i < len(words) and _ASSIGNMENT.match(words[i].text):
        i += 1
    while i < len(words) and words[i].value in _WRAPPERS:
        name, start = words[i].value, i
        i += 1
        if name in _NEEDS_RUN:
            if i >= len(words) or words[i].value != "run":
                return
            i += 1
        i = _skip_options(words, i, _WRAPPERS[name])
        yield name, start, i


def _match_launch(cmd: Command) -> _Match | None:
    words = cmd.words
    i, runner = 0, []
    while i < len(words) and _ASSIGNMENT.match(words[i].text):
        i += 1
    for name, start, end in _wrappers(words):
        if name in _RUNNERS:
            runner += [w.value for w in words[start:end]]
        i = end
    if i >= len(words) or not _PYTHON.fullmatch(words[i].value.rsplit("/", 1)[-1]):
        return None
    interpreter = i
    i += 1
    while i < len(words) and words[i].value.startswith("-"):
        if words[i].value in ("-m", "-c", "-"):
            return None
        i += 2 if words[i].value in _PY_OPTIONS_WITH_ARG else 1
    if i < len(words) and is_main_py(words[i].value):
        return _Match(cmd, interpreter, i, tuple(runner))
    return None


def _decode(data: bytes) -> tuple[str, bytes]:
    """Text and BOM; surrogateescape so a script in GBK or Latin-1 still round-trips."""
    bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    return data[len(bom) :].decode("utf-8", errors="surrogateescape"), bom


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def find_launches(data: bytes) -> list[Launch]:
    """Every command in the script that starts ComfyUI, in order; empty when there is none."""
    text, _ = _decode(data)
    launches = []
    for m in filter(None, map(_match_launch, split_commands(lex(text)))):
        words = m.cmd.words
        launches.append(
            Launch(
                line=_line_of(text, words[m.interpreter].start),
                interpreter=words[m.interpreter].value,
                script=words[m.script].value,
                flags=tuple(w.value for w in words[m.script + 1 :]),
                python_options=tuple(w.value for w in words[m.interpreter + 1 : m.script]),
                runner=m.runner,
            )
        )
    return launches


# ------------------------------------------------------------------------ flags


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class _Flag:
    """A flag on the launch line with its value words."""

    name: str
    word: Token
    values: tuple[Token, ...] = ()

    @property
    def end(self) -> int:
        return (self.values[-1] if self.values else self.word).end


def _flags_on(words: Sequence[Token]) -> list[_Flag]:
    """The flags after main.py. ComfyUI takes no positional arguments, so every word up to
    the next flag is the previous flag's value ("$@" excepted: it is more flags)."""
    flags: list[_Flag] = []
    for w in words:
        if w.value.startswith("-"):
            flags.append(_Flag(w.value.split("=", 1)[0], w))
        elif flags and "=" not in flags[-1].word.value and not re.search(r"\$[@*]", w.text):
            last = flags[-1]
            flags[-1] = _Flag(last.name, last.word, (*last.values, w))
    return flags


def _render(name: str, value: str | None) -> str:
    if value is None:
        return name
    if value.startswith("-"):  # as a separate word argparse would read it as a flag
        return f"{name}={shlex.quote(value)}"
    return f"{name} {shlex.quote(value)}"


def _flag_edits(text: str, m: _Match, flags: Sequence[FlagEdit], report: Report) -> list[_Edit]:
    """Edits that make one launch command carry `flags`, each reported on its line."""
    words = m.cmd.words
    script = words[m.script]
    present = _flags_on(words[m.script + 1 :])
    stop = min((r for r in m.cmd.redirects if r > script.start), default=len(text))
    insert_at = max(w.end for w in words[m.script :] if w.end <= stop)
    line = _line_of(text, words[m.interpreter].start)
    edits: list[_Edit] = []
    added: list[str] = []

    def replace(flag: _Flag, new: str) -> None:
        edits.append(_Edit(flag.word.start, flag.end, new))
        report.change("flag", line, f"{text[flag.word.start : flag.end]} → {new}")

    for edit in flags:
        same = [f for f in present if f.name == edit.name]
        old = [f for f in present if f.name in edit.replaces and f.name != edit.name]
        new = _render(edit.name, edit.value)
        if same and edit.value is not None and _value_of(same[0]) != edit.value:
            equals = "=" in same[0].word.value  # keep the author's spelling
            replace(same[0], f"{edit.name}={shlex.quote(edit.value)}" if equals else new)
        elif not same and old:
            replace(old.pop(0), new)
        elif not same:
            added.append(new)
        for f in old:
            start = f.word.start
            while text[start - 1] in " \t":
                start -= 1
            edits.append(_Edit(start, f.end, ""))
            report.change("flag", line, f"removed {text[f.word.start : f.end]}")
    if added:
        edits.append(_Edit(insert_at, insert_at, "".join(f" {a}" for a in added)))
        report.change("flag", line, "added " + " ".join(added))
    return edits


def _value_of(flag: _Flag) -> str | None:
    if "=" in flag.word.value:
        return flag.word.value.split("=", 1)[1]
    return " ".join(v.value for v in flag.values) if flag.values else None


# -------------------------------------------------------------------------- env


def _existing_block(text: str, patch_name: str) -> tuple[int, int] | None:
    """Span (whole lines) of the env block an earlier run of this patch left."""
    start, offset = None, 0
    for line in text.splitlines(keepends=True):
        if start is None and line.strip() == block_start(patch_name):
            start = offset
        elif start is not None and line.strip() == BLOCK_END:
            return start, offset + len(line)
        offset += len(line)
    return None


def _assignment_words(cmd: Command) -> Iterator[tuple[str, Token]]:
    """(name, word) of each assignment: `X=…`, `X=… cmd`, `export X=…`, `env X=… cmd`."""
    words = cmd.words
    i = 0
    while i < len(words) and _ASSIGNMENT.match(words[i].text):
        i += 1
    found = words[:i]
    if i < len(words) and words[i].value in _DECLARERS:
        found += words[i + 1 :]
    else:
        for name, start, end in _wrappers(words):
            if name in ("env", "sudo"):
                found += words[start + 1 : end]
    for w in found:
        if m := _ASSIGNMENT.match(w.text):
            yield m.group(1), w


def _is_export(cmd: Command) -> bool:
    first = cmd.words[0].value
    return first == "export" or (first in _DECLARERS and any(w.value == "-x" for w in cmd.words))


def _assigned_value(name: str, word: Token) -> str:
    raw = word.text[len(name) + 1 :]
    return Token("word", raw, 0, 0).value if raw else ""


def _env_edits(
    text: str,
    commands: list[Command],
    launches: list[_Match],
    env: Mapping[str, str],
    report: Report,
) -> tuple[list[_Edit], dict[str, str]]:
    """Update existing assignments in place (a second value would shadow or be shadowed);
    return what the block must still export for the value to reach every launch."""
    edits: list[_Edit] = []
    needed: dict[str, str] = {}
    first_statement = launches[0].cmd.statement
    for name, value in env.items():
        found = [(c, w) for c in commands for n, w in _assignment_words(c) if n == name]
        for _, word in found:
            old = _assigned_value(name, word)
            if old != value:
                edits.append(_Edit(word.start, word.end, f"{name}={shlex.quote(value)}"))
                detail = f"{name}: {shlex.quote(old)} → {shlex.quote(value)}"
                report.change("env", _line_of(text, word.start), detail)
        exported = any(_is_export(c) and w.start < first_statement for c, w in found)
        on_every_launch = all(any(c is m.cmd for c, _ in found) for m in launches)
        if not (exported or on_every_launch):
            needed[name] = value
    return edits, needed


def _block(patch_name: str, env: Mapping[str, str], indent: str, nl: str) -> str:
    lines = [block_start(patch_name), *(f"export {k}={shlex.quote(v)}" for k, v in env.items())]
    return "".join(f"{indent}{line}{nl}" for line in [*lines, BLOCK_END])


def _block_env(block: str) -> dict[str, str]:
    return {
        name: _assigned_value(name, w)
        for cmd in split_commands(lex(block))
        for name, w in _assignment_words(cmd)
    }


def _block_edit(
    text: str, patch_name: str, needed: Mapping[str, str], at: int, report: Report
) -> _Edit | None:
    """Insert the block at `at` (a line start), or bring an earlier run's block up to date
    where it is; None when nothing changes."""
    first_nl = text.find("\n")
    nl = "\r\n" if first_nl > 0 and text[first_nl - 1] == "\r" else "\n"
    rest = text[at:]
    indent = rest[: len(rest) - len(rest.lstrip(" \t"))]
    block = _block(patch_name, needed, indent, nl) if needed else ""
    old_span = _existing_block(text, patch_name)
    if old_span is None and not block:
        return None
    old = text[old_span[0] : old_span[1]] if old_span else ""
    if old == block:
        return None
    start, end = old_span or (at, at)
    _report_block(report, _block_env(old), needed, _line_of(text, start))
    return _Edit(start, end, block)


def _report_block(
    report: Report, old: Mapping[str, str], new: Mapping[str, str], line: int
) -> None:
    for name, value in new.items():
        if name not in old:
            report.change("env", line, f"export {name}={shlex.quote(value)}")
        elif old[name] != value:
            report.change("env", line, f"{name}: {shlex.quote(old[name])} → {shlex.quote(value)}")
    for name in old.keys() - new.keys():
        report.change("env", line, f"{name} no longer exported by the qpatch block")


def _sudo_findings(text: str, launches: list[_Match], report: Report) -> None:
    for m in launches:
        names = [m.cmd.words[start].value for _, start, _ in _wrappers(m.cmd.words)]
        opts = {w.value for w in m.cmd.words[: m.interpreter]}
        if "sudo" in names and not opts & {"-E", "--preserve-env"}:
            line = _line_of(text, m.cmd.words[0].start)
            report.find(
                "sudo resets the environment: the exports reach ComfyUI only with sudo -E", line
            )


# ------------------------------------------------------------------------- main


def edit_start_script(
    data: bytes,
    *,
    patch_name: str,
    env: Mapping[str, str],
    flags: Sequence[FlagEdit],
    path: str = "the start script",
) -> tuple[bytes, Report]:
    """Export `env` just before the first ComfyUI launch and make every launch carry `flags`.

    Raises BadInput (nothing to write) when the script has no launch command.
    """
    text, bom = _decode(data)
    report = Report()
    old_block = _existing_block(text, patch_name) or (0, 0)
    # An earlier run's block is ours to rewrite, not an assignment to update in place.
    commands = [
        c for c in split_commands(lex(text)) if not old_block[0] <= c.words[0].start < old_block[1]
    ]
    launches = [m for m in map(_match_launch, commands) if m]
    if not launches:
        raise BadInput(
            f"{path}: no ComfyUI launch command found (a python running main.py)",
            hint="name the script that starts ComfyUI with --start-script",
        )
    edits, needed = _env_edits(text, commands, launches, env, report)
    block = _block_edit(text, patch_name, needed, launches[0].cmd.statement, report)
    edits += [block] if block else []
    for m in launches:
        edits += _flag_edits(text, m, flags, report)
    if env:
        _sudo_findings(text, launches, report)

    for e in sorted(edits, key=lambda e: (e.start, e.end), reverse=True):
        text = text[: e.start] + e.text + text[e.end :]
    result = bom + text.encode("utf-8", errors="surrogateescape")
    report.already_applied = result == data
    return result, report
