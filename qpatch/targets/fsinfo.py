"""Facts about a target's filesystems, parsed from what its own tools print: which paths
are mount points (a single file bind-mounted by compose cannot be renamed onto), how much
room a folder's filesystem has (a full disk must be said before writing, not discovered
half-way), and whether a resolved path stays inside the ComfyUI root.

Pure functions over text, so every target answers the same way and tests need no target."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

#: Run in the target: the mount table, then the free space of each folder given as argv
#: (POSIX `df -P -k`, one line per folder after a header), then each path resolved.
#: Constant; the paths arrive as argv.
PROBE_SCRIPT = r"""
echo '== mountinfo'; cat /proc/self/mountinfo 2>/dev/null
echo '== df'; for d in "$@"; do df -P -k "$d" 2>/dev/null | tail -n 1; done
"""

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\040, \\011, \\012, \\134."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    point: str
    options: frozenset[str]  # per-mount options: "rw", "ro", "nosuid", ...
    source: str  # the filesystem's source ("/dev/sda1", "overlay", "tmpfs")
    fstype: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/self/mountinfo: `id parent major:minor root point options [optional…] - type
    source super-options`."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 6:
            continue
        dash = fields.index("-")
        if dash + 2 >= len(fields):
            continue
        mounts.append(
            Mount(
                point=_unescape(fields[4]),
                options=frozenset(fields[5].split(",")),
                source=_unescape(fields[dash + 2]),
                fstype=fields[dash + 1],
            )
        )
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount a path lives on: the longest mount point that contains it (the last one
    mounted there, when several are stacked)."""
    best: Mount | None = None
    for m in mounts:
        if inside(path, m.point) and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def is_mount_point(path: str, mounts: list[Mount]) -> bool:
    return any(posixpath.normpath(m.point) == posixpath.normpath(path) for m in mounts)


@dataclass(frozen=True)
class Space:
    folder: str
    available: int  # bytes
    mount: str


def parse_df(folders: list[str], text: str) -> dict[str, Space]:
    """One `df -P -k` data line per folder, in order; a folder whose line is missing (no
    such folder yet, df missing) is left out, and the caller does not guess."""
    spaces: dict[str, Space] = {}
    lines = [line for line in text.splitlines() if line.strip()]
    for folder, line in zip(folders, lines, strict=False):
        fields = line.split()
        if len(fields) < 6 or not fields[3].isdigit():
            continue
        spaces[folder] = Space(folder, int(fields[3]) * 1024, " ".join(fields[5:]))
    return spaces


def split_probe(text: str) -> tuple[str, str]:
    """The mountinfo and df parts of PROBE_SCRIPT's output."""
    mountinfo, _, rest = text.partition("== df\n")
    return mountinfo.replace("== mountinfo\n", "", 1), rest


def inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it, by path components (/a/bc is not in /a/b)."""
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return root == "/" or path == root or path.startswith(root + "/")
