"""Which targets a fleet command runs on: TARGETs named on each --host, or `--all`
running containers there matching Docker's own filters. Resolved before anything starts,
so a typo in one name stops the whole command with nothing done."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import docker.errors

from qpatch.errors import BadInput
from qpatch.targets import LOCAL_PREFIX
from qpatch.targets.engines import Engine, client, engine_id

#: Containers qpatch itself makes beside a target (apply --recreate's swap, a service's
#: canary): never targets of their own.
HELPER_SUFFIXES = ("-qpatch-original", "-qpatch-new", "-qpatch-canary")
#: A Swarm task's container: restarting it ends the task (service:NAME is the way).
SWARM_TASK = "com.docker.swarm.task.id"


@dataclass(frozen=True)
class Member:
    """One target of a fleet command: its ref and the --host it is reached through."""

    ref: str
    host: str | None = None

    @property
    def engine(self) -> str:
        return Engine(self.host).label if not self.ref.startswith(LOCAL_PREFIX) else "this host"


def parse_filters(values: Sequence[str]) -> dict[str, list[str]]:
    """`KEY=VALUE` as `docker ps --filter` takes them; a key may repeat (any of), and the
    value keeps its own `=` (`label=com.example.role=comfyui`)."""
    filters: dict[str, list[str]] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise BadInput(
                f"--filter {raw!r}: expected KEY=VALUE, as docker ps takes "
                "(label=com.example.role=comfyui, ancestor=IMAGE, name=comfy)"
            )
        filters.setdefault(key, []).append(value)
    return filters


def select(
    refs: Sequence[str],
    *,
    every: bool,
    filters: Sequence[str],
    hosts: Sequence[str],
    stopped: bool = False,
) -> list[Member]:
    """The members, in a stable order (engine as given, then name). The same container
    reached by two roads (the socket and ssh://127.0.0.1) is one member. `stopped`: --all
    lists stopped containers too (rollback and status work on them). Swarm tasks are left
    out of --all: Swarm replaces a task whose container stops."""
    if filters and not every:
        raise BadInput("--filter narrows --all: add --all, or name the targets")
    if every and refs:
        raise BadInput("give TARGETs or --all, not both")
    services = [ref for ref in refs if ref.startswith("service:")]
    if services:
        raise BadInput(
            f"{services[0]}: a Swarm service is rolled out on its own (Swarm updates its tasks "
            "in parallel itself); give it as the only TARGET"
        )
    wanted = parse_filters(filters)
    members: list[Member] = []
    seen: set[tuple[str, str]] = set()
    found: dict[str, int] = {ref: 0 for ref in refs}
    local = [ref for ref in refs if ref.startswith(LOCAL_PREFIX)]
    if local and hosts:
        raise BadInput(f"{local[0]} is a folder on this host: --host does not apply to it")
    members += [Member(ref) for ref in local]
    containers = [ref for ref in refs if not ref.startswith(LOCAL_PREFIX)]
    if not every and not containers:
        return members
    for host in hosts or [None]:
        c = client(Engine(host))
        ident = engine_id(c)
        if every:
            listed = c.containers.list(
                all=stopped or "status" in wanted, filters=wanted, sparse=False, ignore_removed=True
            )
            named = sorted((x for x in listed if _eligible(x)), key=_name)
        else:
            named = []
            for ref in containers:
                try:
                    named.append(c.containers.get(ref))
                    found[ref] += 1
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as e:  # an ambiguous ID prefix
                    raise BadInput(f"container {ref!r}: {e.explanation or e}") from e
        for container in named:
            if (ident, container.id) in seen:
                continue
            seen.add((ident, container.id))
            members.append(Member(container.name, host))
    missing = [ref for ref in containers if not found[ref]]
    if missing:
        where = ", ".join(h or Engine().label for h in hosts or [None])
        raise BadInput(
            f"no such container on {where}: {', '.join(missing)}",
            hint="`docker ps` lists the running ones; nothing was done",
        )
    if not members:
        shown = " ".join(f"--filter {f}" for f in filters)
        raise BadInput(f"--all {shown}: no running container matches".replace("  ", " "))
    return members


def _eligible(container: object) -> bool:
    labels = getattr(container, "labels", {}) or {}
    return not _name(container).endswith(HELPER_SUFFIXES) and SWARM_TASK not in labels


def _name(container: object) -> str:
    return str(getattr(container, "name", ""))
