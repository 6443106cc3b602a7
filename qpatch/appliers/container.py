"""`qpatch apply --recreate`: swap a container for a patched replacement, and back.

A container that launches `python main.py …` from its own command has no start script to
carry env and flags, and Docker cannot change a container's Env or Cmd. So the original is
committed to an image (its writable layer kept: nodes installed and models downloaded at
run time), a replacement is created from that image with the original's configuration
plus the new Env and command, the code edits are written into it before it first starts,
and the original is stopped and kept, untouched, under a backup name. A failure, or a
rollback, removes the replacement and gives the name back to the original: the very same
container, every byte as it was.

The configuration travels as `docker inspect` gives it (Config and HostConfig passed back
to the create call unchanged), not rebuilt field by field through create_host_config's
keywords: every setting (GPUs, devices, ulimits, shm size, capabilities, log driver…)
survives, including the ones nobody thought to list. Only what inspect shows elsewhere is
added back: the original's volumes (its anonymous ones too, so their data stays with the
container) and its network endpoints (aliases, static addresses).

Until the replacement carries the change the ledger lives on this host only
(Ledger.in_target), then inside the replacement too; the original never holds any of it.
This module and qpatch/targets/docker.py are the only ones that talk to the Docker SDK.
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import asdict
from typing import Any

import docker.errors
from docker.models.containers import Container

from qpatch.appliers.base import Check
from qpatch.context import Context
from qpatch.errors import BadInput, CheckFailed, NotRestored, QpatchError, Restored
from qpatch.faults import fault_point
from qpatch.ledger import Ledger, LedgerStore, Recreated, State
from qpatch.plan import Plan
from qpatch.steps import wait_healthy
from qpatch.targets.base import Target
from qpatch.targets.docker import DockerTarget

BACKUP_SUFFIX = "-qpatch-original"
NEW_SUFFIX = "-qpatch-new"  # the replacement's name until the swap
IMAGE_REPO = "qpatch-recreate"


def _docker(target: Target) -> DockerTarget:
    container = target.as_container()
    if container is None:
        raise BadInput(f"--recreate works on Docker containers only, not {target.description}")
    return container


def _get(client: docker.DockerClient, ref: str | None) -> Container | None:
    if not ref:
        return None
    try:
        return client.containers.get(ref)
    except docker.errors.NotFound:
        return None


# --------------------------------------------------------------------------- apply


def prepare(ctx: Context, plan: Plan, ledger: Ledger) -> None:
    """Before the first change: refuse what could not be swapped back, record the swap,
    and keep the ledger off the original."""
    target = _docker(ctx.target)
    c = target.container
    host = c.attrs["HostConfig"]
    if host.get("AutoRemove"):
        raise BadInput(
            f"{target.description} was started with --rm: stopping it would delete it, so "
            "the original could not be kept for rollback; nothing was changed",
            hint="run ComfyUI in a container without --rm, or give it a start script",
        )
    for name in (c.name + BACKUP_SUFFIX, c.name + NEW_SUFFIX):
        if _get(c.client, name) is not None:
            raise BadInput(
                f"a container named {name} exists (left by an earlier qpatch?); nothing "
                "was changed",
                hint=f"look at it, then remove it: docker rm {name}",
            )
    assert plan.container is not None
    ledger.recreate = Recreated(
        name=c.name,
        original_id=c.id,
        backup_name=c.name + BACKUP_SUFFIX,
        restart_policy=dict(host.get("RestartPolicy") or {}),
        image=f"{IMAGE_REPO}:{c.name[:100]}-{c.short_id}",
        entrypoint=plan.container.entrypoint,
        cmd=plan.container.cmd,
        env=plan.container.env,
    )


def apply(ctx: Context, plan: Plan, ledger: Ledger) -> dict[str, Any]:
    """Commit, create, write, swap, start, health-gate; return /system_stats. The engine
    calls undo() on any exception."""
    target = _docker(ctx.target)
    rec = _record(ledger)
    original = target.container
    repository, tag = rec.image.split(":", 1)
    ctx.out.step(f"committing {rec.name} to {rec.image} (keeps its writable layer)")
    rec.image_id = original.commit(repository=repository, tag=tag).id
    ctx.store.save(ledger)
    replacement = _create(original, rec)
    rec.replacement_id = replacement.id
    ctx.store.save(ledger)
    ctx.out.step(f"created the replacement {replacement.short_id} with the new Env and command")

    target.follow(replacement)  # created, not started: put_archive writes into it
    for edit in plan.changed_edits:
        target.write_file(edit.path, edit.after, edit.stat)
        ctx.out.step(f"wrote {edit.path} in the replacement")
    ctx.store.advance(ledger, State.WRITTEN)  # in the replacement from here: the ledger
    # folder came along with the commit

    old = DockerTarget(original.id, original.client)
    _leave_no_trace(old, ctx.store.folder)
    ctx.store.advance(ledger, State.RESTARTING)
    ctx.out.step(f"stopping the original {original.short_id}; kept as {rec.backup_name}")
    old.stop()
    if _restarts_by_itself(rec.restart_policy):
        original.update(restart_policy={"Name": "no"})  # a daemon restart must not wake it
    original.rename(rec.backup_name)
    replacement.rename(rec.name)
    fault_point("recreate-after-swap")
    ctx.out.step(f"starting the replacement as {rec.name}")
    replacement.start()
    stats = wait_healthy(ctx, "the replacement")
    ctx.store.copy_to_target(ledger)
    return stats


def _record(ledger: Ledger) -> Recreated:
    if ledger.recreate is None:
        raise QpatchError("the ledger records no recreated container")
    return ledger.recreate


def _restarts_by_itself(policy: dict[str, Any]) -> bool:
    return policy.get("Name") not in (None, "", "no")


def _leave_no_trace(original: DockerTarget, folder: str) -> None:
    """Take this run's lock (and the ledger folder, when this run made it) out of the
    original before it stops; the replacement carries them from here, through the commit."""
    original.exec(["rm", "-f", posixpath.join(folder, "lock")])
    if not original.exists(posixpath.join(folder, "ledger.json")):
        LedgerStore(original, folder).remove_empty()


def _create(original: Container, rec: Recreated) -> Container:
    """The replacement, from the commit, configured as the original but for Env and command."""
    attrs = original.attrs
    config = copy.deepcopy(attrs["Config"])
    config.update(Image=rec.image_id, Entrypoint=rec.entrypoint, Cmd=rec.cmd, Env=rec.env)
    config["HostConfig"] = _host_config(attrs)
    endpoints = _endpoints(attrs)
    names = list(endpoints)
    if names:  # this engine's API may take one network at create: the others join after
        config["NetworkingConfig"] = {"EndpointsConfig": {names[0]: endpoints[names[0]]}}
    api = original.client.api
    created = api.create_container_from_config(config, name=rec.name + NEW_SUFFIX)
    for net in names[1:]:
        api.connect_container_to_network(created["Id"], net, **_connect_args(endpoints[net]))
    return original.client.containers.get(created["Id"])


def _host_config(attrs: dict[str, Any]) -> dict[str, Any]:
    """The original's HostConfig, with its volumes named: an anonymous volume (an image's
    VOLUME, `-v /path`) would otherwise be a new, empty one in the replacement."""
    host = copy.deepcopy(attrs["HostConfig"])
    volumes = {m["Destination"]: m for m in attrs.get("Mounts") or [] if m.get("Type") == "volume"}
    for m in host.get("Mounts") or []:
        if m.get("Type") == "volume" and not m.get("Source") and m.get("Target") in volumes:
            m["Source"] = volumes[m["Target"]]["Name"]
    taken = {b.split(":")[1] for b in host.get("Binds") or [] if ":" in b}
    taken |= {m.get("Target") for m in host.get("Mounts") or []}
    extra = [
        f"{m['Name']}:{dest}" + ("" if m.get("RW", True) else ":ro")
        for dest, m in volumes.items()
        if dest not in taken
    ]
    if extra:
        host["Binds"] = [*(host.get("Binds") or []), *extra]
    return host


def _endpoints(attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Network name → endpoint settings, the one NetworkMode names first; {} for host,
    none and container: modes, which HostConfig carries by itself."""
    mode = attrs["HostConfig"].get("NetworkMode") or "default"
    if mode in ("host", "none") or mode.startswith("container:"):
        return {}
    primary = "bridge" if mode == "default" else mode
    networks = attrs["NetworkSettings"].get("Networks") or {}
    short_id = attrs["Id"][:12]  # Docker's own alias for the original; it gets the new one's
    return {
        name: {
            "Aliases": [a for a in networks[name].get("Aliases") or [] if a != short_id] or None,
            "IPAMConfig": networks[name].get("IPAMConfig"),
            "Links": networks[name].get("Links"),
            "DriverOpts": networks[name].get("DriverOpts"),
        }
        for name in sorted(networks, key=lambda n: n != primary)
    }


def _connect_args(endpoint: dict[str, Any]) -> dict[str, Any]:
    ipam = endpoint.get("IPAMConfig") or {}
    links = [tuple(link.split(":", 1)) for link in endpoint.get("Links") or []]
    return {
        "aliases": endpoint.get("Aliases"),
        "links": links or None,
        "ipv4_address": ipam.get("IPv4Address") or None,
        "ipv6_address": ipam.get("IPv6Address") or None,
        "link_local_ips": ipam.get("LinkLocalIPs") or None,
        "driver_opt": endpoint.get("DriverOpts"),
    }


# --------------------------------------------------------------------------- back


def swap_back(ctx: Context, ledger: Ledger, *, start: bool = True, graceful: bool = True) -> None:
    """The original gets its name, restart policy and (start) its running state back; the
    replacement and the commit go. Idempotent, and right from any point apply reached.
    `graceful` False: the replacement failed, so it is killed rather than asked to stop."""
    try:
        _swap_back(ctx, ledger, start=start, graceful=graceful)
    except docker.errors.DockerException as e:
        raise QpatchError(f"Docker refused: {getattr(e, 'explanation', None) or e}") from e


def _swap_back(ctx: Context, ledger: Ledger, *, start: bool, graceful: bool) -> None:
    target = _docker(ctx.target)
    rec = _record(ledger)
    client = target.container.client
    original = _get(client, rec.original_id)
    if original is None:
        raise QpatchError(f"the original container {rec.original_id[:12]} no longer exists")
    replacement = _get(client, rec.replacement_id) or _unrecorded(client, rec)
    if replacement is not None:
        ctx.out.step(f"stopping and removing the replacement {replacement.short_id}")
        if graceful:  # else remove(force=True) below kills it
            DockerTarget(replacement.id, client, require_running=False).stop()
        if replacement.name == rec.name:
            replacement.rename(rec.name + NEW_SUFFIX)  # frees the name at once
    if original.name != rec.name:
        original.rename(rec.name)
    if replacement is not None:
        replacement.remove(v=False, force=True)  # the volumes are the original's
    original.reload()
    if original.attrs["HostConfig"].get("RestartPolicy") != rec.restart_policy:
        original.update(restart_policy=rec.restart_policy)
    target.follow(original)
    if start and not target.is_running():
        ctx.out.step(f"starting the original {original.short_id} as {rec.name}")
        original.start()
    _remove_image(ctx, rec)


def _unrecorded(client: docker.DockerClient, rec: Recreated) -> Container | None:
    """A replacement created by a run killed before it could record the ID."""
    c = _get(client, rec.name + NEW_SUFFIX) if rec.image_id else None
    return c if c is not None and c.attrs.get("Image") == rec.image_id else None


def _remove_image(ctx: Context, rec: Recreated) -> None:
    try:
        target = _docker(ctx.target)
        target.container.client.images.remove(rec.image)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as e:
        ctx.out.warn(f"left the image {rec.image} ({e.explanation or e}); docker rmi removes it")


def undo(ctx: Context, ledger: Ledger, cause: BaseException) -> QpatchError:
    """After a failure past prepare(): the original back, healthy; exit 1 (or 4)."""
    rec = _record(ledger)
    ctx.out.warn(f"{cause}; putting the original container back")
    target = _docker(ctx.target)
    logs = target.logs(20) if target.container.id == rec.replacement_id else ""
    try:
        swap_back(ctx, ledger, graceful=False)
        wait_healthy(ctx, "the original")
        ctx.store.advance(
            ledger, State.RESTORED, f"apply --recreate failed and was undone: {cause}"
        )
    except Exception as e:
        return NotRestored(
            f"could not restore after: {cause}\n  restore failed: {e}\n" + manual_steps(rec)
        )
    tail = "\n".join("    " + line for line in logs.splitlines()[-20:])
    return Restored(
        f"apply failed: {cause}\n  the original container {rec.name} ({rec.original_id[:12]}) "
        "is back, untouched, and ComfyUI answers."
        + (f"\n  the replacement's last log lines:\n{tail}" if tail else "")
    )


def rollback(ctx: Context, ledger: Ledger, *, restart: bool) -> None:
    """The original back under its name, exactly as it was; the ledger stays on this host."""
    rec = _record(ledger)
    ctx.out.step(f"giving {rec.name} back to the original container {rec.original_id[:12]}")
    try:
        swap_back(ctx, ledger, start=restart)
    except QpatchError as e:
        raise NotRestored(f"rollback failed: {e}\n" + manual_steps(rec)) from e
    ctx.store.advance(ledger, State.ROLLED_BACK, "rolled back: the original container is back")
    if restart:
        try:
            wait_healthy(ctx, "the original")
        except CheckFailed as e:
            raise CheckFailed(f"the original container is back, but not healthy: {e}") from e
    else:
        ctx.out.warn(f"not started (--no-restart): docker start {rec.name}")


def recover(ctx: Context, ledger: Ledger) -> None:
    """Finish the undo of a recreate that was killed half-way."""
    swap_back(ctx, ledger, graceful=False)
    ctx.store.advance(
        ledger, State.RECOVERED, "interrupted recreate recovered: the original container is back"
    )
    wait_healthy(ctx, "the original")


def manual_steps(rec: Recreated) -> str:
    policy = rec.restart_policy.get("Name")
    lines = [
        "Put the original container back by hand:",
        f"  docker rm -f {rec.replacement_id or rec.name + NEW_SUFFIX}   # the replacement",
        f"  docker rename {rec.backup_name} {rec.name}   # unless {rec.name} is the original",
    ]
    if _restarts_by_itself(rec.restart_policy):
        lines.append(f"  docker update --restart {policy} {rec.name}")
    lines += [f"  docker start {rec.name}", f"  docker rmi {rec.image}", "  then: qpatch status"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- verify, status


def checks(ctx: Context, ledger: Ledger) -> list[tuple[str, bool, str]]:
    """(check, ok, detail) of the swap: this is the replacement, it carries the env and
    command qpatch gave it, and the original waits, stopped."""
    rec = _record(ledger)
    c = _docker(ctx.target).container
    c.reload()
    config = c.attrs["Config"]
    found = []
    is_ours = c.id == rec.replacement_id
    found.append(
        (
            "container",
            is_ours,
            "the replacement qpatch created"
            if is_ours
            else f"{c.short_id} is not the replacement qpatch created "
            f"({(rec.replacement_id or '?')[:12]}): recreated since?",
        )
    )
    env = config.get("Env") or []
    missing = [f"{k}={v}" for k, v in ledger.env.items() if f"{k}={v}" not in env]
    command_ok = (config.get("Entrypoint"), config.get("Cmd")) == (rec.entrypoint, rec.cmd)
    found.append(
        ("container env", not missing, "missing " + ", ".join(missing) if missing else "as set")
    )
    found.append(("container command", command_ok, "as set" if command_ok else "changed"))
    original = _get(c.client, rec.original_id)
    waiting = original is not None and not original.attrs["State"].get("Running")
    found.append(
        (
            "original kept",
            waiting,
            f"{rec.backup_name} ({rec.original_id[:12]}), stopped"
            if waiting
            else ("gone: rollback is not possible" if original is None else "running"),
        )
    )
    return found


def describe(rec: Recreated) -> str:
    return (
        f"  recreated: the original {rec.original_id[:12]} waits, stopped, as "
        f"{rec.backup_name}; the replacement runs {rec.image}"
    )


# --------------------------------------------------------------------------- the applier


class ContainerApplier:
    """`apply --recreate`: the functions above behind the appliers' protocol."""

    target_survives_rollback = False  # the replacement goes; copies stay on this host

    def prepare(self, ctx: Context, plan: Plan, ledger: Ledger) -> None:
        prepare(ctx, plan, ledger)

    def apply(self, ctx: Context, plan: Plan, ledger: Ledger, *, restart: bool) -> Any:
        return apply(ctx, plan, ledger)

    def undo(
        self, ctx: Context, ledger: Ledger, cause: BaseException, *, restarted: bool
    ) -> QpatchError:
        return undo(ctx, ledger, cause)

    def recover(self, ctx: Context, ledger: Ledger) -> str:
        recover(ctx, ledger)
        return "recovered: the original container is back as it was"

    def rollback(self, ctx: Context, ledger: Ledger, *, restart: bool, forced: bool) -> str:
        rollback(ctx, ledger, restart=restart)
        return f"rolled back {ledger.patch}: the original container is back, as it was"

    def manual_steps(self, ctx: Context, ledger: Ledger) -> str:
        return manual_steps(_record(ledger))

    def checks(self, ctx: Context, ledger: Ledger) -> list[Check]:
        return checks(ctx, ledger)

    def describe(self, ctx: Context, ledger: Ledger) -> str | None:
        ctx.result.recreate = asdict(_record(ledger))
        return describe(_record(ledger))

    def dry_run(self, plan: Plan) -> str | None:
        return plan.container.describe() if plan.container is not None else None
