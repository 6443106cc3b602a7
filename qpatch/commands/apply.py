from __future__ import annotations

from qpatch import baked, engine
from qpatch.context import Context
from qpatch.errors import BadInput
from qpatch.output import Console
from qpatch.patchspec import load_patch
from qpatch.plan import HarmfulEdits, make_plan
from qpatch.result import Result
from qpatch.session import session
from qpatch.workflow import load_workflow


def apply(
    out: Console,
    result: Result,
    *,
    target: str,
    host: str | None = None,
    patch: str,
    dry_run: bool,
    no_restart: bool,
    recreate: bool,
    timeout: float,
    comfyui_root: str | None,
    start_script: str | None,
    restart_cmd: str | None,
    measure: str | None = None,
    runs: int | None = None,
    workflow: str | None = None,
    allow_harmful: bool = False,
) -> int:
    """`runs`: warm runs of each --measure measurement (None: vram.DEFAULT_RUNS).
    `workflow` (else --measure's): read for evidence only, the weights' dtype."""
    if recreate and no_restart:
        raise BadInput("--recreate starts a new container: it cannot be combined with --no-restart")
    spec = load_patch(patch)
    prompt = load_workflow(measure) if measure else None
    evidence_from = load_workflow(workflow) if workflow else prompt
    result.patch = spec.name
    with session(
        out,
        result,
        target,
        host=host,
        comfyui_root=comfyui_root,
        start_script=start_script,
        restart_cmd=restart_cmd,
        timeout=timeout,
        exclusive=not dry_run,
    ) as ctx:
        out.step(f"{ctx.target.description}: {ctx.layout.describe()}")
        service = ctx.target.labels().get(SWARM_SERVICE)
        if service:
            raise BadInput(
                f"{ctx.target.description} is a task of Swarm service {service}: restarting it "
                "would end the task, and Swarm would replace it from the unpatched image",
                hint=f"qpatch apply service:{service}",
            )
        if _born_patched(ctx, spec.name, str(spec.version)):
            return 0
        if recreate and ctx.layout.start_script:
            out.line(f"  --recreate not needed: {ctx.layout.start_script} carries env and flags")
        try:
            plan = make_plan(
                ctx.target,
                ctx.layout,
                spec,
                recreate=recreate,
                workflow=evidence_from,
                allow_harmful=allow_harmful,
            )
        except HarmfulEdits as refused:  # --json shows what the refusal rests on
            result.evidence = refused.evidence.to_json()
            result.effects = [v.to_json() for v in refused.effects]
            raise
        return engine.apply(
            ctx, plan, dry_run=dry_run, restart=not no_restart, workflow=prompt, runs=runs
        )


#: Docker's label on a Swarm task's container
SWARM_SERVICE = "com.docker.swarm.service.name"


def _born_patched(ctx: Context, patch: str, version: str) -> bool:
    """A container born from an image baked with this patch (this version), its files as
    baked: done, with no ledger of its own to write (qpatch.baked)."""
    born = baked.read(ctx.target.labels())
    if born is None or born.patch != patch:
        return False
    if born.patch_version != version:
        ctx.out.warn(f"born from an image baked with {patch} version {born.patch_version}")
        return False
    states = baked.file_states(ctx.target, born)
    if any(state != baked.PATCHED for state in states.values()):
        changed = ", ".join(f"{p}: {s}" for p, s in states.items() if s != baked.PATCHED)
        ctx.out.warn(f"born from an image baked with {patch}, but not as baked ({changed})")
        return False
    ctx.result.status = "already-applied"
    ctx.result.baked = born.to_json()
    ctx.result.files = [{"path": p, "sha256_after": born.files[p]} for p in states]
    ctx.result.findings = []
    ctx.out.ok(
        f"already applied (baked): {patch} version {born.patch_version} is in the image "
        f"{ctx.target.description} was created from; nothing to do"
    )
    return True
