"""Fixtures over real parts: the local Docker engine, the test-bed image (our ComfyUI
stand-in, built once per run and cached by content hash) and throwaway containers."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from qpatch.comfy_api import ComfyAPI
from qpatch.health import wait_healthy
from qpatch.targets.docker import DockerTarget, connect

TESTBED_PYTHON = "/root/venv/bin/python"
#: The bundled patch for the CPU test bed (its allocator edits are no-ops there, and left out):
#: tests of start-script edits use this one.
CPU_PATCH = os.path.join(os.path.dirname(__file__), "integration", "cpu-patch.yaml")
TEST_LABEL = "org.qpatch.test"


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    return connect()  # a clear error (not a skip) when no engine answers


@pytest.fixture(scope="session")
def testbed_image(docker_client: docker.DockerClient) -> str:
    """scripts/test builds the image once and passes its tag; alone, pytest builds it."""
    tag = os.environ.get("QPATCH_TESTBED_IMAGE")
    if tag:
        return tag
    from qpatch.testbed import ensure_image

    return ensure_image(client=docker_client)


StartContainer = Callable[..., Container]


@pytest.fixture
def start_container(
    docker_client: docker.DockerClient, testbed_image: str
) -> Iterator[StartContainer]:
    """Start throwaway containers of the test bed; each is removed even when the test fails.

    No ports are published: tests reach ComfyUI through exec, as qpatch does."""
    started: list[Container] = []

    def start(**kwargs: Any) -> Container:
        name = f"qpatch-test-{uuid.uuid4().hex[:10]}"
        c = docker_client.containers.run(
            kwargs.pop("image", testbed_image),
            name=name,
            detach=True,
            labels={TEST_LABEL: "1", **kwargs.pop("labels", {})},
            **kwargs,
        )
        started.append(c)
        return c

    yield start
    for c in started:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True, v=True)


@pytest.fixture
def comfy_container(start_container: StartContainer) -> Container:
    """A running, healthy test-bed ComfyUI."""
    c = start_container()
    wait_healthy(ComfyAPI(DockerTarget(c.name), TESTBED_PYTHON), timeout=120)
    return c


@pytest.fixture
def comfy_api(comfy_container: Container) -> ComfyAPI:
    return ComfyAPI(DockerTarget(comfy_container.name), TESTBED_PYTHON)
