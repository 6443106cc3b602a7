"""A Docker Swarm service, through the SDK: its running tasks and their containers, a
rolling update to another image with Swarm's own failure handling, Swarm's own rollback,
and following either until the service has converged.

qpatch orchestrates nothing itself here: Swarm replaces the tasks (parallelism, delay,
monitor window, failure_action=rollback) and qpatch watches and reports."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.services import Service
from docker.types import Healthcheck, RollbackConfig, UpdateConfig

from qpatch.errors import BadInput, QpatchError
from qpatch.images import without_digest

PREFIX = "service:"
NS = 1_000_000_000  # the API counts durations in nanoseconds

#: Swarm's UpdateStatus.State values (api/types/swarm/service.go)
UPDATING, COMPLETED, PAUSED = "updating", "completed", "paused"
ROLLBACK_STARTED, ROLLBACK_COMPLETED, ROLLBACK_PAUSED = (
    "rollback_started",
    "rollback_completed",
    "rollback_paused",
)

#: A constant program; the URL arrives as argv. Exit 0 once ComfyUI answers.
_PROBE = "import sys, urllib.request\nurllib.request.urlopen(sys.argv[1], timeout=5).read()\n"


@dataclass(frozen=True)
class Rollout:
    """How Swarm replaces the tasks: `parallelism` at a time, `delay` s between batches,
    each new task watched `monitor` s; a failure rolls the whole service back."""

    parallelism: int = 1
    delay: float = 2.0
    monitor: float = 15.0

    def update_config(self) -> UpdateConfig:
        return UpdateConfig(
            parallelism=self.parallelism,
            delay=int(self.delay * NS),
            failure_action="rollback",
            monitor=int(self.monitor * NS),
            max_failure_ratio=0.0,
            order="stop-first",  # one GPU per task: the old one must let go of it first
        )

    def rollback_config(self) -> RollbackConfig:
        return RollbackConfig(
            parallelism=self.parallelism,  # stop-first: all at once would be an outage
            failure_action="pause",
            monitor=int(self.monitor * NS),
            order="stop-first",
        )


@dataclass(frozen=True)
class Converged:
    """Where the service ended: Swarm's update state and its tasks' images."""

    state: str  # an UpdateStatus.State, or "" when Swarm kept none
    message: str
    started: str  # UpdateStatus.StartedAt: which update (or rollback) the state is of
    running: int
    wanted: int
    images: dict[str, int]  # image -> running tasks on it


def health_probe(python: str, port: int, start_period: float = 120.0) -> Healthcheck:
    """A healthcheck on /system_stats for a service that has none, so Swarm counts a
    task as up only once ComfyUI answers (its first model-free start takes seconds; a
    slow one is covered by the start period)."""
    url = f"http://127.0.0.1:{port}/system_stats"
    return Healthcheck(
        test=["CMD", python, "-c", _PROBE, url],
        interval=2 * NS,
        timeout=5 * NS,
        retries=3,
        start_period=int(start_period * NS),
    )


class SwarmService:
    def __init__(self, client: docker.DockerClient, name: str) -> None:
        self.client = client
        self.name = name
        try:
            self.service: Service = client.services.get(name)
        except docker.errors.NotFound as e:
            raise BadInput(
                f"no such Swarm service: {name}", hint="`docker service ls` lists them"
            ) from e
        except docker.errors.APIError as e:  # not a swarm manager
            raise BadInput(f"service {name}: {e.explanation or e}") from e

    # ------------------------------------------------------------------ reading

    def reload(self) -> dict[str, Any]:
        self.service.reload()
        return self.service.attrs

    @property
    def spec(self) -> dict[str, Any]:
        return self.service.attrs["Spec"]

    @property
    def image(self) -> str:
        return str(self.spec["TaskTemplate"]["ContainerSpec"]["Image"])

    @property
    def has_healthcheck(self) -> bool:
        return bool(self.spec["TaskTemplate"]["ContainerSpec"].get("Healthcheck"))

    @property
    def replicas(self) -> int | None:
        mode = self.spec.get("Mode", {})
        return mode.get("Replicated", {}).get("Replicas")

    def running_tasks(self) -> list[dict[str, Any]]:
        tasks = self.service.tasks(filters={"desired-state": "running"})
        return [t for t in tasks if t.get("Status", {}).get("State") == "running"]

    def task_containers(self) -> list[Container]:
        """The running tasks' containers this engine holds (a multi-node swarm's other
        nodes' tasks are not reachable through it)."""
        out = []
        for task in self.running_tasks():
            cid = task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
            if not cid:
                continue
            try:
                out.append(self.client.containers.get(cid))
            except docker.errors.NotFound:
                continue  # on another node, or gone meanwhile
        return out

    def update_state(self) -> tuple[str, str, str]:
        status = self.reload().get("UpdateStatus") or {}
        return (
            str(status.get("State", "")),
            str(status.get("Message", "")),
            str(status.get("StartedAt", "")),
        )

    # ------------------------------------------------------------------ changing

    @property
    def previous_image(self) -> str | None:
        previous = self.service.attrs.get("PreviousSpec") or {}
        return previous.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image")

    def update_to(self, image: str, rollout: Rollout, healthcheck: Healthcheck | None) -> None:
        """One `service update`: the new image (and a healthcheck where it had none), with
        Swarm's rolling update and automatic rollback. The rest of the spec is kept."""
        extra: dict[str, Any] = {"healthcheck": healthcheck} if healthcheck else {}
        self.reload()  # the spec's version: an update against an old one is refused
        try:
            self.service.update(
                image=image,
                update_config=rollout.update_config(),
                rollback_config=rollout.rollback_config(),
                fetch_current_spec=True,
                **extra,
            )
        except docker.errors.APIError as e:
            raise QpatchError(f"service update {self.name}: {e.explanation or e}") from e

    def rollback(self) -> None:
        """Swarm's own rollback to the previous spec (`docker service rollback`: the
        update endpoint with rollback=previous; the SDK has no call for it)."""
        api = self.client.api
        attrs = self.reload()
        if not attrs.get("PreviousSpec"):
            raise BadInput(f"service {self.name} has no previous spec to roll back to")
        url = api._url("/services/{0}/update", attrs["ID"])
        params = {"version": attrs["Version"]["Index"], "rollback": "previous"}
        try:
            api._raise_for_status(api._post_json(url, data=attrs["Spec"], params=params))
        except docker.errors.APIError as e:
            raise QpatchError(f"service rollback {self.name}: {e.explanation or e}") from e

    def follow(
        self,
        done: tuple[str, ...],
        *,
        since: str,
        timeout: float,
        progress: Callable[[Converged], None],
        poll: float = 1.0,
    ) -> Converged:
        """Poll until Swarm's state of the update begun after `since` (the StartedAt read
        before it: an earlier update's "completed" says nothing of this one) is one of
        `done` and every wanted task runs one image, or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        last: Converged | None = None
        while True:
            now = self.converged()
            if now.started == since:  # Swarm has not taken the change up yet
                now = Converged(UPDATING, "", since, now.running, now.wanted, now.images)
            if now != last:
                progress(now)
                last = now
            settled = now.state in done and len(now.images) == 1 and now.running == now.wanted
            if settled or now.state in (PAUSED, ROLLBACK_PAUSED) or time.monotonic() > deadline:
                return now
            time.sleep(poll)

    def converged(self) -> Converged:
        state, message, started = self.update_state()
        images: dict[str, int] = {}
        tasks = self.running_tasks()
        for task in tasks:
            image = without_digest(str(task["Spec"]["ContainerSpec"]["Image"]))
            images[image] = images.get(image, 0) + 1
        wanted = self.replicas if self.replicas is not None else len(tasks)
        return Converged(state, message, started, len(tasks), wanted, images)
