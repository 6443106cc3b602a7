"""Plan the new Env and command of a container that starts `python main.py …` itself.

Such a container has no start script to carry the patch's env and flags, and a running
container's Env and Cmd cannot be changed: `qpatch apply --recreate` creates a replacement
with the values planned here. Pure: lists in, lists and a Report out.

The flags go through the start-script editor (startup.edit_start_script) so they follow
the same rules as in a script (values quoted, a flag updated rather than duplicated, a
rival replaced): the `-c` string of `sh -c "…"` is a script already, and an exec-form
argv becomes one with shlex.join and comes back with shlex.split, exactly.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qpatch.errors import BadInput
from qpatch.main_py import is_main_py
from qpatch.report import Report
from qpatch.startup import FlagEdit, Launch, edit_start_script, find_launches

_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh"})


@dataclass(frozen=True)
class _Site:
    """Where in the argv the ComfyUI launch is, as a script the start-script editor reads."""

    index: int  # the argv word the script came from (shell form), or where it begins
    script: str
    shell: bool  # True: argv[index] is an `sh -c` string; False: argv[index:] is the launch


def _shell_script(argv: Sequence[str]) -> int | None:
    """Index of the string a shell runs with -c (`sh -c`, `bash -lc`), before any main.py."""
    for i, word in enumerate(argv):
        if is_main_py(word):
            return None
        if posixpath.basename(word) not in _SHELLS:
            continue
        j = i + 1
        while j < len(argv) and argv[j][:1] in "-+":
            if argv[j] in ("-o", "+o"):  # `-o pipefail`: an option with an argument
                j += 2
                continue
            if not argv[j].startswith("--") and "c" in argv[j][1:]:
                return j + 1 if j + 1 < len(argv) else None
            j += 1
        return None  # a shell running a script file: not ours to edit here
    return None


def _site(argv: Sequence[str]) -> _Site:
    s = _shell_script(argv)
    if s is not None:
        if find_launches(argv[s].encode()):
            return _Site(s, argv[s], shell=True)
    else:
        # An exec-form argv, perhaps behind a wrapper the script editor does not know
        # (`tini --`): the launch starts at the first word from which it reads as one.
        for k in range(len(argv)):
            if is_main_py(argv[k]):
                break
            script = shlex.join(argv[k:])
            if find_launches(script.encode()):
                return _Site(k, script, shell=False)
    raise BadInput(
        f"the container's command does not start ComfyUI's main.py: {shlex.join(argv)}",
        hint="pass --start-script if a script in the container starts it",
    )


def find_launch(argv: Sequence[str]) -> Launch:
    """The main.py launch in a container's Entrypoint + Cmd (BadInput when there is none)."""
    return find_launches(_site(argv).script.encode())[0]


def _edit_argv(
    argv: Sequence[str], patch_name: str, flags: Sequence[FlagEdit]
) -> tuple[list[str], Report, _Site]:
    site = _site(argv)
    new, report = edit_start_script(
        site.script.encode(), patch_name=patch_name, env={}, flags=flags, path="the command"
    )
    text = new.decode("utf-8", errors="surrogateescape")
    if site.shell:
        return [*argv[: site.index], text, *argv[site.index + 1 :]], report, site
    return [*argv[: site.index], *shlex.split(text)], report, site


def merge_env(current: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], Report]:
    """`env` over a container's `NAME=value` list: a name it has is updated where it
    stands (a second entry would leave which one wins to the runtime), others appended."""
    report = Report()
    merged = list(current)
    for name, value in env.items():
        at = [i for i, item in enumerate(merged) if item.split("=", 1)[0] == name]
        if not at:
            merged.append(f"{name}={value}")
            report.change("env", None, f"Env {name}={value}")
            continue
        for i in at:
            old = merged[i].split("=", 1)[1] if "=" in merged[i] else ""
            if old != value:
                merged[i] = f"{name}={value}"
                report.change("env", None, f"Env {name}: {old} → {value}")
    return merged, report


def _shadowed(script: str, env: Mapping[str, str]) -> list[str]:
    """Names the `sh -c` string itself assigns: its value, not the container's, wins."""
    return [n for n in env if re.search(rf"(^|[\s;&|(]){re.escape(n)}=", script)]


@dataclass(frozen=True)
class ContainerChange:
    """A container's Env and command before and after the patch (None: not set)."""

    entrypoint_before: list[str] | None
    cmd_before: list[str] | None
    env_before: list[str]
    entrypoint: list[str] | None
    cmd: list[str] | None
    env: list[str]
    report: Report = field(default_factory=Report, compare=False)

    @property
    def changed(self) -> bool:
        return (self.entrypoint, self.cmd, self.env) != (
            self.entrypoint_before,
            self.cmd_before,
            self.env_before,
        )

    def describe(self) -> str:
        """A diff of the container's configuration, for --dry-run."""
        lines = []
        for what, old, new in (
            ("Entrypoint", self.entrypoint_before, self.entrypoint),
            ("Cmd", self.cmd_before, self.cmd),
        ):
            if old != new:
                lines += [f"-container {what}: {old}", f"+container {what}: {new}"]
        before = set(self.env_before)
        lines += [f"-container Env: {e}" for e in self.env_before if e not in self.env]
        lines += [f"+container Env: {e}" for e in self.env if e not in before]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "entrypoint_before": self.entrypoint_before,
            "cmd_before": self.cmd_before,
            "env_before": self.env_before,
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
            "env": self.env,
        }


def plan_change(
    *,
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    env_list: Sequence[str],
    env: Mapping[str, str],
    flags: Sequence[FlagEdit],
    patch_name: str,
) -> ContainerChange:
    """The Env and command that carry `env` and `flags` (the FlagEdits of plan_flags)."""
    ep_before = list(entrypoint) if entrypoint is not None else None
    cmd_before = list(cmd) if cmd is not None else None
    argv = [*(ep_before or []), *(cmd_before or [])]
    new_argv, report, site = _edit_argv(argv, patch_name, flags)
    # Keep the Entrypoint when the edit lies in the Cmd; else the whole command moves
    # into the Entrypoint (Docker appends the Cmd to it, so an empty Cmd keeps the argv).
    n = len(ep_before or [])
    if new_argv[:n] == (ep_before or []):
        new_ep, new_cmd = ep_before, new_argv[n:]
    else:
        new_ep, new_cmd = new_argv, []
    if new_cmd == [] and cmd_before is None:
        new_cmd = None
    new_env, env_report = merge_env(env_list, env)
    report.extend(env_report)
    if site.shell and (names := _shadowed(site.script, env)):
        report.find(
            f"the command's own shell string sets {', '.join(names)}, which overrides "
            "the container's Env: edit that string or drop the assignment"
        )
    return ContainerChange(ep_before, cmd_before, list(env_list), new_ep, new_cmd, new_env, report)
