"""apply / verify / rollback / status on `service:NAME`, a Docker Swarm service.

apply: a canary container made like one running task (qpatch.swarm.canary) gets the
patch the single-target way (plan, back up, write, restart, health gate; undone on any
failure), is baked into an image (qpatch bake), and removed; then one `service update`
to that image with Swarm's rolling update and failure_action=rollback, followed until
the service converges. Swarm, not qpatch, replaces the tasks and undoes a failed update;
qpatch checks that every task it can reach serves the files it baked (or, after a
rollback, the originals). rollback: Swarm's own rollback to the previous spec, followed
the same way. The record of it all lives on this host (qpatch.swarm.record)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import docker

from qpatch.baked import ORIGINAL, PATCHED, states
from qpatch.comfy_api import ComfyAPI
from qpatch.discovery import discover
from qpatch.errors import BadInput, CheckFailed, NotRestored, QpatchError, Restored
from qpatch.health import wait_healthy
from qpatch.images import same_image, without_digest
from qpatch.ledger import remember_target
from qpatch.output import Console
from qpatch.paths import host_state_dir
from qpatch.result import Result
from qpatch.swarm import canary
from qpatch.swarm import record as records
from qpatch.swarm.record import ServiceRecord
from qpatch.swarm.service import (
    COMPLETED,
    PREFIX,
    ROLLBACK_COMPLETED,
    Converged,
    Rollout,
    SwarmService,
    health_probe,
)
from qpatch.targets.docker import DockerTarget
from qpatch.targets.engines import Engine, client, engine_id


def _open(ref: str, host: str | None) -> tuple[docker.DockerClient, SwarmService, str]:
    name = ref[len(PREFIX) :]
    if not name:
        raise BadInput("service: needs the service's name after it (service:NAME)")
    c = client(Engine(host))
    return c, SwarmService(c, name), engine_id(c)


def _shown(out: Console, said: list[str] | None = None) -> Any:
    """Progress lines; `said` collects Swarm's messages (why it rolled back is said while
    it starts to, and replaced by "rollback completed" at the end)."""

    def show(now: Converged) -> None:
        if said is not None and now.message and now.message not in said:
            said.append(now.message)
        images = ", ".join(f"{n} on {image}" for image, n in sorted(now.images.items()))
        state = now.state or "no update"
        out.step(f"{now.running}/{now.wanted} task(s) running ({images or 'none'}); Swarm: {state}")

    return show


def _serving(
    c: docker.DockerClient, svc: SwarmService, files: dict[str, str], originals: dict[str, str]
) -> dict[str, dict[str, str]]:
    """Each reachable running task's files: patched, original or changed."""
    return {
        container.name: states(DockerTarget(container.id, c), files, originals)
        for container in svc.task_containers()
    }


# --------------------------------------------------------------------------- apply


def apply(
    out: Console,
    result: Result,
    *,
    target: str,
    host: str | None = None,
    patch: str,
    dry_run: bool = False,
    timeout: float = 180.0,
    tag: str | None = None,
    update_parallelism: int = 1,
    update_delay: float = 2.0,
    update_monitor: float = 15.0,
    allow_harmful: bool = False,
    **others: Any,
) -> int:
    """`others`: apply's options for a container; those that mean nothing for a service
    (where it is restarted, how it is measured) are refused when given."""
    _refuse(others, _NOT_FOR_SERVICES, "")
    from qpatch.commands.apply import apply as apply_one
    from qpatch.commands.bake import bake as bake_one
    from qpatch.patchspec import load_patch

    c, svc, engine = _open(target, host)
    spec = load_patch(patch)
    result.target, result.patch = target, spec.name
    previous = records.load(svc.name, engine)
    current = without_digest(svc.image)
    if previous and previous.state == records.APPLIED and current == previous.image:
        if previous.patch != spec.name:
            raise BadInput(
                f"service {svc.name} carries {previous.patch!r}; roll it back first",
                hint=f"qpatch rollback service:{svc.name}",
            )
        result.status = "already-applied"
        out.ok(f"{spec.name} is already rolled out to service {svc.name} ({previous.image})")
        return 0
    tasks = svc.task_containers()
    if not tasks:
        raise BadInput(
            f"service {svc.name} has no running task on {Engine(host).label}",
            hint="run qpatch against a manager whose node runs one of its tasks (--host)",
        )
    image = tag or f"qpatch-baked/{svc.name}:{spec.name}-v{spec.version}-{int(time.time())}"
    if same_image(image, current):
        raise BadInput(f"--tag {image} is the image the service runs: give a new tag")
    out.step(f"canary {canary.name_for(svc.name)}: made like task {tasks[0].name}")
    mirror: Path | None = None
    try:
        canary_container = canary.clone(c, tasks[0], svc.name)
        # its host mirror goes with it: a later run's canary (same name) is another one
        opened = DockerTarget(canary_container.id, c, require_running=False, engine=Engine(host))
        mirror = host_state_dir() / opened.mirror_key
        layout = _wait_ready(opened, timeout)
        sub = result.step("canary")
        code = apply_one(
            out,
            sub,
            target=canary_container.name,
            host=host,
            patch=patch,
            dry_run=dry_run,
            no_restart=False,
            recreate=False,
            timeout=timeout,
            comfyui_root=None,
            start_script=None,
            restart_cmd=None,
            allow_harmful=allow_harmful,
        )
        if dry_run or code != 0:
            result.status = sub.status
            return code
        if sub.status == "already-applied":
            raise BadInput(
                f"the service's image {svc.image} already carries {spec.name}: nothing to roll out"
            )
        bake_one(
            out,
            result.step("bake"),
            target=canary_container.name,
            tag=image,
            host=host,
            advise=False,
        )
    except (QpatchError, KeyboardInterrupt):
        out.warn(f"the canary failed; service {svc.name} was not changed")
        raise
    finally:
        canary.remove(c, svc.name)
        if mirror is not None:
            shutil.rmtree(mirror, ignore_errors=True)
        remember_target(target, host)  # not the canary, which is gone
    made = result.steps["bake"].baked
    rec = ServiceRecord(
        service=svc.name,
        service_id=str(svc.service.id),
        host=host,
        patch=spec.name,
        patch_version=str(spec.version),
        state=records.UPDATING,
        previous_image=svc.image,
        image=image,
        image_id=made["image_id"],
        files=made["files"],
        originals=made["originals"],
        history=previous.history if previous else [],
    )
    rollout = Rollout(update_parallelism, update_delay, update_monitor)
    probe = (
        None
        if svc.has_healthcheck or _image_checks(tasks[0])
        else health_probe(layout.python, layout.port, start_period=max(120.0, timeout))
    )
    out.step(
        f"service update {svc.name} → {image} ({rollout.parallelism} at a time, "
        f"{rollout.delay:g} s apart, each watched {rollout.monitor:g} s; failure → rollback"
        + ("; with a /system_stats healthcheck" if probe else "")
        + ")"
    )
    since = svc.update_state()[2]
    svc.update_to(image, rollout, probe)
    # saved once Swarm took the new spec: a rollback to its previous spec is then ours
    records.save(rec, engine, event=f"canary healthy; baked {image}; service updated")
    wanted = svc.replicas or len(svc.running_tasks())  # a global service: every node's
    budget = wanted * (timeout + rollout.delay + rollout.monitor) + 60
    said: list[str] = []
    try:
        now = svc.follow(
            (COMPLETED, ROLLBACK_COMPLETED), since=since, timeout=budget, progress=_shown(out, said)
        )
    except KeyboardInterrupt:
        out.warn(
            f"Swarm goes on updating {svc.name} without qpatch watching: qpatch verify "
            f"service:{svc.name} checks it, qpatch rollback service:{svc.name} undoes it"
        )
        raise
    result.files = [{"path": p, "sha256_after": s} for p, s in rec.files.items()]
    if now.state == COMPLETED and set(now.images) == {image}:
        serving = _serving(c, svc, rec.files, rec.originals)
        result.tasks = serving
        wrong = {t: s for t, s in serving.items() if set(s.values()) != {PATCHED}}
        if wrong:
            raise NotRestored(
                f"service {svc.name} converged on {image}, but tasks do not serve the baked "
                f"files: {wrong}",
                hint=f"qpatch rollback service:{svc.name}",
            )
        records.save(rec, engine, records.APPLIED, f"rolled out to {now.running} task(s)")
        result.status = "applied"
        out.ok(
            f"applied {spec.name} to service {svc.name}: {now.running}/{now.wanted} task(s) run "
            f"{image}; {len(serving)} checked here serve the patched files"
        )
        return 0
    if now.state == ROLLBACK_COMPLETED:
        serving = _serving(c, svc, rec.files, rec.originals)
        why = "; ".join(m for m in said if "rollback completed" not in m) or "update failed"
        records.save(rec, engine, records.ROLLED_BACK_BY_SWARM, f"Swarm rolled back: {why}")
        result.status = "rolled-back-by-swarm"
        back = all(set(s.values()) == {ORIGINAL} for s in serving.values())
        if not back:
            raise NotRestored(
                f"Swarm rolled service {svc.name} back ({why}), but tasks do not serve the "
                f"original files: {serving}",
                hint=f"docker service ps {svc.name}; docker service inspect {svc.name}",
            )
        raise Restored(
            f"Swarm rolled service {svc.name} back ({why}): {now.running}/{now.wanted} "
            f"task(s) run {svc.image} again; every task checked serves the original files"
        )
    raise NotRestored(
        f"service {svc.name} did not converge (Swarm: {now.state or 'no update'}"
        f"{': ' + now.message if now.message else ''}; tasks: {now.images})",
        hint=f"qpatch rollback service:{svc.name} (Swarm's rollback to {rec.previous_image})",
    )


def _refuse(given: dict[str, Any], names: tuple[str, ...], why: str) -> None:
    """A container's options a service cannot honour: refused when set, never ignored."""
    set_ = [f"--{k.replace('_', '-')}" for k in names if given.get(k)]
    if set_:
        raise BadInput(f"{', '.join(set_)}: not for a service:NAME target{why}")


_NOT_FOR_SERVICES = (
    "no_restart",
    "recreate",
    "comfyui_root",
    "start_script",
    "restart_cmd",
    "measure",
    "workflow",
)


def _image_checks(task: Any) -> bool:
    return bool((task.attrs["Config"].get("Healthcheck") or {}).get("Test"))


def _wait_ready(target: DockerTarget, timeout: float) -> Any:
    """The canary's ComfyUI answering: its layout (python, port) once it does."""
    deadline = time.monotonic() + timeout
    while True:
        if target.state().running:
            try:
                layout = discover(target)
                api = ComfyAPI(target, layout.python, layout.port)
                wait_healthy(api, timeout=max(1.0, deadline - time.monotonic()))
                return layout
            except BadInput:
                pass  # not up enough to be discovered yet
        if time.monotonic() > deadline:
            raise CheckFailed(f"the canary {target.ref} did not come up within {timeout:.0f} s")
        time.sleep(0.5)


# --------------------------------------------------------------------------- rollback


def rollback(
    out: Console,
    result: Result,
    *,
    target: str,
    host: str | None = None,
    timeout: float = 180.0,
    **others: Any,
) -> int:
    _refuse(others, ("no_restart", "force", "restart_cmd"), " (Swarm replaces its tasks)")
    c, svc, engine = _open(target, host)
    rec = records.load(svc.name, engine)
    result.target = target
    if rec is None or rec.state not in (records.APPLIED, records.UPDATING):
        result.status = "nothing-to-roll-back"
        out.ok(f"nothing to roll back on service {svc.name}" + (f" ({rec.state})" if rec else ""))
        return 0
    result.patch = rec.patch
    previous_image = svc.previous_image
    if without_digest(svc.image) != rec.image or not same_image(previous_image, rec.previous_image):
        raise BadInput(
            f"service {svc.name} runs {svc.image} with {previous_image or 'no'} before it; qpatch "
            f"rolled it from {rec.previous_image} to {rec.image}: Swarm's rollback to its "
            "previous spec would not undo qpatch's change (someone updated it since)",
            hint=f"docker service update --image {rec.previous_image} {svc.name}, if that is "
            "what you want",
        )
    out.step(f"Swarm's rollback of {svc.name} to its previous spec ({rec.previous_image})")
    since = svc.update_state()[2]
    svc.rollback()
    wanted = svc.replicas or len(svc.running_tasks())
    now = svc.follow(
        (ROLLBACK_COMPLETED,), since=since, timeout=wanted * timeout + 60, progress=_shown(out)
    )
    if now.state != ROLLBACK_COMPLETED or len(now.images) != 1:
        raise NotRestored(
            f"service {svc.name}: Swarm's rollback did not converge ({now.state}: {now.message})",
            hint=f"docker service ps {svc.name}; docker service rollback {svc.name}",
        )
    serving = _serving(c, svc, rec.files, rec.originals)
    wrong = {t: s for t, s in serving.items() if set(s.values()) != {ORIGINAL}}
    if wrong:
        raise CheckFailed(f"rolled back, but tasks do not serve the original files: {wrong}")
    records.save(rec, engine, records.ROLLED_BACK, "Swarm rolled back to the previous spec")
    result.status = "rolled-back"
    out.ok(
        f"rolled back service {svc.name}: {now.running} task(s) on {next(iter(now.images))}, "
        f"{len(serving)} checked here serve the original files"
    )
    return 0


# --------------------------------------------------------------------------- verify


def verify(
    out: Console, result: Result, *, target: str, host: str | None = None, **others: Any
) -> int:
    """`others`: verify's options for a container. A service's workflow is not measured
    (measure one task's container), so a gate on it is refused rather than passed empty."""
    _refuse(others, ("workflow", "expect_saving", "require_vram", "baseline"), "")
    c, svc, engine = _open(target, host)
    rec = records.load(svc.name, engine)
    checks: list[dict[str, Any]] = []
    result.target, result.checks = target, checks

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})
        (out.ok if ok else out.warn)(f"{name}: {detail}")

    if rec is None or rec.state != records.APPLIED:
        check("patched", False, f"not rolled out ({rec.state if rec else 'never patched'})")
        result.status = "failed"
        return CheckFailed.exit_code
    result.patch = rec.patch
    check("patched", True, f"{rec.patch} (version {rec.patch_version}) → {rec.image}")
    running = without_digest(svc.image)
    check("service image", running == rec.image, running)
    now = svc.converged()
    settled = len(now.images) == 1 and now.running == now.wanted
    check("converged", settled, f"{now.running}/{now.wanted} task(s): {now.images}")
    for task, found in _serving(c, svc, rec.files, rec.originals).items():
        bad = {p: s for p, s in found.items() if s != PATCHED}
        check(f"task {task}", not bad, "serves the baked files" if not bad else str(bad))
    ok = all(x["ok"] for x in checks)
    result.status = "ok" if ok else "failed"
    return 0 if ok else CheckFailed.exit_code


# --------------------------------------------------------------------------- status


def status(out: Console, result: Result, *, target: str, host: str | None = None) -> int:
    _, svc, engine = _open(target, host)
    rec = records.load(svc.name, engine)
    now = svc.converged()
    result.target = target
    result.status = rec.state if rec else "never-patched"
    result.patch = rec.patch if rec else None
    result.history = rec.history if rec else []
    out.line(
        f"service {svc.name}: {rec.patch + ' — ' + rec.state if rec else 'never patched by qpatch'}"
    )
    out.line(f"  image {svc.image}; Swarm: {now.state or 'no update'} {now.message}".rstrip())
    out.line(f"  {now.running}/{now.wanted} task(s): {now.images}")
    for h in (rec.history if rec else [])[-10:]:
        out.line(
            f"  history: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h['time']))} "
            f"{h['event']}"
        )
    return 0
