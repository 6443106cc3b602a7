"""Which Docker engine a target lives on: `--host URL` (unix://, tcp://, ssh://user@host)
or a Docker context's name, else DOCKER_HOST, else the local socket.

An engine is named by what the user typed (so a child run or a later command reaches it
the same way) and known by the daemon's own ID (so the local socket and ssh://127.0.0.1,
one engine, share one host mirror, and two engines' `comfyui` containers never do)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import weakref
from dataclasses import dataclass

import docker
import docker.errors
from docker.context import ContextAPI

from qpatch.errors import BadInput

URL_SCHEMES = ("unix://", "tcp://", "ssh://", "http://", "https://", "npipe://")


@dataclass(frozen=True)
class Engine:
    """`host`: the --host value as given (None: DOCKER_HOST or the local socket)."""

    host: str | None = None

    @property
    def is_default(self) -> bool:
        return self.host is None and not os.environ.get("DOCKER_HOST")

    @property
    def label(self) -> str:
        """For people and the summary table."""
        return self.host or os.environ.get("DOCKER_HOST") or "local"


def check_host(value: str) -> str:
    """A --host value as the CLI accepts it: a URL of a known scheme, or a context name
    that exists. Raises BadInput; the engine itself is asked only when it is used."""
    value = value.strip()
    if not value:
        raise BadInput("--host: empty (a URL such as ssh://root@gpu1, or a Docker context name)")
    if "://" in value:
        if not value.startswith(URL_SCHEMES):
            raise BadInput(
                f"--host {value}: unknown scheme (known: {', '.join(s[:-3] for s in URL_SCHEMES)})"
            )
        return value
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value):
        raise BadInput(f"--host {value}: neither a URL nor a Docker context name")
    _context(value)
    return value


def _context(name: str) -> tuple[str, object]:
    """A Docker context's engine URL and TLS settings (docker-py reads `docker context`'s
    own store, ~/.docker/contexts)."""
    try:
        ctx = ContextAPI.get_context(name)
    except docker.errors.ContextException as e:
        raise BadInput(f"--host {name}: Docker context unreadable: {e}") from e
    if ctx is None or not ctx.Host:
        raise BadInput(
            f"--host {name}: no such Docker context",
            hint="`docker context ls` lists them; or give a URL (ssh://user@host, tcp://host:2376)",
        )
    return ctx.Host, ctx.TLSConfig


def _tolerate_ssh_close() -> None:
    """docker-py 7.1's SSHSocket.close() writes to ssh's stdin; once ssh has exited (after
    each exec) that raises BrokenPipeError from exec_run *after* the command ran
    (docker/docker-py#3218), which through_restarts would take for an engine gone away and
    run the command again: a second `mv` of a file already moved, a lock found taken by
    ourselves. Closing quietly is what the socket's owner wants."""
    from docker.transport import sshconn

    if getattr(sshconn.SSHSocket.close, "qpatch", False):
        return
    original = sshconn.SSHSocket.close

    def close(self: sshconn.SSHSocket) -> None:
        try:
            original(self)
        except OSError:  # BrokenPipeError: ssh has exited already
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.terminate()

    close.qpatch = True  # type: ignore[attr-defined]
    sshconn.SSHSocket.close = close  # type: ignore[method-assign]


def client(engine: Engine, timeout: float = 120) -> docker.DockerClient:
    """A client of `engine`, pinged. ssh:// goes through the system's `ssh` (as the docker
    CLI does: ~/.ssh/config, the agent and known_hosts apply), which runs `docker system
    dial-stdio` on the far side. `timeout` bounds each API call."""
    where = engine.label
    try:
        if engine.host is None:
            ssh = _tolerating(_is_ssh(os.environ.get("DOCKER_HOST")))
            c = docker.from_env(timeout=timeout, use_ssh_client=ssh)
        elif "://" in engine.host:
            ssh = _tolerating(_is_ssh(engine.host))
            c = docker.DockerClient(base_url=engine.host, timeout=timeout, use_ssh_client=ssh)
        else:
            url, tls = _context(engine.host)
            where = f"{engine.host} ({url})"
            ssh = _tolerating(_is_ssh(url))
            c = docker.DockerClient(
                base_url=url, tls=tls or False, timeout=timeout, use_ssh_client=ssh
            )
        c.ping()
    except docker.errors.DockerException as e:
        raise BadInput(
            f"Docker engine unreachable at {where}: {e}",
            hint="start the engine (scripts/ensure-docker does), or check --host / DOCKER_HOST",
        ) from e
    return c


#: Each client's engine ID, asked once: every DockerTarget opened on a client (a service's
#: tasks, a fleet's members) names its mirror by it.
_IDS: weakref.WeakKeyDictionary[docker.DockerClient, str] = weakref.WeakKeyDictionary()


def engine_id(c: docker.DockerClient) -> str:
    """The daemon's own ID, path-safe: the same engine by any road gives the same one.
    Where /info is denied (a socket proxy), the engine's URL stands in: stable for that
    road, and never shared with another engine."""
    if c in _IDS:
        return _IDS[c]
    try:
        raw = str(c.info().get("ID") or "")
    except docker.errors.DockerException:
        raw = ""
    found = re.sub(r"[^A-Za-z0-9]", "", raw)[:12]
    if not found:
        url = str(getattr(c.api, "base_url", "") or "unknown")
        found = "url-" + hashlib.sha256(url.encode()).hexdigest()[:12]
    _IDS[c] = found
    return found


def _tolerating(ssh: bool) -> bool:
    """`ssh`, with docker-py's ssh socket made safe to close first when it is."""
    if ssh:
        with contextlib.suppress(ImportError):  # no paramiko: docker-py says so itself
            _tolerate_ssh_close()
    return ssh


def _is_ssh(url: str | None) -> bool:
    return bool(url) and url.startswith("ssh://")  # type: ignore[union-attr]
