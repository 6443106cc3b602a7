"""Find the process serving ComfyUI inside a target: its PID (to stop it quickly), its
interpreter and working directory (to discover the ComfyUI root and the python to use)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from qpatch.main_py import is_main_py

#: Runs in the target with `sh -c`. Constant: nothing from the user reaches it. Lists every
#: process whose command line mentions main.py, one per line: pid TAB cwd TAB exe TAB argv
#: (argv NUL-joined, so arguments with spaces survive).
SCAN_SCRIPT = r"""
for d in /proc/[0-9]*; do
  [ -r "$d/cmdline" ] || continue
  case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
    *main.py*)
      printf '%s\t%s\t%s\t' "${d#/proc/}" "$(readlink "$d/cwd")" "$(readlink "$d/exe")"
      tr '\0' '\001' < "$d/cmdline"; echo ;;
  esac
done
"""
SCAN_ARGV = ["sh", "-c", SCAN_SCRIPT]


@dataclass(frozen=True)
class Proc:
    pid: int
    cwd: str
    exe: str
    argv: tuple[str, ...]

    @property
    def is_comfyui_server(self) -> bool:
        """A python running main.py itself, not a shell script that merely mentions it."""
        exe = self.exe.rsplit("/", 1)[-1]
        if not exe.startswith("python"):
            return False
        return any(is_main_py(a) for a in self.argv[1:])

    @property
    def flags(self) -> list[str]:
        for i, a in enumerate(self.argv):
            if is_main_py(a):
                return list(self.argv[i + 1 :])
        return []

    def __str__(self) -> str:
        return f"pid {self.pid}: {shlex.join(self.argv)} (cwd {self.cwd})"


def parse_scan(output: str) -> list[Proc]:
    procs = []
    for line in output.splitlines():
        parts = line.split("\t", 3)
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        argv = tuple(a for a in parts[3].split("\x01") if a != "")
        procs.append(Proc(int(parts[0]), parts[1], parts[2], argv))
    return procs


def comfyui_servers(output: str) -> list[Proc]:
    return [p for p in parse_scan(output) if p.is_comfyui_server]
