"""Tar in memory, checked: the engine reads files out of containers as tar streams, and a
hostile or odd container must not be able to make qpatch read or write outside the file
it asked for."""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from collections.abc import Iterable

from qpatch.errors import BadInput


def check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or ".." in posixpath.normpath(name).split("/"):
        raise BadInput(f"refusing tar member {name!r}: absolute or climbs out with '..'")
    if member.islnk() or member.issym():
        target = member.linkname
        if target.startswith("/") or ".." in posixpath.normpath(target).split("/"):
            raise BadInput(f"refusing tar member {name!r}: a link pointing out ({target!r})")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise BadInput(f"refusing tar member {name!r}: not a regular file, folder or link")


def read_single_file(stream: Iterable[bytes], expected_name: str) -> tuple[bytes, tarfile.TarInfo]:
    """The bytes of the one regular file a `get_archive` of a file path returns."""
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r:") as tar:
        members = tar.getmembers()
        for m in members:
            check_member(m)
        files = [m for m in members if m.isfile()]
        if len(members) != 1 or len(files) != 1 or files[0].name != expected_name:
            names = ", ".join(m.name for m in members) or "nothing"
            raise BadInput(f"expected one file {expected_name!r} in the archive, got {names}")
        f = tar.extractfile(files[0])
        assert f is not None  # isfile() checked above
        return f.read(), files[0]


def single_file_tar(name: str, data: bytes, *, mode: int, uid: int, gid: int) -> bytes:
    if "/" in name or name in ("", ".", ".."):
        raise BadInput(f"bad file name for an archive: {name!r}")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = int(time.time())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
