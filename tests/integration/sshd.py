"""A throwaway sshd on loopback that lets root in with a throwaway key, and a client
environment that reaches it through the system's own `ssh`, for `--host ssh://…` against
the local engine (one engine by a second road).

What it touches outside its temporary folder: it installs openssh-server (and the client)
when absent, and creates /run/sshd (sshd's privilege-separation folder, empty; left in
place as Debian's own unit would, since another sshd may be using it by then). The client it
sets up reads and writes nothing under ~/.ssh (passwd's home) or /etc/ssh:

* docker-py runs `ssh` by name from PATH, with our environment (docker/transport/sshconn.py).
  `Sshd.env` puts first on PATH a two-line `ssh` that execs the system's /usr/bin/ssh with
  `-F <our config>`: with -F, ssh reads neither ~/.ssh/config nor /etc/ssh/ssh_config. That
  config names our known-hosts file (one line: this sshd's host key; the global files off),
  checks it strictly and never writes it; ssh's own arguments (docker-py's) are untouched.
* The client's private key lives only in an ssh-agent of ours (SSH_AUTH_SOCK); the file is
  deleted once added, and `IdentitiesOnly` offers that key and no other.
* With `multiplex`, one ssh master connection of ours (ControlPath in the folder) carries
  every later ssh: docker-py starts an ssh per API request, and a handshake costs 0.2-0.4 s.

The server side runs `sshd -D -e -f <our config>` on 127.0.0.1 (port 22, else a free one)
with its own host key, AuthorizedKeysFile in the folder, no PAM and no ~/.ssh/rc: the only
thing the far side runs is what the client asks for (`docker system dial-stdio`)"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SYSTEM_SSH = "/usr/bin/ssh"
SSHD = "/usr/sbin/sshd"  # absolute: sshd re-executes itself
PRIVSEP_DIR = Path("/run/sshd")
START_WAIT_S = 15


class SshdError(RuntimeError):
    """The test's sshd could not be brought up; the message says why."""


@dataclass(frozen=True)
class Sshd:
    """`url`: what --host takes. `env`: the variables a qpatch subprocess needs on top of
    os.environ to reach it (PATH with the ssh shim first, SSH_AUTH_SOCK)."""

    url: str
    port: int
    env: dict[str, str]
    folder: Path

    def ssh(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`command` on the far side, as docker-py would run it (same shim, same env)."""
        argv = ["ssh", "-l", "root", "-p", str(self.port), "--", "127.0.0.1", command]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )


def ensure_openssh() -> None:
    """openssh-server and -client from apt, when sshd or the client tools are missing."""
    missing = []
    if not os.access(SSHD, os.X_OK):
        missing.append("openssh-server")
    if not os.access(SYSTEM_SSH, os.X_OK) or not all(
        shutil.which(t) for t in ("ssh-keygen", "ssh-agent", "ssh-add")
    ):
        missing.append("openssh-client")
    if not missing:
        return
    if os.geteuid() != 0:
        raise SshdError(f"{' '.join(missing)} missing and not root: apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env)

    install = ("install", "-y", "-q", "--no-install-recommends", *missing)
    r = apt(*install)
    if r.returncode != 0:  # a fresh box: empty package lists
        up = apt("update", "-q")
        if up.returncode != 0:
            raise SshdError(f"apt-get update failed:\n{up.stderr[-2000:]}")
        r = apt(*install)
    if r.returncode != 0:
        raise SshdError(f"apt-get install {' '.join(missing)} failed:\n{r.stderr[-2000:]}")


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_config(folder: Path, port: int) -> Path:
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        "AddressFamily inet",
        f"HostKey {folder / 'host_key'}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "AllowUsers root",
        "UsePAM no",
        # the folder is under /tmp (mode 1777), which StrictModes refuses for keys files
        "StrictModes no",
        "PermitUserRC no",
        "PermitUserEnvironment no",
        "AllowAgentForwarding no",
        "AllowTcpForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        "PrintLastLog no",
        # docker-py opens a connection (an ssh) per concurrent request
        "MaxStartups 64:30:128",
        "MaxSessions 64",
        "LogLevel VERBOSE",
    ]
    if os.environ.get("DOCKER_HOST"):  # the far side's docker CLI reaches our engine too
        lines.append(f"SetEnv DOCKER_HOST={os.environ['DOCKER_HOST']}")
    path = folder / "sshd_config"
    path.write_text("\n".join(lines) + "\n")
    return path


def _client_config(folder: Path, agent_sock: Path, mux: Path | None) -> Path:
    path = folder / "ssh_config"
    path.write_text(
        "Host *\n"
        f"  IdentityAgent {agent_sock}\n"
        f"  IdentityFile {folder / 'id_ed25519.pub'}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {folder / 'known_hosts'}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  UpdateHostKeys no\n"
        "  CheckHostIP no\n"
        "  BatchMode yes\n"
        "  PasswordAuthentication no\n"
        "  KbdInteractiveAuthentication no\n"
        "  GSSAPIAuthentication no\n"
        "  ControlMaster no\n"
        f"  ControlPath {mux or 'none'}\n"
        "  ConnectTimeout 10\n"
        "  LogLevel ERROR\n"
    )
    return path


def _wait_listening(proc: subprocess.Popen[bytes], log: Path, port: int) -> bool:
    """True once sshd says it listens; False when it gave up (port taken)."""
    ready = f"Server listening on 127.0.0.1 port {port}"
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if ready in text:
            return True
        if proc.poll() is not None:
            if "Address already in use" in text or "Cannot bind any address" in text:
                return False
            raise SshdError(f"sshd exited {proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    raise SshdError(f"sshd did not listen within {START_WAIT_S}s:\n{log.read_text()[-2000:]}")


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_sshd(proc: subprocess.Popen[bytes]) -> None:
    """Our sshd, and the per-connection sshd children it forked (found by parent PID)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == proc.pid:
                children.append(int(stat.parent.name))
    _terminate(proc)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _wait_for(
    path: Path,
    proc: subprocess.Popen[bytes],
    what: str,
    log: Path | None = None,
    pattern: str | None = None,
) -> None:
    """Until `path` exists (with `pattern`: something in it that matches), or `proc` ended."""
    deadline = time.monotonic() + START_WAIT_S
    while not (any(path.glob(pattern)) if pattern else path.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            said = log.read_text(errors="replace")[-2000:] if log else ""
            raise SshdError(f"{what} did not start{': ' + said if said else ''}")
        time.sleep(0.02)


@contextlib.contextmanager
def running_sshd(ports: tuple[int, ...] = (22,), *, multiplex: bool = True) -> Iterator[Sshd]:
    """sshd on 127.0.0.1 at the first of `ports` that is free (else a free one), an agent
    holding the client key and, with `multiplex`, an ssh master connection that the later
    ones ride. All stopped, and the folder removed, afterwards."""
    if os.geteuid() != 0:
        raise SshdError("the test's sshd runs as root (it lets root in, on port 22 when free)")
    ensure_openssh()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qpatch-sshd-")))
        folder.chmod(0o700)
        host_pub = _keygen(folder / "host_key", "qpatch-test-host")
        client_pub = _keygen(folder / "id_ed25519", "qpatch-test-client")
        (folder / "authorized_keys").write_text(client_pub + "\n")

        agent_sock = folder / "agent.sock"
        agent = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(agent_sock)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(_terminate, agent)
        _wait_for(agent_sock, agent, "ssh-agent")
        subprocess.run(
            ["ssh-add", "-q", str(folder / "id_ed25519")],
            check=True,
            capture_output=True,
            env={**os.environ, "SSH_AUTH_SOCK": str(agent_sock)},
        )
        (folder / "id_ed25519").unlink()  # the private key is in the agent only

        # %C: a hash of user, host and port, so another port (or host) is another master
        mux = folder / "mux-%C" if multiplex else None
        bindir = folder / "bin"
        bindir.mkdir()
        shim = bindir / "ssh"
        shim.write_text(
            "#!/bin/sh\n# the system's ssh, reading our config instead of ~/.ssh and /etc/ssh\n"
            f"exec {SYSTEM_SSH} -F '{_client_config(folder, agent_sock, mux)}' \"$@\"\n"
        )
        shim.chmod(0o755)

        candidates = [*ports, *(_free_port() for _ in range(3))]
        for port in candidates:
            log = folder / f"sshd-{port}.log"
            config = _server_config(folder, port)
            checked = subprocess.run(
                [SSHD, "-t", "-f", str(config)], capture_output=True, text=True
            )
            if checked.returncode != 0:
                raise SshdError(f"sshd -t refused the config: {checked.stderr}")
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            if _wait_listening(proc, log, port):
                break
        else:
            raise SshdError(f"no free port among {candidates} for sshd")
        stack.callback(_stop_sshd, proc)

        hostspec = "127.0.0.1" if port == 22 else f"[127.0.0.1]:{port}"
        (folder / "known_hosts").write_text(f"{hostspec} {host_pub}\n")
        env = {
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "SSH_AUTH_SOCK": str(agent_sock),
        }
        if mux is not None:
            master_log = folder / "master.log"
            with master_log.open("wb") as sink:
                master = subprocess.Popen(
                    [str(shim), "-M", "-N", "-l", "root", "-p", str(port), "--", "127.0.0.1"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=sink,
                    env={**os.environ, **env},
                )
            stack.callback(_terminate, master)
            _wait_for(folder, master, "the ssh master connection", master_log, "mux-*")
        url = "ssh://root@127.0.0.1" + ("" if port == 22 else f":{port}")
        yield Sshd(url=url, port=port, env=env, folder=folder)
