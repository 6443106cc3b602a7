from __future__ import annotations

from qpatch import engine
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
