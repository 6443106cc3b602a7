"""The ledger: what qpatch did to a target, kept inside the target (so any machine can roll
back) and mirrored on this host (so a target that lost it can still be restored).

Its `state` (one `State`) is written before each step that changes the target, which is
what lets the next command recover from a run that was killed half-way. Every change of
state goes through `LedgerStore.advance`, which sets it, stamps the history and saves.

A container recreated with `apply --recreate` (qpatch.appliers.container) records the swap
in `recreate`; while the replacement does not carry the change (before its files are
written, and once it is gone again) the ledger lives on this host only, so the original
container keeps nothing of qpatch. `Ledger.in_target` says which, from the state alone.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from qpatch.errors import QpatchError
from qpatch.paths import host_state_dir, write_atomically
from qpatch.targets.base import FileStat, Target
from qpatch.textdiff import unified_diff

LEDGER_ROOT = "/var/lib/qpatch"
PRIVATE = FileStat(mode=0o600, uid=0, gid=0, size=0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class State(str, Enum):
    """Where a run stands; the value is what ledger.json holds."""

    WRITING = "writing"  # backups stored, files being written
    WRITTEN = "written"  # every file written, restart not begun
    RESTARTING = "restarting"  # the restart was issued
    APPLIED = "applied"  # healthy after the restart (or --no-restart)
    ROLLED_BACK = "rolled-back"  # closed by `qpatch rollback`
    RECOVERED = "recovered"  # closed: an interrupted run was undone by the next command
    RESTORED = "restored"  # closed: a failed apply undid itself

    def __str__(self) -> str:
        return self.value

    @property
    def is_open(self) -> bool:
        """A run that began changing the target and did not finish: the next command must
        finish its undo before anything else."""
        return self in (State.WRITING, State.WRITTEN, State.RESTARTING)

    @property
    def is_closed(self) -> bool:
        return self in (State.ROLLED_BACK, State.RECOVERED, State.RESTORED)


@dataclass
class FileRecord:
    path: str
    sha256_before: str
    sha256_after: str
    mode: int
    uid: int
    gid: int

    @property
    def stat(self) -> FileStat:
        return FileStat(self.mode, self.uid, self.gid, 0)

    @property
    def backup_name(self) -> str:
        return f"files/{self.sha256_before}"

    @property
    def patched_name(self) -> str:
        return f"files/{self.sha256_after}"


@dataclass
class Recreated:
    """The container swap of `apply --recreate`: enough to put the original back by hand."""

    name: str  # the container's name, which the replacement takes over
    original_id: str
    backup_name: str  # the original's name while it waits, stopped
    restart_policy: dict[str, Any]  # the original's; "no" while it waits, so it stays down
    image: str  # tag of the commit of the original (the replacement's image)
    image_id: str | None = None
    replacement_id: str | None = None
    entrypoint: list[str] | None = None  # the replacement's, as planned
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)


@dataclass
class Ledger:
    target: str
    key: str
    patch: str
    state: State
    comfyui_root: str
    start_script: str | None = None
    files: list[FileRecord] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    updated: float = field(default_factory=time.time)
    recreate: Recreated | None = None
    #: qpatch stopped ComfyUI to restart it and has not seen it healthy since: whatever the
    #: state, the next command starts it again before anything else (a kill mid-restart
    #: must not leave the server down while a later command reports success)
    restart_pending: bool = False
    #: the patch file's version, and the container the patch was written into (its ID):
    #: one recreated under the same name has another (qpatch.baked.recreated_unpatched)
    patch_version: str | None = None
    instance: str | None = None

    def __post_init__(self) -> None:
        self.state = State(self.state)  # "applied" from older callers and JSON alike

    @property
    def is_open(self) -> bool:
        return self.state.is_open

    @property
    def in_target(self) -> bool:
        """Whether the ledger and backups belong inside the target as well as on this host:
        always, but for a container swap while the replacement does not carry the change."""
        if self.recreate is None:
            return True
        return self.state in (State.WRITTEN, State.RESTARTING, State.APPLIED)

    def event(self, what: str) -> None:
        self.history.append({"time": time.time(), "event": what, "patch": self.patch})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        files = [FileRecord(**f) for f in data.pop("files", [])]
        swap = data.pop("recreate", None)
        state = State(data.pop("state"))
        return cls(files=files, recreate=Recreated(**swap) if swap else None, state=state, **data)


class LedgerStore:
    """Reads and writes one target's ledger and backups, inside it and on this host."""

    def __init__(self, target: Target, folder: str) -> None:
        self.target = target
        self.folder = folder  # inside the target
        self.mirror = host_state_dir() / target.mirror_key
        self._made_in: str | None = None  # the instance ensure_folder made the folder in

    @classmethod
    def locate(
        cls,
        target: Target,
        comfyui_root: str | None,
        writable: Mapping[str, bool] | None = None,
    ) -> LedgerStore:
        """/var/lib/qpatch/<key>, or beside ComfyUI when that cannot be written.
        `writable`: what discovery's probe already learnt of the candidates (one exec
        fewer); a folder it says nothing of is asked.

        Creates nothing: a dry run must leave the target as it was."""
        candidates = [posixpath.join(LEDGER_ROOT, target.key)]
        if comfyui_root:
            candidates.append(posixpath.join(comfyui_root, ".qpatch", target.key))
        for folder in candidates:
            if target.exists(posixpath.join(folder, "ledger.json")):
                return cls(target, folder)
        for folder in candidates:
            known = (writable or {}).get(folder)
            if known if known is not None else _writable(target, folder):
                return cls(target, folder)
        if not target.state().running:  # a stopped container: no exec; the mirror answers
            return cls(target, candidates[0])
        raise QpatchError(
            f"no writable place for the ledger in {target.description}: " + ", ".join(candidates)
        )

    def remove_empty(self) -> None:
        """Undo ensure_folder() for a command that ended before writing anything."""
        self._made_in = None
        self.target.exec(["rm", "-rf", self.folder])
        self.target.exec(["rmdir", posixpath.dirname(self.folder)])  # only if now empty

    def ensure_folder(self) -> None:
        """Once per container: a swap (apply --recreate) puts the store in another."""
        if self._made_in is not None and self._made_in == (self.target.instance or ""):
            return
        self.target.exec(["mkdir", "-p", self.path("files")]).check(
            f"creating the ledger folder {self.folder}"
        )
        self._made_in = self.target.instance or ""

    # ----------------------------------------------------------------- ledger

    def path(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    def load(self) -> Ledger | None:
        """The target's copy; the host mirror only when the target lost it."""
        if self.target.exists(self.path("ledger.json")):
            data, _ = self.target.read_file(self.path("ledger.json"))
            return Ledger.from_json(json.loads(data))
        mirror = self.mirror / "ledger.json"
        if mirror.is_file():
            return Ledger.from_json(json.loads(mirror.read_text()))
        return None

    def advance(self, ledger: Ledger, state: State, event: str | None = None) -> None:
        """The one way a run moves on: set the state, note the event, save."""
        ledger.state = state
        if event is not None:
            ledger.event(event)
        self.save(ledger)

    def save(self, ledger: Ledger) -> None:
        ledger.updated = time.time()
        data = json.dumps(ledger.to_json(), indent=2, sort_keys=True).encode()
        self.mirror.mkdir(parents=True, exist_ok=True)
        write_atomically(self.mirror / "ledger.json", data)
        if ledger.in_target:
            self.target.write_file(self.path("ledger.json"), data, PRIVATE)
        remember_target(ledger.target, self.target.host)

    # ----------------------------------------------------------------- backups

    def store_backup(self, ledger: Ledger, record: FileRecord, data: bytes) -> None:
        assert sha256(data) == record.sha256_before
        self._store(record.backup_name, data, in_target=ledger.in_target)

    def store_patched(self, ledger: Ledger, record: FileRecord, data: bytes) -> None:
        """What qpatch wrote, so verify can show a drifted file's diff against it."""
        assert sha256(data) == record.sha256_after
        self._store(record.patched_name, data, in_target=ledger.in_target)

    def _store(self, name: str, data: bytes, *, in_target: bool) -> None:
        (self.mirror / "files").mkdir(parents=True, exist_ok=True)
        write_atomically(self.mirror / name, data)
        if in_target:
            self.ensure_folder()
            self.target.write_file(self.path(name), data, PRIVATE)

    def copy_to_target(self, ledger: Ledger) -> None:
        """Put the backups kept on this host only (before the replacement of a container
        swap carried the change) into the target as well."""
        self.ensure_folder()
        for rec in ledger.files:
            for name in (rec.backup_name, rec.patched_name):
                self.target.write_file(self.path(name), (self.mirror / name).read_bytes(), PRIVATE)

    def drift_diff(self, record: FileRecord) -> str:
        mirror = self.mirror / record.patched_name
        written = mirror.read_bytes() if mirror.is_file() else b""
        now = self.target.read_file(record.path)[0] if self.target.exists(record.path) else b""
        return unified_diff(written, now, f"{record.path} (as written)", f"{record.path} (now)")

    def backup(self, record: FileRecord) -> bytes:
        """The original bytes, checked against their hash, from the target or the mirror."""
        candidates: list[bytes] = []
        if self.target.exists(self.path(record.backup_name)):
            candidates.append(self.target.read_file(self.path(record.backup_name))[0])
        mirror = self.mirror / record.backup_name
        if mirror.is_file():
            candidates.append(mirror.read_bytes())
        for data in candidates:
            if sha256(data) == record.sha256_before:
                return data
        raise QpatchError(
            f"no intact backup of {record.path} (sha256 {record.sha256_before[:12]}…) in "
            f"{self.path('files')} or {self.mirror / 'files'}"
        )

    def keep_drifted(self, record: FileRecord, data: bytes, *, in_target: bool) -> str:
        """A copy of a file changed since apply, before a forced rollback overwrites it;
        on this host only when the target itself goes away with the rollback."""
        name = f"drifted/{posixpath.basename(record.path)}.{sha256(data)[:12]}"
        (self.mirror / "drifted").mkdir(parents=True, exist_ok=True)
        write_atomically(self.mirror / name, data)
        if not in_target:
            return str(self.mirror / name)
        self.target.exec(["mkdir", "-p", self.path("drifted")]).check("creating drifted/")
        self.target.write_file(self.path(name), data, PRIVATE)
        return self.path(name)


def remember_target(ref: str, host: str | None) -> None:
    """For commands run without TARGET: the ref alone (as before engines), or with the
    --host that reaches it."""
    text = ref if host is None else json.dumps({"ref": ref, "host": host})
    write_atomically(host_state_dir() / "last-target", text.encode())


def last_target() -> tuple[str, str | None] | None:
    """(ref, host) of the last target this host applied to."""
    p = host_state_dir() / "last-target"
    if not p.is_file():
        return None
    text = p.read_text().strip()
    if text.startswith("{"):
        data = json.loads(text)
        return str(data["ref"]), data.get("host")
    return (text, None) if text else None


#: Constant; the folder arrives as argv. One exec instead of one per ancestor.
_WRITABLE = ["sh", "-c", 'd=$1; while [ ! -e "$d" ]; do d=$(dirname "$d"); done; [ -w "$d" ]', "sh"]


def _writable(target: Target, folder: str) -> bool:
    """Whether `folder` exists writable, or could be created under its nearest ancestor."""
    return target.exec([*_WRITABLE, folder]).exit_code == 0
