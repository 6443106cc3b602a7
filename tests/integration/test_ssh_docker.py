"""`--host ssh://root@127.0.0.1`: the local engine reached by a second road, a real sshd on
loopback (tests/integration/sshd.py) and the system's ssh, as docker-py runs it. The real CLI
in a subprocess; files are hashed through the local socket, the first road."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from qpatch.targets.engines import engine_id
from tests.conftest import CPU_PATCH, StartContainer
from tests.integration.sshd import Sshd, running_sshd
from tests.integration.test_engine_docker import REPO, hashes, healthy

pytestmark = pytest.mark.docker

UNREACHABLE = "ssh://root@127.0.0.1:1"  # nothing listens on port 1


def dot_ssh() -> dict[str, str] | None:
    """The invoking user's ~/.ssh (ssh takes the home from passwd, not $HOME), hashed."""
    folder = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh"
    if not folder.exists():
        return None
    seen = {}
    for p in sorted(folder.rglob("*")):
        seen[str(p.relative_to(folder))] = (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )
    return seen


@pytest.fixture(scope="module")
def sshd(docker_client: docker.DockerClient) -> Iterator[Sshd]:
    if importlib.util.find_spec("paramiko") is None:
        pytest.fail(
            "docker-py's ssh:// imports paramiko even with use_ssh_client=True "
            "(docker/transport/sshconn.py): qpatch needs docker[ssh]"
        )
    untouched = dot_ssh()
    # QPATCH_TEST_SSH_MUX=0: every ssh its own connection, as with a bare ~/.ssh/config
    with running_sshd(multiplex=os.environ.get("QPATCH_TEST_SSH_MUX", "1") != "0") as s:
        far = s.ssh("docker info --format '{{.ID}}'")
        assert far.returncode == 0, f"docker on the far side of {s.url}: {far.stderr}"
        assert far.stdout.strip() == docker_client.info()["ID"], "the far side's engine is another"
        yield s
    assert dot_ssh() == untouched, "~/.ssh changed"


class Runner:
    """`qpatch ARGS` with the ssh client environment and a state folder of the test's own;
    each call's wall time kept for the summary."""

    def __init__(self, sshd: Sshd, state: Path) -> None:
        self.env = {**os.environ, **sshd.env, "XDG_STATE_HOME": str(state)}
        self.times: list[tuple[str, float]] = []

    def __call__(self, *args: str, road: str) -> subprocess.CompletedProcess[str]:
        t = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "qpatch", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=self.env,
            cwd=REPO,
        )
        self.times.append((f"{args[0]} via {road}", time.monotonic() - t))
        return r

    def report(self) -> str:
        return ", ".join(f"{what} {s:.1f}s" for what, s in self.times)


def mirrors(state: Path) -> list[str]:
    root = state / "qpatch"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def test_round_trip_over_ssh_is_byte_exact_and_shares_the_mirror_with_the_socket(
    comfy_container: Container,
    sshd: Sshd,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    name, host = comfy_container.name, sshd.url
    state = tmp_path / "state"
    qpatch = Runner(sshd, state)
    before = hashes(comfy_container)

    applied = qpatch("apply", name, "--host", host, "--patch", CPU_PATCH, "--json", road="ssh")
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert result["status"] == "applied"
    written = {f["path"]: f["sha256_after"] for f in result["files"]}
    after = hashes(comfy_container)
    assert set(written) == set(after) and after == written  # the loader and the start script
    assert all(before[p] != after[p] for p in after)
    assert healthy(comfy_container)
    # the mirror is named by the container and the engine's own ID, whichever the road
    one_mirror = [f"docker-{name}@{engine_id(docker_client)}"]
    assert mirrors(state) == one_mirror

    verified = qpatch("verify", name, "--host", host, road="ssh")
    assert verified.returncode == 0, verified.stderr

    over_ssh = qpatch("status", name, "--host", host, "--json", road="ssh")
    assert over_ssh.returncode == 0, over_ssh.stderr
    by_socket = qpatch("status", name, "--json", road="socket")
    assert by_socket.returncode == 0, by_socket.stderr
    for seen in (json.loads(over_ssh.stdout), json.loads(by_socket.stdout)):
        assert seen["status"] == "applied"
        assert {f["path"]: f["sha256_after"] for f in seen["files"]} == written

    # The container loses its ledger and backups: only the host mirror the ssh apply wrote
    # can undo it, and the socket finds that same mirror.
    ledger = f"/var/lib/qpatch/docker-{name}"
    assert comfy_container.exec_run(["rm", "-rf", ledger]).exit_code == 0
    back = qpatch("rollback", name, road="socket")
    assert back.returncode == 0, back.stderr
    assert hashes(comfy_container) == before
    assert healthy(comfy_container)
    assert mirrors(state) == one_mirror

    # and the other way round: what the socket applied, ssh rolls back
    again = qpatch("apply", name, "--patch", CPU_PATCH, "--no-restart", road="socket")
    assert again.returncode == 0, again.stderr
    assert hashes(comfy_container) == after
    rolled = qpatch("rollback", name, "--host", host, "--no-restart", road="ssh")
    assert rolled.returncode == 0, rolled.stderr
    assert hashes(comfy_container) == before
    assert mirrors(state) == one_mirror
    mirrored = json.loads((state / "qpatch" / one_mirror[0] / "ledger.json").read_text())
    assert mirrored["state"] == "rolled-back"
    assert healthy(comfy_container)
    print(f"\nqpatch over {host} and the socket: {qpatch.report()}")


def test_an_unreachable_ssh_engine_exits_2_and_changes_nothing(
    start_container: StartContainer, sshd: Sshd, tmp_path: Path
) -> None:
    c = start_container()
    before = hashes(c)
    state = tmp_path / "state"
    qpatch = Runner(sshd, state)
    r = qpatch("apply", c.name, "--host", UNREACHABLE, "--patch", CPU_PATCH, road="ssh")
    assert r.returncode == 2, r.stderr
    assert f"Docker engine unreachable at {UNREACHABLE}" in r.stderr
    assert "Connection refused" in r.stderr  # ssh's own word, passed through
    assert hashes(c) == before
    assert mirrors(state) == []
    assert c.exec_run(["test", "-e", "/var/lib/qpatch"]).exit_code == 1
    print(f"\n{qpatch.report()}")
