"""The canary of a service rollout: a standalone container made like one of the service's
running tasks (its image, command, environment, user and volumes), outside Swarm.

Why not the task's own container: stopping a task's container ends the task, and Swarm
starts a replacement from the old image at once (the restarted container then runs
outside Swarm beside it). A restart is how a patch is health-gated, so the patch is
applied, restarted and gated on this copy instead; the tasks are left to Swarm's update."""

from __future__ import annotations

import contextlib
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount

from qpatch.errors import BadInput

SUFFIX = "-qpatch-canary"
LABEL = "io.qpatch.canary-of"


def name_for(service: str) -> str:
    return f"{service}{SUFFIX}"


def clone(client: docker.DockerClient, task: Container, service: str) -> Container:
    """Create and start the canary from `task`'s configuration; refuse a leftover one
    (an earlier run killed before it removed its canary is the user's to look at)."""
    name = name_for(service)
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(name)
        raise BadInput(
            f"a canary container {name} is left from an earlier run",
            hint=f"docker rm -f {name}, then run the same command again",
        )
    cfg = task.attrs["Config"]
    labels = {k: v for k, v in (cfg.get("Labels") or {}).items() if not k.startswith("com.docker.")}
    return client.containers.run(
        cfg["Image"],
        command=cfg.get("Cmd"),
        entrypoint=cfg.get("Entrypoint"),
        environment=cfg.get("Env") or [],
        working_dir=cfg.get("WorkingDir") or None,
        user=cfg.get("User") or "",
        labels={**labels, LABEL: service},
        mounts=_mounts(task),
        name=name,
        detach=True,
    )


def _mounts(task: Container) -> list[Mount]:
    """The task's named volumes and binds (its models, for the evidence), read-only: the
    live tasks share them, so a patched file there would change them all at once, and an
    image built from the canary would not hold it. A patch that must write there is
    refused by the plan's own check ("not writable"). Anonymous volumes are the image's
    own and are made afresh."""
    mounts = []
    for m in task.attrs.get("Mounts") or []:
        kind: Any = m.get("Type")
        if kind == "volume" and m.get("Name") and len(m["Name"]) != 64:
            mounts.append(Mount(m["Destination"], m["Name"], "volume", read_only=True))
        elif kind == "bind":
            mounts.append(Mount(m["Destination"], m["Source"], "bind", read_only=True))
    return mounts


def remove(client: docker.DockerClient, service: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(name_for(service)).remove(force=True, v=True)
