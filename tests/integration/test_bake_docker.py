"""bake: a patched container committed as an image that is born patched; recreated
from it, verify passes and apply has nothing to do; recreated from the original image,
verify and status say "recreated unpatched" and apply patches it again."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import docker
import pytest

from qpatch import baked
from tests.conftest import CPU_PATCH, TEST_LABEL
from tests.integration.test_engine_docker import FILES, hashes, healthy, qpatch

pytestmark = pytest.mark.docker


@pytest.fixture
def named(docker_client: docker.DockerClient, testbed_image: str) -> Iterator:
    """run(image, name): a container under a name a test chooses (to recreate it under
    the same one), removed afterwards with any image tagged qpatch-test-bake."""
    made: list[str] = []

    def run(image: str, name: str):  # noqa: ANN202
        made.append(name)
        return docker_client.containers.run(image, name=name, detach=True, labels={TEST_LABEL: "1"})

    yield run
    for name in made:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True, v=True)
    for image in docker_client.images.list(name="qpatch-test-bake"):
        for tag in image.tags:
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(tag, force=True)


def recreate(docker_client: docker.DockerClient, named, image: str, name: str):  # noqa: ANN001, ANN201
    docker_client.containers.get(name).remove(force=True, v=True)
    c = named(image, name)
    assert healthy(c)
    return c


def test_bake_then_recreate_from_it_is_born_patched_and_from_the_original_is_reported(
    docker_client: docker.DockerClient, testbed_image: str, named
) -> None:
    name = f"qpatch-test-{uuid.uuid4().hex[:10]}"
    tag = f"qpatch-test-bake:{uuid.uuid4().hex[:8]}"
    c = named(testbed_image, name)
    assert healthy(c)
    original = hashes(c)
    assert qpatch("bake", name, "--tag", tag).returncode == 2  # not patched yet
    assert qpatch("apply", name, "--patch", CPU_PATCH).returncode == 0
    patched = hashes(c)
    assert all(patched[p] != original[p] for p in FILES)

    r = qpatch("bake", name, "--tag", testbed_image)  # over the way back: refused
    assert r.returncode == 2 and "new tag" in r.stderr
    r = qpatch("bake", name, "--tag", tag, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "baked" and out["baked"]["files"] == patched
    assert f"image: {tag}" in r.stderr  # the compose change to make
    labels = docker_client.images.get(tag).labels
    born = baked.read(labels)
    assert born is not None and born.patch == "qwen-image-2512-cpu" and born.files == patched
    assert born.originals == original and born.source_image == testbed_image
    assert hashes(c) == patched  # bake wrote nothing into the container

    # recreated from the baked image: born patched
    c = recreate(docker_client, named, tag, name)
    assert hashes(c) == patched
    r = qpatch("verify", name)
    assert r.returncode == 0, r.stderr
    r = qpatch("apply", name, "--patch", CPU_PATCH, "--json")
    assert r.returncode == 0, r.stderr
    assert "already applied (baked)" in r.stderr
    assert json.loads(r.stdout)["status"] == "already-applied"

    # a sibling under another name holds no ledger of its own: its labels are the record
    sibling = named(tag, f"{name}-sibling")
    assert healthy(sibling)
    r = qpatch("verify", sibling.name, "--json")
    assert r.returncode == 0, r.stderr
    assert "baked into its image" in r.stderr
    r = qpatch("rollback", sibling.name)
    assert r.returncode == 2 and testbed_image in r.stderr  # recreate from the original
    assert hashes(sibling) == patched

    # recreated from the original image: the host's mirror says applied, the container not
    c = recreate(docker_client, named, testbed_image, name)
    assert hashes(c) == original
    r = qpatch("verify", name, "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["status"] == "recreated-unpatched"
    assert "recreated" in r.stderr and f"qpatch bake {name}" in r.stderr
    r = qpatch("status", name, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "recreated-unpatched"
    r = qpatch("apply", name, "--patch", CPU_PATCH)
    assert r.returncode == 0, r.stderr  # patched again, not refused
    assert hashes(c) == patched
    assert qpatch("rollback", name).returncode == 0
    assert hashes(c) == original
