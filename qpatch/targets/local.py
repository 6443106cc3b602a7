"""A ComfyUI whose root folder is on this host: files through the OS, commands as argv
lists, restart by a given command or by stopping the server and starting it detached.

Relative paths (files, the start script, exec's cwd) are taken relative to the ComfyUI
root, as every path in a target is: the engine must not depend on qpatch's own cwd."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from qpatch.errors import BadInput, QpatchError
from qpatch.main_py import MAIN_PY, is_main_py
from qpatch.paths import host_state_dir
from qpatch.targets import procs
from qpatch.targets.base import ExecResult, FileStat, TargetState

#: SIGTERM grace before SIGKILL: ComfyUI ends in well under a second on SIGTERM.
STOP_WAIT_S = 10.0
#: A restart command must hand the server off (systemctl, supervisorctl) and return.
RESTART_CMD_TIMEOUT_S = 120.0
#: After a restart command, how long to look for the new server before handing over to
#: the health gate, which would otherwise call a not-yet-started server "not running".
RESTART_CMD_GRACE_S = 10.0
TIMEOUT_EXIT = 124  # what coreutils `timeout` exits with, so callers read it one way

StartedAs = tuple[tuple[str, ...], str, dict[str, str] | None]  # argv, cwd, env (None: ours)


def scan_processes() -> list[procs.Proc]:
    """procs.SCAN_SCRIPT's records, read from /proc directly: no shell needed on this host."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:  # gone meanwhile
            continue
        if b"main.py" not in raw:
            continue
        argv = tuple(os.fsdecode(a) for a in raw.split(b"\0") if a)
        cwd, exe = _readlink(f"/proc/{name}/cwd"), _readlink(f"/proc/{name}/exe")
        found.append(procs.Proc(int(name), cwd, exe, argv))
    return found


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # another user's process, or gone: the shell scan prints "" too
        return ""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid); None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # the name may hold ")" and spaces
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has stopped serving already


def _same_file(a: str, b: str) -> bool:
    """Inode equality: holds across symlinks and the mount namespaces of containers, where
    a container's /root/ComfyUI must not be mistaken for this host's."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _descendants(roots: Sequence[int]) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        stat = _proc_stat(int(name)) if name.isdigit() else None
        if stat is not None:
            children[stat[1]].append(int(name))
    seen: set[int] = set()
    todo = [p for p in roots if _alive(p)]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return sorted(seen)


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class LocalTarget:
    def __init__(
        self,
        root: str,
        *,
        start_script: str | None = None,
        restart_cmd: Sequence[str] | None = None,
        port: int = 8188,
    ) -> None:
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise BadInput(f"local:{self.root}: no such folder")
        if not os.path.isfile(os.path.join(self.root, MAIN_PY)):
            raise BadInput(f"local:{self.root} is not a ComfyUI root: it has no main.py")
        self.start_script = self._path(start_script) if start_script else None
        if self.start_script and not os.path.isfile(self.start_script):
            raise BadInput(f"start script {self.start_script}: no such file")
        self.restart_cmd = tuple(restart_cmd) if restart_cmd else None
        self.script_folders: tuple[str, ...] = ()  # on a host, only the root is looked in
        self.port = port
        self.ref = self.description = f"local:{self.root}"
        # the real path, so every spelling of one folder shares one ledger
        real = os.path.realpath(self.root)
        self.key = "local-" + hashlib.sha256(real.encode()).hexdigest()[:16]
        self.mirror_key = self.key
        self.host: str | None = None
        self.instance: str | None = None  # a folder on this host has no other identity
        self._launcher: subprocess.Popen[bytes] | None = None  # what we last started
        self._last_launch: StartedAs | None = None  # how the server was last seen started

    @property
    def log_path(self) -> Path:
        return host_state_dir() / self.key / "server.log"

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path)  # an absolute path stays as it is

    # ------------------------------------------------------------------ commands

    def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Runs in its own session so a timeout can kill the whole group, as `timeout` does:
        a `sh -c` that forks must not leave its children holding our pipes."""
        try:
            p = subprocess.Popen(
                list(argv),
                cwd=self._path(cwd) if cwd else self.root,
                env={**os.environ, **env} if env else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:  # what a shell would say: 127 not found, 126 not runnable
            code = 127 if isinstance(e, FileNotFoundError) else 126
            return ExecResult(code, b"", f"{argv[0]}: {e}".encode())
        with p:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                try:
                    out, err = p.communicate(timeout=5)
                except subprocess.TimeoutExpired:  # a grandchild escaped with our pipes
                    p.kill()
                    out, err = b"", b""
                return ExecResult(TIMEOUT_EXIT, out, err)
        return ExecResult(p.returncode, out, err)

    # ------------------------------------------------------------------ files

    def read_file(self, path: str) -> tuple[bytes, FileStat]:
        path = self._path(path)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError as e:
            raise BadInput(f"{path}: no such file in {self.description}") from e
        except OSError as e:
            raise QpatchError(f"reading {path}: {e.strerror}") from e
        return data, FileStat(st.st_mode & 0o7777, st.st_uid, st.st_gid, len(data))

    def write_file(self, path: str, data: bytes, stat: FileStat) -> None:
        """Through the link when the path is one: read_file read the link's target, and the
        link itself is part of the installation."""
        path = os.path.realpath(self._path(path))
        folder = os.path.dirname(path)
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".qpatch-", suffix=".tmp")
        except OSError as e:
            raise QpatchError(f"writing {path}: cannot create a file in {folder}: {e}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                own = os.fstat(f.fileno())
                if (own.st_uid, own.st_gid) != (stat.uid, stat.gid):
                    with contextlib.suppress(PermissionError):  # not ours to give away
                        os.fchown(f.fileno(), stat.uid, stat.gid)
                os.fchmod(f.fileno(), stat.mode)  # after chown, which clears setuid bits
            os.replace(tmp, path)
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise QpatchError(f"writing {path}: {e}") from e
            raise
        with contextlib.suppress(OSError):  # make the rename itself survive a crash
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(self._path(path))

    # ------------------------------------------------------------------ process

    def server_processes(self) -> list[procs.Proc]:
        """Pythons running this root's main.py: their cwd is the root, or main.py is ours."""
        main = os.path.join(self.root, MAIN_PY)
        found = []
        for p in scan_processes():
            if not p.is_comfyui_server or not _alive(p.pid):
                continue
            script = next(a for a in p.argv[1:] if is_main_py(a))
            # seen through the process's own root and cwd: right for containers' pythons too
            base = f"/proc/{p.pid}/root" if script.startswith("/") else f"/proc/{p.pid}/cwd/"
            if _same_file(f"/proc/{p.pid}/cwd", self.root) or _same_file(base + script, main):
                found.append(p)
                self._last_launch = _as_started(p)
        return found

    def configured_command(self) -> list[str] | None:
        """The start script when one was given; the host keeps no other record of how
        ComfyUI is started, so discovery should go looking."""
        return ["bash", self.start_script] if self.start_script else None

    def container_config(self) -> None:
        return None

    def labels(self) -> dict[str, str]:
        return {}  # no runtime keeps labels on a folder

    def as_container(self) -> None:
        return None

    def probe(self, questions: object) -> None:
        """On this host each question is a local call already: nothing to batch."""
        return None

    def _launcher_alive(self) -> bool:
        return self._launcher is not None and self._launcher.poll() is None

    def state(self) -> TargetState:
        servers = self.server_processes()
        if servers:
            return TargetState(True, 0, f"running (pid {', '.join(str(p.pid) for p in servers)})")
        launcher = self._launcher
        if launcher is not None and launcher.poll() is None:  # a start script not at main.py yet
            return TargetState(True, 0, f"starting (pid {launcher.pid})")
        if launcher is not None:
            return TargetState(False, 0, f"exited (exit code {launcher.returncode})")
        return TargetState(False, 0, "not running")

    def is_running(self) -> bool:
        return self.state().running

    def start(self) -> None:
        """Start ComfyUI unless it runs already (like `docker start`)."""
        if self.is_running():
            return
        if self.restart_cmd:
            self._run_restart_cmd()
            return
        self._launch_all(self._launches([]))

    def restart(self) -> None:
        if self.restart_cmd:
            self._run_restart_cmd()
            return
        servers = self.server_processes()
        launches = self._launches(servers)  # decided first: a stopped server tells nothing
        self._stop(servers)
        self._launch_all(launches)

    def _launches(self, servers: list[procs.Proc]) -> list[StartedAs]:
        if self.start_script:
            return [(("bash", self.start_script), os.path.dirname(self.start_script), None)]
        if servers:
            return [_as_started(p) for p in servers]
        if self._last_launch:
            return [self._last_launch]
        raise QpatchError(
            f"ComfyUI is not running in {self.description} and qpatch does not know how to "
            "start it",
            hint="pass --restart-cmd (e.g. 'systemctl restart comfyui') or --start-script",
        )

    def _stop(self, servers: list[procs.Proc]) -> None:
        """Our own launcher goes too: a start script outliving its server would be a second
        supervisor, and an unreaped one a zombie."""
        pids = [p.pid for p in servers]
        launcher = self._launcher if self._launcher_alive() else None
        if launcher is not None:
            pids.append(launcher.pid)
        for sig, wait in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                except PermissionError as e:
                    raise QpatchError(
                        f"not allowed to stop ComfyUI (pid {pid}) in {self.description}",
                        hint="run qpatch as the server's user, or pass --restart-cmd",
                    ) from e
            if _wait_until(lambda: not any(_alive(pid) for pid in pids), wait):
                if launcher is not None:
                    launcher.wait()  # a zombie by now: this only reaps it
                return
        raise QpatchError(f"ComfyUI (pid {', '.join(map(str, pids))}) survived SIGKILL")

    def _launch_all(self, launches: list[StartedAs]) -> None:
        """Detached (own session, output to a file): the server must outlive qpatch."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for argv, cwd, env in launches:
            with self.log_path.open("ab") as log:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"\n--- qpatch {stamp}: {shlex.join(argv)} (in {cwd})\n".encode())
                log.flush()
                self._launcher = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._last_launch = (argv, cwd, env)

    def _run_restart_cmd(self) -> None:
        """Output to the server log rather than pipes: a command that backgrounds the server
        would hold a pipe open and hang us."""
        assert self.restart_cmd
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n--- qpatch {stamp}: {shlex.join(self.restart_cmd)}\n".encode())
            log.flush()
            try:
                p = subprocess.Popen(
                    self.restart_cmd,
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                raise QpatchError(f"restart command {shlex.join(self.restart_cmd)}: {e}") from e
        try:
            code = p.wait(timeout=RESTART_CMD_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise QpatchError(
                f"restart command did not return within {RESTART_CMD_TIMEOUT_S:.0f} s",
                hint="it must start ComfyUI in the background and return",
            ) from e
        if code != 0:
            raise QpatchError(
                f"restart command {shlex.join(self.restart_cmd)} failed (exit status {code}): "
                + self.logs(10).strip()
            )
        _wait_until(lambda: bool(self.server_processes()), RESTART_CMD_GRACE_S)

    def host_pids(self) -> list[int]:
        roots = [p.pid for p in self.server_processes()]
        if self._launcher is not None and self._launcher.poll() is None:
            roots.append(self._launcher.pid)
        return _descendants(roots)

    def logs(self, tail: int = 20) -> str:
        try:
            with self.log_path.open("rb") as f:
                lines = deque(f, maxlen=tail) if tail > 0 else deque()
        except FileNotFoundError:
            return ""
        return b"".join(lines).decode("utf-8", errors="replace")


def _as_started(p: procs.Proc) -> StartedAs:
    """The server's own argv, cwd and environment. argv[0] rather than /proc's exe: exe is
    the resolved interpreter, and a venv's python run by that path is no longer the venv."""
    return p.argv, p.cwd, _environ(p.pid)


def _environ(pid: int) -> dict[str, str] | None:
    """The server's own environment, to start it again as it was (CUDA_VISIBLE_DEVICES…)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if b"=" in item)
    return {os.fsdecode(k): os.fsdecode(v) for k, _, v in pairs}
