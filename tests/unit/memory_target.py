"""A whole `Target` in a few dicts, so the engine's state machine runs in milliseconds.

Not a mock: it is a real implementation of the protocol in qpatch/targets/base.py, with
a filesystem (path -> bytes and FileStat, plus a set of folders), a ComfyUI "server" that
is up or down and boots from the start script as it is *now*, a log, and `exec` for the
handful of argv qpatch runs on the files path (the ledger's mkdir/rm/rmdir and writable
probe, the lock's `set -C` create, `cat`, the `[ -w ]` loop, the compile check, the HTTP client).

Every program qpatch sends is answered by doing what it would do in a container, not by
a canned "ok": the compile check really compiles the bytes, `rmdir` refuses a folder that
is not empty, `/system_stats` answers only while the server is up. Any other argv gets
exit status 127, so a new dependency of the engine shows up as a failing test instead of
a silent pass. The programs are recognised by qpatch's own constants: the fake follows
their contract, while a new program is unknown to it.

A run killed half-way (what `QPATCH_FAULT` does with SIGKILL, which would end pytest too)
is `kill_when`: before a write or after a restart it raises `Killed`, a BaseException the
engine does not catch, so the target and the ledger are left exactly as the kill leaves
them and the next command's `recover_interrupted` has to clean up.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from qpatch.comfy_api import _CLIENT
from qpatch.errors import BadInput, QpatchError
from qpatch.ledger import _WRITABLE
from qpatch.lock import _CREATE
from qpatch.plan import _COMPILE, UNWRITABLE
from qpatch.targets.base import ContainerConfig, ExecResult, FileStat, TargetState
from qpatch.targets.procs import Proc

if TYPE_CHECKING:
    from qpatch.targets.docker import DockerTarget

SERVER_PID = 4242
COMFYUI_VERSION = "0.14.1"

#: Decides, from the target as it is at (re)start, whether ComfyUI comes up: the server's
#: argv when it does, None when it exits (and then it should log why, as ComfyUI does).
Boot = Callable[["MemoryTarget"], "tuple[str, ...] | None"]
#: (operation, path, bytes) -> whether the qpatch process dies right here. Operations:
#: "write" (before the write of those bytes to that path) and "restarted" (after a
#: restart took effect; path "" and bytes b"").
KillWhen = Callable[[str, str, bytes], bool]


class Killed(BaseException):
    """qpatch died here, as under `kill -9`: no except clause of the engine sees it."""


@dataclass
class Write:
    """One write_file that happened, for tests that assert what was (not) written."""

    path: str
    sha256: str
    stat: FileStat


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def launch_argv(script: bytes) -> tuple[tuple[str, ...], dict[str, str]] | None:
    """What `bash <script>` would run: main.py's argv and the exported variables.

    A deliberately small reading (one launch line, `export NAME=value` lines), enough for
    the start scripts these tests write; qpatch's own parser is what is under test
    elsewhere."""
    env: dict[str, str] = {}
    for line in script.decode("utf-8", "replace").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            for word in words[1:]:
                name, eq, value = word.partition("=")
                if eq:
                    env[name] = value
        elif "main.py" in words:
            return ("main.py", *words[words.index("main.py") + 1 :]), env
    return None


def script_boot(*, fails_on: Sequence[str] = (), read_only_after_failure: bool = False) -> Boot:
    """Boot as ComfyUI's argparse would: any flag in `fails_on` is unknown, so main.py
    exits 2 and the server stays down. `read_only_after_failure` models a target that
    also stops taking writes then (a disk gone read-only), so the restore fails too."""

    def boot(t: MemoryTarget) -> tuple[str, ...] | None:
        assert t.start_script is not None
        found = launch_argv(t.files[t.start_script][0])
        if found is None:
            t.log.append(f"bash: {t.start_script}: no ComfyUI launch")
            return None
        argv, env = found
        bad = [a for a in argv if a in fails_on]
        if bad:
            t.log.append("usage: main.py [-h] [--listen [IP]] [--port PORT] ...")
            t.log.append(f"main.py: error: unrecognized arguments: {' '.join(bad)}")
            if read_only_after_failure:
                t.read_only_fs = True
            return None
        t.server_env = env
        t.log.append(f"Starting server with {' '.join(argv[1:])}")
        t.log.append(f"To see the GUI go to: http://0.0.0.0:{t.port}")
        return argv

    return boot


@dataclass
class MemoryTarget:
    """A one-click ComfyUI image held in memory. Paths are absolute, as the engine's are."""

    files: dict[str, tuple[bytes, FileStat]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/", "/tmp"})
    #: as for a container: the reference names no root (discover() would find it)
    root: str | None = None
    #: where the server runs from: ComfyUI's root, as the Proc's cwd shows it
    server_cwd: str = "/root/ComfyUI"
    start_script: str | None = "/root/1键启动.sh"
    python: str = "/root/venv/bin/python"
    port: int = 8188
    boot: Boot = field(default_factory=script_boot)
    description: str = "memory target test"
    key: str = "memory-test"
    mirror_key: str = "memory-test"
    host: str | None = None
    instance: str | None = None
    ref: str = "memory:test"
    script_folders: tuple[str, ...] = ("/", "/root")

    #: the running server's argv (None: down) and the variables it was started with
    server: tuple[str, ...] | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    exit_detail: str = "not started"
    #: a filesystem that refuses every change (write_file, mkdir, rm, the lock)
    read_only_fs: bool = False
    #: single paths that cannot be replaced (`test -w` says so; write_file refuses)
    read_only: set[str] = field(default_factory=set)
    kill_when: KillWhen | None = None

    # what happened, for the assertions
    writes: list[Write] = field(default_factory=list)
    #: the states the ledger went through, in order (a state saved again counts once:
    #: a save that only notes restart_pending is no transition)
    ledger_states: list[str] = field(default_factory=list)
    execs: list[tuple[str, ...]] = field(default_factory=list)
    restart_calls: int = 0
    start_calls: int = 0
    log: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ building it

    def put(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Lay down a file (and its folders) as the image had it, without logging a write."""
        path = self._norm(path)
        self._mkdirs(posixpath.dirname(path))
        self.files[path] = (data, FileStat(mode, uid, gid, len(data)))

    def boot_now(self) -> None:
        """The container's start: ComfyUI runs before qpatch ever sees the target."""
        self._boot()

    def digests(self, under: str = "/") -> dict[str, str]:
        """sha256 of every file under a folder: what the tests compare byte-exactness by."""
        under = self._norm(under)
        return {p: sha256(d) for p, (d, _) in self.files.items() if _within(p, under)}

    # ------------------------------------------------------------------ Target: config

    def container_config(self) -> ContainerConfig | None:
        """A one-click image's Config: `bash <start script>` (None without a script)."""
        if self.start_script is None:
            return None
        return ContainerConfig(None, ["bash", self.start_script], ["PATH=/usr/bin:/bin"])

    def labels(self) -> dict[str, str]:
        return {}

    def as_container(self) -> DockerTarget | None:
        return None  # the files applier never swaps containers

    def probe(self, questions: object) -> None:
        return None  # discovery asks each question itself

    def configured_command(self) -> list[str] | None:
        config = self.container_config()
        return config.command if config is not None else None

    # ------------------------------------------------------------------ Target: files

    def read_file(self, path: str) -> tuple[bytes, FileStat]:
        path = self._norm(path)
        if path not in self.files:
            raise BadInput(f"{path}: no such file in {self.description}")
        return self.files[path]

    def write_file(self, path: str, data: bytes, stat: FileStat) -> None:
        """Atomic like the real targets: the file is either all old or all new bytes."""
        path = self._norm(path)
        if self.kill_when is not None and self.kill_when("write", path, data):
            raise Killed(f"killed before writing {path}")
        folder = posixpath.dirname(path)
        if folder not in self.dirs:
            raise QpatchError(f"writing {path}: no folder {folder} in {self.description}")
        if self.read_only_fs or path in self.read_only:
            raise QpatchError(f"writing {path}: Read-only file system")
        self.files[path] = (data, FileStat(stat.mode, stat.uid, stat.gid, len(data)))
        self.writes.append(Write(path, sha256(data), stat))
        if path.endswith("/ledger.json"):
            state = json.loads(data)["state"]
            if not self.ledger_states or self.ledger_states[-1] != state:
                self.ledger_states.append(state)

    def exists(self, path: str) -> bool:
        path = self._norm(path)
        return path in self.files or path in self.dirs

    # ------------------------------------------------------------------ Target: server

    def state(self) -> TargetState:
        """As a local target sees it (and a one-click container, whose start script ends
        with main.py): no server, not running. Unlike a stopped container, exec still
        works then, as on a local target, so the lock and the ledger stay reachable."""
        if self.server is not None:
            return TargetState(True, 0, "running")
        return TargetState(False, 0, self.exit_detail)

    def server_processes(self) -> list[Proc]:
        if self.server is None:
            return []
        return [Proc(SERVER_PID, self.server_cwd, self.python, (self.python, *self.server))]

    def host_pids(self) -> list[int]:
        return [SERVER_PID] if self.server is not None else []

    def restart(self) -> None:
        self.restart_calls += 1
        self.server = None
        self.log.append("Stopped server")
        self._boot()
        if self.kill_when is not None and self.kill_when("restarted", "", b""):
            raise Killed("killed after the restart")

    def start(self) -> None:
        self.start_calls += 1
        if self.server is None:
            self._boot()

    def logs(self, tail: int = 20) -> str:
        return "\n".join(self.log[-tail:])

    def _boot(self) -> None:
        self.server = self.boot(self)
        self.exit_detail = "running" if self.server else "exited (exit code 2)"

    # ------------------------------------------------------------------ Target: exec

    def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        argv = list(argv)
        self.execs.append(tuple(argv))
        if argv[:1] in (["mkdir"], ["rm"], ["rmdir"]) and self.read_only_fs:
            return _fail(f"{argv[0]}: Read-only file system")
        match argv:
            case ["mkdir", "-p", *paths] if paths:
                return self._mkdir_p(paths)
            case ["rm", "-rf", *paths] if paths:
                return self._rm(paths, recursive=True)
            case ["rm", "-f", *paths] if paths:
                return self._rm(paths, recursive=False)
            case ["rmdir", path]:
                return self._rmdir(path)
            case ["sh", "-c", program, "sh", *paths] if program == UNWRITABLE[2] and paths:
                refused = [p for p in paths if not self._writable(p)]
                return _ok("".join(f"{p}\n" for p in refused).encode())
            case ["cat", path]:
                return self._cat(path)
            case [*prefix, folder] if prefix == _WRITABLE:
                return self._writable_or_creatable(folder)
            case [*prefix, content, path] if prefix == _CREATE:
                return self._create_exclusive(path, content.encode())
            case [python, "-c", program, path] if program == _COMPILE and self._is_python(python):
                return self._compile(path)
            case [python, "-c", program, method, url, body, wait, *_retry] if (
                program == _CLIENT and self._is_python(python)
            ):
                return self._http(method, url, body, float(wait))
        return ExecResult(127, b"", f"memory target: unsupported command {argv!r}".encode())

    def _mkdir_p(self, paths: list[str]) -> ExecResult:
        for path in paths:
            path = self._norm(path)
            if path in self.files:
                return _fail(f"mkdir: cannot create directory '{path}': File exists")
            self._mkdirs(path)
        return _ok()

    def _rm(self, paths: list[str], *, recursive: bool) -> ExecResult:
        for path in paths:
            path = self._norm(path)
            if path in self.dirs and not recursive:
                return _fail(f"rm: cannot remove '{path}': Is a directory")
            self.files = {p: v for p, v in self.files.items() if not _within(p, path)}
            self.dirs = {d for d in self.dirs if not _within(d, path) or d == "/"}
        return _ok()

    def _rmdir(self, path: str) -> ExecResult:
        path = self._norm(path)
        if path not in self.dirs:
            return _fail(f"rmdir: failed to remove '{path}': No such file or directory")
        if any(_within(p, path) and p != path for p in [*self.files, *self.dirs]):
            return _fail(f"rmdir: failed to remove '{path}': Directory not empty")
        self.dirs.discard(path)
        return _ok()

    def _cat(self, path: str) -> ExecResult:
        path = self._norm(path)
        if path not in self.files:
            return _fail(f"cat: {path}: No such file or directory")
        return ExecResult(0, self.files[path][0], b"")

    def _writable(self, path: str) -> bool:
        path = self._norm(path)
        return self.exists(path) and not self.read_only_fs and path not in self.read_only

    def _writable_or_creatable(self, folder: str) -> ExecResult:
        d = self._norm(folder)
        while not self.exists(d):
            d = posixpath.dirname(d)
        return ExecResult(0 if self._writable(d) else 1, b"", b"")

    def _create_exclusive(self, path: str, data: bytes) -> ExecResult:
        """`set -C; printf > path`: O_EXCL, so it fails on a file that is already there."""
        path = self._norm(path)
        if path in self.files:
            return _fail(f"sh: 1: cannot create {path}: File exists")
        if posixpath.dirname(path) not in self.dirs or self.read_only_fs:
            return _fail(f"sh: 1: cannot create {path}: Directory nonexistent or read-only")
        self.files[path] = (data, FileStat(0o644, 0, 0, len(data)))
        return _ok()

    def _compile(self, path: str) -> ExecResult:
        """The compile check, done for real: Python's own compile() on the target's bytes."""
        path = self._norm(path)
        if path not in self.files:
            return _fail(f"FileNotFoundError: [Errno 2] No such file or directory: '{path}'")
        try:
            compile(self.files[path][0], path, "exec")
        except SyntaxError as e:
            return _fail(f'  File "{path}", line {e.lineno}\nSyntaxError: {e.msg}')
        return _ok()

    def _http(self, method: str, url: str, body: str, timeout: float) -> ExecResult:
        """The urllib client's contract: "status TAB body", or "0 TAB reason" (exit 0)."""
        parts = urlsplit(url)
        if self.server is None or parts.port != self.port:
            return _ok(b"0\tURLError(ConnectionRefusedError(111, 'Connection refused'))")
        if method == "GET" and parts.path == "/system_stats":
            return _ok(b"200\t" + json.dumps(self._system_stats()).encode())
        return _ok(b'404\t{"error": "not found"}')

    def _system_stats(self) -> dict[str, Any]:
        assert self.server is not None
        return {
            "system": {
                "os": "posix",
                "comfyui_version": COMFYUI_VERSION,
                "python_version": "3.11.7",
                "argv": list(self.server),
                "ram_total": 64 << 30,
                "ram_free": 60 << 30,
            },
            "devices": [
                {
                    "name": "cpu",
                    "type": "cpu",
                    "index": None,
                    "vram_total": 64 << 30,
                    "vram_free": 60 << 30,
                    "torch_vram_total": 64 << 30,
                    "torch_vram_free": 60 << 30,
                }
            ],
        }

    # ------------------------------------------------------------------ helpers

    def _is_python(self, exe: str) -> bool:
        return exe in (self.python, "python3")

    def _mkdirs(self, path: str) -> None:
        while path not in self.dirs:
            self.dirs.add(path)
            path = posixpath.dirname(path)

    @staticmethod
    def _norm(path: str) -> str:
        if not path.startswith("/"):
            raise AssertionError(f"the engine passed a relative path: {path!r}")
        return posixpath.normpath(path)


def _within(path: str, folder: str) -> bool:
    return folder == "/" or path == folder or path.startswith(folder + "/")


def _ok(stdout: bytes = b"") -> ExecResult:
    return ExecResult(0, stdout, b"")


def _fail(stderr: str) -> ExecResult:
    return ExecResult(1, b"", stderr.encode())
