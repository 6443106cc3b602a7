"""`--host ssh://root@127.0.0.1`: the local engine reached by a second road, a real sshd on
loopback (tests/integration/sshd.py) and the system's ssh, as docker-py runs it. The real CLI
in a subprocess; files are hashed through the local socket, the first road."""

from __future__ import annotations

import importlib.util
import json
import os
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


@pytest.fixture(scope="module")
def sshd(docker_client: docker.DockerClient) -> Iterator[Sshd]:
    if importlib.util.find_spec("paramiko") is None:
        pytest.fail(
            "docker-py's ssh:// imports paramiko even with use_ssh_client=True "
            "(docker/transport/sshconn.py): qpatch needs docker[ssh]"
        )
    with running_sshd() as s:
        far = s.ssh("docker info --format '{{.ID}}'")
        assert far.returncode == 0, f"docker on the far side of {s.url}: {far.stderr}"
        assert far.stdout.strip() == docker_client.info()["ID"], "the far side's engine is another"
        yield s


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
    assert written and after == {**before, **written}
    assert all(before[p] != h for p, h in written.items())
    assert healthy(comfy_container)
    # the mirror is named by the container and the engine's own ID, whichever road
    one_mirror = [f"docker-{name}@{engine_id(docker_client)}"]
    assert mirrors(state) == one_mirror

    verified = qpatch("verify", name, "--host", host, road="ssh")
    assert verified.returncode == 0, verified.stderr

    over_ssh = qpatch("status", name, "--host", host, "--json", road="ssh")
    assert over_ssh.returncode == 0, over_ssh.stderr
    by_socket = qpatch("status", name, "--json", road="socket")
    assert by_socket.returncode == 0, by_socket.stderr
    seen = [json.loads(r.stdout) for r in (over_ssh, by_socket)]
    for s in seen:
        assert s["status"] == "applied"
        assert [(f["path"], f["sha256_after"]) for f in s["files"]] == list(written.items())
    assert seen[0]["ledger"] == seen[1]["ledger"]

    rolled = qpatch("rollback", name, "--host", host, road="ssh")
    assert rolled.returncode == 0, rolled.stderr
    assert hashes(comfy_container) == before
    assert healthy(comfy_container)

    # across roads: what ssh applied, the local socket rolls back, through the one mirror
    again = qpatch("apply", name, "--host", host, "--patch", CPU_PATCH, "--no-restart", road="ssh")
    assert again.returncode == 0, again.stderr
    assert hashes(comfy_container) == after
    back = qpatch("rollback", name, "--no-restart", road="socket")
    assert back.returncode == 0, back.stderr
    assert hashes(comfy_container) == before
    assert mirrors(state) == one_mirror
    ledger = json.loads((state / "qpatch" / one_mirror[0] / "ledger.json").read_text())
    assert ledger["state"] == "rolled-back"
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
    assert hashes(c) == before
    assert mirrors(state) == []
    assert c.exec_run(["test", "-e", "/var/lib/qpatch"]).exit_code == 1
    print(f"\n{qpatch.report()}")
