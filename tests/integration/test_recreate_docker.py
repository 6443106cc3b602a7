"""`apply --recreate` on containers that launch main.py from their own command: the swap
to a patched replacement and back, through the real CLI, on real test-bed containers.
The original must come back as the very same container (same ID), every byte as it was."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from qpatch.appliers.container import BACKUP_SUFFIX, IMAGE_REPO, NEW_SUFFIX
from qpatch.comfy_api import ComfyAPI
from qpatch.targets.docker import DockerTarget
from tests.conftest import CPU_PATCH, TESTBED_PYTHON, StartContainer
from tests.integration.test_engine_docker import NODE, bad_tls_patch, healthy, qpatch

pytestmark = pytest.mark.docker

SH_FORM = [
    "sh",
    "-c",
    "cd /root/ComfyUI && /root/venv/bin/python main.py --listen 0.0.0.0 --port 8188 --cpu",
]
EXEC_FORM = ["/root/venv/bin/python", "main.py", "--listen", "0.0.0.0", "--cpu"]
LABEL, LABEL_VALUE = "org.example.owner", "ops"
MARKER = "/root/ComfyUI/models/downloaded-at-run-time.bin"  # in the writable layer only
FILES = (NODE, "/root/ComfyUI/main.py", MARKER)
PATCHED_ENV = b"OMP_NUM_THREADS=2\n"


def hashes(container: Container | str) -> dict[str, str]:
    ref = container if isinstance(container, str) else container.id
    target = DockerTarget(ref, require_running=False)
    return {p: hashlib.sha256(target.read_file(p)[0]).hexdigest() for p in FILES}


def server_argv(name: str) -> list[str]:
    stats = ComfyAPI(DockerTarget(name), TESTBED_PYTHON).system_stats()
    assert stats is not None
    return stats["system"]["argv"]


def commit_images(client: docker.DockerClient, name: str) -> list[str]:
    return [
        tag
        for image in client.images.list(name=IMAGE_REPO)
        for tag in image.tags
        if tag.startswith(f"{IMAGE_REPO}:{name}-")
    ]


def exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.containers.get(ref)
    except docker.errors.NotFound:
        return False
    return True


def assert_original_back(client: docker.DockerClient, original: Container, before: dict) -> None:
    """Same container under its name, running, healthy, byte-exact; no trace of the swap."""
    back = client.containers.get(original.name)
    assert back.id == original.id
    assert back.status == "running"
    assert healthy(back)
    assert hashes(back) == before
    assert not exists(client, original.name + BACKUP_SUFFIX)
    assert not exists(client, original.name + NEW_SUFFIX)
    assert commit_images(client, original.name) == []
    assert back.exec_run(["test", "-e", "/var/lib/qpatch"]).exit_code == 1


@pytest.fixture
def shared_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "from-host.txt").write_text("written on the host\n")
    folder.chmod(0o777)
    return folder


@pytest.fixture
def no_script(
    start_container: StartContainer, docker_client: docker.DockerClient, shared_folder: Path
) -> Iterator[Callable[[list[str]], Container]]:
    """Start a healthy test-bed ComfyUI launched by `command` itself (no start script), with a
    label, a bind-mounted host folder and a file written at run time. Whatever qpatch made
    of it (replacement, backup, commit image) is removed afterwards."""
    names: list[str] = []

    def start(command: list[str]) -> Container:
        c = start_container(
            command=command,
            working_dir="/root/ComfyUI",
            labels={LABEL: LABEL_VALUE},
            volumes={str(shared_folder): {"bind": "/data", "mode": "rw"}},
        )
        names.append(c.name)
        assert healthy(c, timeout=120)
        assert c.exec_run(["sh", "-c", f"head -c 4096 /dev/urandom > {MARKER}"]).exit_code == 0
        return c

    yield start
    for name in names:
        # The replacement first: it mounts the original's anonymous volume by name, which
        # removing the original with v=True then deletes.
        for ref in (name + NEW_SUFFIX, name, name + BACKUP_SUFFIX):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.containers.get(ref).remove(force=True, v=True)
        for tag in commit_images(docker_client, name):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag, force=True)


def test_without_recreate_exit_2_and_nothing_changes(
    no_script: Callable[[list[str]], Container],
) -> None:
    c = no_script(SH_FORM)
    before = hashes(c)
    r = qpatch("apply", c.name, "--patch", CPU_PATCH)
    assert r.returncode == 2, r.stderr
    assert "--recreate" in r.stderr and "nothing was changed" in r.stderr
    c.reload()
    assert c.status == "running"
    assert hashes(c) == before
    assert c.exec_run(["test", "-e", "/var/lib/qpatch"]).exit_code == 1


def test_recreate_round_trip_keeps_mounts_labels_and_the_original(
    no_script: Callable[[list[str]], Container],
    docker_client: docker.DockerClient,
    shared_folder: Path,
) -> None:
    c = no_script(SH_FORM)
    before = hashes(c)

    r = qpatch("apply", c.name, "--recreate", "--json", "--patch", CPU_PATCH)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "applied"
    new = docker_client.containers.get(c.name)
    assert new.id != c.id
    argv = server_argv(c.name)
    assert "--disable-smart-memory" in argv and "--cpu" in argv
    assert PATCHED_ENV in new.exec_run(["env"]).output
    after = hashes(new)
    assert after[NODE] == next(f["sha256_after"] for f in result["files"] if f["path"] == NODE)
    assert after[NODE] != before[NODE]
    assert after[MARKER] == before[MARKER]  # the writable layer came along
    assert new.labels[LABEL] == LABEL_VALUE
    [mount] = [m for m in new.attrs["Mounts"] if m["Destination"] == "/data"]
    assert (mount["Type"], mount["Source"]) == ("bind", str(shared_folder))
    assert new.exec_run(["cat", "/data/from-host.txt"]).output == b"written on the host\n"
    new.exec_run(["sh", "-c", "echo from the replacement > /data/from-replacement.txt"])
    assert (shared_folder / "from-replacement.txt").read_text() == "from the replacement\n"
    backup = docker_client.containers.get(c.name + BACKUP_SUFFIX)
    assert backup.id == c.id and backup.status == "exited"

    verified = qpatch("verify", c.name, "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["status"] == "ok"
    again = qpatch("apply", c.name, "--recreate", "--json", "--patch", CPU_PATCH)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "already-applied"
    assert docker_client.containers.get(c.name).id == new.id
    assert "recreated" in qpatch("status", c.name).stdout

    rolled = qpatch("rollback", c.name)
    assert rolled.returncode == 0, rolled.stderr
    assert_original_back(docker_client, c, before)
    assert not exists(docker_client, new.id)
    assert "--disable-smart-memory" not in server_argv(c.name)
    assert PATCHED_ENV not in docker_client.containers.get(c.name).exec_run(["env"]).output
    assert "rolled-back" in qpatch("status", c.name).stdout


def test_a_recreate_that_stops_the_server_brings_the_original_back(
    no_script: Callable[[list[str]], Container],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    patch = bad_tls_patch(tmp_path)
    c = no_script(EXEC_FORM)
    before = hashes(c)
    r = qpatch("apply", c.name, "--recreate", "--patch", str(patch), "--timeout", "60")
    assert r.returncode == 1, r.stderr
    assert "is back, untouched" in r.stderr
    assert "load_cert_chain" in r.stderr  # the replacement's own last log lines say why
    assert_original_back(docker_client, c, before)


def test_kill_9_after_the_swap_is_recovered_by_the_next_rollback(
    no_script: Callable[[list[str]], Container], docker_client: docker.DockerClient
) -> None:
    c = no_script(SH_FORM)
    before = hashes(c)
    r = qpatch(
        "apply",
        c.name,
        "--recreate",
        "--patch",
        CPU_PATCH,
        env={"QPATCH_FAULT": "recreate-after-swap"},
    )
    assert r.returncode == -9
    assert docker_client.containers.get(c.name).id != c.id  # the swap happened

    rolled = qpatch("rollback", c.name)
    assert rolled.returncode == 0, rolled.stderr
    assert "interrupted" in rolled.stderr
    assert_original_back(docker_client, c, before)
