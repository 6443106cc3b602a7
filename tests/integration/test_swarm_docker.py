"""service:NAME on a one-node swarm (docker swarm init on the test engine): the rollout
to 3 replicas converges and every task serves the patched files; Swarm's rollback brings
the originals back; a broken patch (ComfyUI answers, then dies within the monitor
window) is rolled back by Swarm itself and every task serves the originals again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.types import ServiceMode

from qpatch.swarm import canary
from qpatch.targets.docker import DockerTarget
from tests.conftest import CPU_PATCH, TEST_LABEL
from tests.integration.test_engine_docker import FILES, qpatch

pytestmark = pytest.mark.docker

NS = 1_000_000_000
REPLICAS = 3


@pytest.fixture(scope="module")
def swarm(docker_client: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """The test engine as a one-node swarm; left again only if this module made it one."""
    made = docker_client.info()["Swarm"].get("LocalNodeState") != "active"
    if made:
        docker_client.swarm.init(advertise_addr="127.0.0.1")
    yield docker_client
    if made:
        docker_client.swarm.leave(force=True)


@pytest.fixture
def service(swarm: docker.DockerClient, testbed_image: str) -> Iterator[str]:
    name = f"qpatch-test-{uuid.uuid4().hex[:8]}"
    swarm.services.create(
        testbed_image,
        name=name,
        mode=ServiceMode("replicated", replicas=REPLICAS),
        labels={TEST_LABEL: "1"},
        container_labels={TEST_LABEL: "1"},
        stop_grace_period=2 * NS,  # the one-click script (PID 1) ignores SIGTERM
    )
    try:
        wait_tasks(swarm, name, testbed_image)
        yield name
    finally:  # also when the tasks never came up
        remove_service(swarm, name)


def remove_service(swarm: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        swarm.services.get(name).remove()
    canary.remove(swarm, name)
    of_service = {"label": f"com.docker.swarm.service.name={name}"}
    deadline = time.monotonic() + 30
    while swarm.containers.list(all=True, filters=of_service):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for image in swarm.images.list(name=f"qpatch-baked/{name}"):
        for tag in image.tags:
            with contextlib.suppress(docker.errors.APIError):
                swarm.images.remove(tag, force=True)


def tasks(client: docker.DockerClient, name: str) -> list:  # noqa: ANN401
    svc = client.services.get(name)
    running = svc.tasks(filters={"desired-state": "running"})
    ids = [t["Status"].get("ContainerStatus", {}).get("ContainerID") for t in running]
    out = []
    for cid in filter(None, ids):  # a task not yet given a container has none
        with contextlib.suppress(docker.errors.NotFound):
            out.append(client.containers.get(cid))
    return [c for c in out if c.status == "running"]


def wait_tasks(client: docker.DockerClient, name: str, image: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        running = tasks(client, name)
        if len(running) == REPLICAS and all(
            c.attrs["Config"]["Image"].split("@")[0] == image for c in running
        ):
            return
        assert time.monotonic() < deadline, f"{name}: tasks not up on {image}"
        time.sleep(1)


def served(client: docker.DockerClient, name: str) -> list[dict[str, str]]:
    """Each running task's files, by sha256."""
    out = []
    for c in tasks(client, name):
        target = DockerTarget(c.id, client)
        out.append({p: hashlib.sha256(target.read_file(p)[0]).hexdigest() for p in FILES})
    return out


def test_rollout_converges_and_a_broken_patch_rolls_back_through_swarm(
    swarm: docker.DockerClient, service: str, testbed_image: str, tmp_path: Path
) -> None:
    original = served(swarm, service)
    assert len(original) == REPLICAS and all(o == original[0] for o in original)
    task = tasks(swarm, service)[0].name
    r = qpatch("apply", task, "--patch", CPU_PATCH)  # in place it would end the task
    assert r.returncode == 2 and f"service:{service}" in r.stderr
    r = qpatch("status", "--all", "--filter", f"name={service}", "--json")
    assert r.returncode == 2 and "no running container matches" in r.stderr  # tasks left out
    ref = f"service:{service}"
    fast = ["--update-delay", "1", "--update-monitor", "4"]
    r = qpatch("apply", ref, "--patch", CPU_PATCH, *fast, "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "applied"
    image = out["bake"]["baked"]["image"]
    assert (
        swarm.services.get(service)
        .attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        .startswith(image)
    )
    now = served(swarm, service)
    assert len(now) == REPLICAS
    assert all(n == out["bake"]["baked"]["files"] for n in now)
    assert all(n[p] != original[0][p] for n in now for p in FILES)
    assert qpatch("verify", ref).returncode == 0
    assert not swarm.containers.list(all=True, filters={"name": canary.name_for(service)})

    r = qpatch("rollback", ref, timeout=600)
    assert r.returncode == 0, r.stderr
    assert served(swarm, service) == original
    assert qpatch("verify", ref).returncode == 3

    broken = tmp_path / "dies.yaml"
    broken.write_text(
        "name: dies-after-warmup\ndescription: answers, then exits 12 s later\nversion: 1\n"
        "steps:\n  - startup:\n      env:\n        COMFYUI_STANDIN_EXIT_AFTER_S: '12'\n"
    )
    monitor = ["--update-delay", "1", "--update-monitor", "25"]
    r = qpatch("apply", ref, "--patch", str(broken), *monitor, "--json", timeout=600)
    assert r.returncode == 1, r.stderr  # restored: by Swarm
    assert "Swarm rolled service" in r.stderr
    wait_tasks(swarm, service, testbed_image)
    assert served(swarm, service) == original
    r = qpatch("status", ref, "--json")
    assert json.loads(r.stdout)["status"] == "rolled-back-by-swarm"
