"""A ComfyUI in a Docker container, through the Docker SDK only (never the docker CLI):
files as tar streams, commands as argv lists, restart without waiting out the stop
timeout."""

from __future__ import annotations

import hashlib
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from qpatch.errors import BadInput, QpatchError
from qpatch.images import split_tag
from qpatch.paths import host_state_dir
from qpatch.probe import Probe, Questions, run_probe
from qpatch.targets import engines, procs, tarsafe
from qpatch.targets.base import ContainerConfig, ExecResult, FileStat, TargetState
from qpatch.targets.engine_wait import (
    TargetPaused,
    is_paused_refusal,
    pause_wait_s,
    through_restarts,
)
from qpatch.targets.engines import Engine

T = TypeVar("T")

#: How long to wait for the container to end by itself after ComfyUI got SIGTERM. The
#: test bed ends in 0.5 s; a script ending in `tail -f` never does, and gets a restart.
SELF_EXIT_WAIT_S = 8
#: A commit copies the whole writable layer (nodes, downloaded models): minutes, not 120 s.
COMMIT_TIMEOUT_S = 3600


def connect(timeout: float = 120) -> docker.DockerClient:
    """The engine DOCKER_HOST names (ssh:// too), or the local socket. `timeout` bounds
    each API call (an image commit of the test bed takes longer than any target call)."""
    return engines.client(Engine(), timeout=timeout)


#: Constant; the temp file and the target arrive as argv. `cat >` keeps the inode (and so
#: the bind mount), `sync` flushes it, and the temp file goes whatever happened.
_COPY_IN_PLACE = [
    "sh",
    "-c",
    'cat "$1" > "$2" && sync "$2"; rc=$?; rm -f "$1"; exit $rc',
    "sh",
]


def _busy(r: ExecResult) -> bool:
    """mv's answer when the destination is a mount point."""
    return b"busy" in (r.stderr + r.stdout).lower()


class DockerTarget:
    def __init__(
        self,
        ref: str,
        client: docker.DockerClient | None = None,
        *,
        require_running: bool = True,
        engine: Engine | None = None,
    ) -> None:
        self.engine = engine or Engine()
        client = client or engines.client(self.engine)
        try:
            self.container: Container = client.containers.get(ref)
        except docker.errors.NotFound as e:
            raise BadInput(
                f"no such container: {ref}", hint="`docker ps` lists the running ones"
            ) from e
        except docker.errors.APIError as e:  # e.g. an ambiguous ID prefix
            raise BadInput(f"container {ref!r}: {e.explanation or e}") from e
        name = self.container.name
        self.ref = name
        self.root: str | None = None  # discovered inside the container
        self.start_script: str | None = None
        self.script_folders = ("/", "/root")
        self.key = "docker-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.mirror_key = _mirror_key(self.key, client, self.engine)
        self.host = self.engine.host
        self.follow(self.container)
        state = self.container.attrs["State"]
        if require_running and state.get("Status") != "running":
            raise BadInput(
                f"{self.description} is not running (status {state.get('Status')})",
                hint=f"start it first: docker start {name}",
            )

    def follow(self, container: Container) -> None:
        """Talk to `container` from now on, under the same ref and key: the replacement
        (or the original again) of `apply --recreate`, which takes over the name."""
        self.container = container
        self.description = f"container {self.ref} ({container.short_id})"

    # ------------------------------------------------------------------ commands

    def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        cmd = list(argv)
        if timeout is not None:  # exec_run has no timeout of its own
            cmd = ["timeout", "-k", "2", str(max(1, int(timeout))), *cmd]

        def run() -> tuple[int | None, tuple[bytes | None, bytes | None]]:
            # As root whatever user the container runs as: qpatch's file work must not depend
            # on it (owner and mode are kept by put_archive), and only a read-only mount stops
            # root (Plan.validate names it).
            return self.container.exec_run(
                cmd, demux=True, workdir=cwd, environment=dict(env) if env else None, user="0"
            )

        try:
            code, (out, err) = self._engine_call(f"running {cmd[0]}", run)
        except docker.errors.APIError as e:
            raise QpatchError(f"exec in {self.description} failed: {e.explanation or e}") from e
        return ExecResult(code if code is not None else -1, out or b"", err or b"")

    def _engine_call(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, through what the world does to the engine meanwhile: while it is away
        (restarting) it is waited for (engine_wait.through_restarts); while the container is
        paused (docker pause: exec and writes are refused) the unpause is waited for, a
        bounded time, then said — never a bare 409."""
        deadline = time.monotonic() + pause_wait_s()
        while True:
            try:
                return through_restarts(what, call)
            except docker.errors.APIError as e:
                if not is_paused_refusal(e):
                    raise
                if time.monotonic() >= deadline:
                    raise TargetPaused(
                        f"{self.description} is paused (docker pause): qpatch waited "
                        f"{pause_wait_s():.0f} s for it while {what}",
                        hint=f"docker unpause {self.ref}, then run the same qpatch command "
                        "again: it finishes or undoes the interrupted run first",
                    ) from e
                time.sleep(0.5)

    # ------------------------------------------------------------------ files

    def read_file(self, path: str) -> tuple[bytes, FileStat]:
        try:
            stream, stat = through_restarts(
                f"reading {path}", lambda: self.container.get_archive(path)
            )
        except docker.errors.NotFound as e:
            raise BadInput(f"{path}: no such file in {self.description}") from e
        if stat.get("linkTarget"):
            real = self.exec(["readlink", "-f", path]).check(f"resolving link {path}")
            return self.read_file(real.text.strip())
        data, info = tarsafe.read_single_file(stream, posixpath.basename(path))
        return data, FileStat(mode=info.mode & 0o7777, uid=info.uid, gid=info.gid, size=info.size)

    def write_file(self, path: str, data: bytes, stat: FileStat) -> None:
        folder, name = posixpath.split(path)
        if not self.is_running():
            # No exec in a stopped container, and nobody reads the file: write in place.
            self._put(folder or "/", name, data, stat)
            return
        tmp_name = f".qpatch-{uuid.uuid4().hex[:12]}.tmp"
        tmp = posixpath.join(folder, tmp_name)
        try:
            self._put(folder or "/", tmp_name, data, stat)
        except QpatchError:
            self.exec(["rm", "-f", tmp])  # a full disk may leave part of it: never a trace
            raise
        moved = self.exec(["mv", "-f", tmp, path])
        if moved.exit_code == 0:
            return
        if _busy(moved):  # a mount point (a single-file bind mount): nothing renames onto it
            self._write_in_place(tmp, path, data)
            return
        self.exec(["rm", "-f", tmp])
        moved.check(f"renaming the new {path} into place")

    def _write_in_place(self, tmp: str, path: str, data: bytes) -> None:
        """Copy the bytes over the file itself (same inode, so the mount sees them), flush
        them, and check them by hash; the caller's backup exists already."""
        r = self.exec([*_COPY_IN_PLACE, tmp, path])
        if r.exit_code != 0:
            r.check(f"writing {path} in place (it is a mount point)")
        written, _ = self.read_file(path)
        if hashlib.sha256(written).digest() != hashlib.sha256(data).digest():
            raise QpatchError(f"{path}: the bytes written in place do not match what was meant")

    def _put(self, folder: str, name: str, data: bytes, stat: FileStat) -> None:
        archive = tarsafe.single_file_tar(name, data, mode=stat.mode, uid=stat.uid, gid=stat.gid)
        try:
            put = lambda: self.container.put_archive(folder, archive)  # noqa: E731
            if not self._engine_call(f"writing {folder}/{name}", put):
                raise QpatchError(f"could not write into {folder} in {self.description}")
        except docker.errors.APIError as e:
            text = str(e.explanation or e)
            if "no space left" in text.lower():
                raise QpatchError(
                    f"no space left on the filesystem of {folder} in {self.description} "
                    f"for {len(data)} bytes ({name})"
                ) from e
            raise QpatchError(f"writing {folder}/{name}: {text}") from e

    def exists(self, path: str) -> bool:
        """Through the archive API, so it also answers for a stopped container: its HEAD
        form, which stats the path (as a GET would, a link itself) without packing it, 1 ms
        instead of 40 (and no tar of a whole folder). The SDK has no call for it."""
        api = self.container.client.api
        url = api._url("/containers/{0}/archive", self.container.id)
        try:
            head = lambda: api.head(url, params={"path": path}, timeout=api.timeout)  # noqa: E731
            api._raise_for_status(through_restarts(f"looking for {path}", head))
        except docker.errors.NotFound:
            return False
        return True

    # ------------------------------------------------------------------ process

    def state(self) -> TargetState:
        try:
            through_restarts("asking the container's state", self.container.reload)
        except docker.errors.NotFound:
            return TargetState(False, 0, "removed")
        s = self.container.attrs["State"]
        detail = (
            s.get("Status", "?")
            if s.get("Running")
            else (f"{s.get('Status')} (exit code {s.get('ExitCode')})")
        )
        restarts = int(self.container.attrs.get("RestartCount", 0))
        return TargetState(bool(s.get("Running")), restarts, detail)

    def is_running(self) -> bool:
        return self.state().running

    def start(self) -> None:
        through_restarts("starting the container", self.container.start)

    def server_processes(self) -> list[procs.Proc]:
        if not self.is_running():
            return []
        return procs.comfyui_servers(self.exec(procs.SCAN_ARGV).text)

    def probe(self, questions: Questions) -> Probe | None:
        """Discovery's questions in one exec (qpatch.probe); None when stopped."""
        if not self.is_running():
            return None
        return run_probe(self, questions)

    def configured_command(self) -> list[str] | None:
        return self.container_config().command or None

    def container_config(self) -> ContainerConfig:
        cfg = self.container.attrs["Config"]
        return ContainerConfig(cfg.get("Entrypoint"), cfg.get("Cmd"), list(cfg.get("Env") or []))

    def as_container(self) -> DockerTarget:
        return self

    def labels(self) -> dict[str, str]:
        """The container's labels (its image's included: Docker copies them in)."""
        return dict(self.container.attrs["Config"].get("Labels") or {})

    def commit(self, image: str, labels: Mapping[str, str]) -> str:
        """Commit the container (paused meanwhile, so no half-written file is caught) as
        `image` (REPO:TAG) with `labels` added to its config; the new image's ID."""
        repository, tag = split_tag(image)
        conf = {"Labels": {**self.labels(), **labels}}
        # a writable layer holding nodes or models takes longer than any other call
        api = self.container.client.api
        usual, api.timeout = api.timeout, COMMIT_TIMEOUT_S
        try:
            made = self._engine_call(
                f"committing {self.ref}",
                lambda: self.container.commit(
                    repository=repository, tag=tag or "latest", conf=conf
                ),
            )
        except docker.errors.APIError as e:
            raise QpatchError(f"committing {self.description}: {e.explanation or e}") from e
        except requests.exceptions.ReadTimeout as e:
            raise QpatchError(
                f"committing {self.description}: no answer within {COMMIT_TIMEOUT_S} s; the "
                f"engine may still finish it (docker image ls {repository})"
            ) from e
        finally:
            api.timeout = usual
        return str(made.id)

    def mounted(self, paths: Sequence[str]) -> list[str]:
        """Those of `paths` on a volume or bind mount of the container (a commit leaves
        them out)."""
        destinations = [m["Destination"] for m in self.container.attrs.get("Mounts") or []]
        return [
            p
            for p in paths
            if any(p == d or p.startswith(d.rstrip("/") + "/") for d in destinations)
        ]

    @property
    def image(self) -> str:
        """The image the container was created from, as its config names it."""
        return str(self.container.attrs["Config"].get("Image") or self.container.image.id)

    @property
    def instance(self) -> str:
        """This very container: a recreated one (same name) has another ID."""
        return str(self.container.id)

    def restart(self) -> None:
        """Stop quickly (see stop) and start again."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """SIGTERM ComfyUI's python so the one-click script (PID 1, bash, deaf to SIGTERM)
        ends by itself: 0.5 s instead of Docker's 10 s stop timeout. Falls back to a plain
        stop when the container does not exit (or python is PID 1 and ignores SIGTERM)."""
        if not self.is_running():
            return
        servers = [p for p in self.server_processes() if p.pid != 1]
        if servers:
            for p in servers:
                self.exec(["kill", "-TERM", str(p.pid)])
            try:
                self.container.wait(timeout=SELF_EXIT_WAIT_S)
                return
            except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout):
                pass
        through_restarts("stopping the container", lambda: self.container.stop(timeout=10))

    def host_pids(self) -> list[int]:
        top = through_restarts("listing the container's processes", self.container.top)
        col = top["Titles"].index("PID")
        return [int(row[col]) for row in top.get("Processes") or []]

    def logs(self, tail: int = 20) -> str:
        logs = through_restarts("reading the log", lambda: self.container.logs(tail=tail))
        return logs.decode("utf-8", errors="replace")


def _mirror_key(key: str, client: docker.DockerClient, engine: Engine) -> str:
    """The host mirror's folder: the container's name on this engine. A mirror made
    before engines had IDs in it (`docker-<name>`, the default engine) is still used."""
    if engine.is_default and (host_state_dir() / key / "ledger.json").is_file():
        return key
    return f"{key}@{engines.engine_id(client)}"
