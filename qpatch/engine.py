"""apply / verify / rollback / status as short sequences of steps (docs/design.md, "The engine").

The rule every sequence keeps: once the first byte is written, any failure restores every
file byte-exact and restarts (exit 1), and only a failure of that restore exits 4, with
the steps left to do by hand. The ledger's state, advanced before each step that changes
the target, lets the next command finish a run that was killed half-way.

How a patch lands (files in place, a swapped container) is the applier's business: the
engine picks one from the plan or the ledger and calls its verbs, never asking which it
holds."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from qpatch import appliers, baked
from qpatch.appliers import Applier
from qpatch.context import Context
from qpatch.errors import BadInput, CheckFailed, NotRestored, QpatchError
from qpatch.ledger import FileRecord, Ledger, State, sha256
from qpatch.plan import FileEdit, Plan
from qpatch.steps import current_sha, finish_restart
from qpatch.textdiff import unified_diff

if TYPE_CHECKING:  # measuring imports NVML's bindings: only the commands that measure pay
    from qpatch import vram


def measure(
    ctx: Context,
    prompt: dict[str, Any],
    what: str,
    seed: int | None = None,
    *,
    runs: int | None = None,
    allow_oom: bool = False,
    workflow: str | None = None,
) -> vram.Series:
    """A cold run, then `runs` warm ones (default `vram.DEFAULT_RUNS`), all with one seed;
    a line per run, then the series' table. A killed run ends the series, since the
    server is gone, and stays in it for the caller to refuse (`_refuse_killed`) or report."""
    from qpatch import vram

    seed = vram.new_seed() if seed is None else seed
    done: list[vram.Measurement] = []
    for label in vram.run_labels(vram.DEFAULT_RUNS if runs is None else runs):
        ctx.out.step(f"measuring the workflow ({what}, {label})")
        show = ctx.out.progress("workflow running")
        try:
            m = vram.measure_workflow(
                ctx.api,
                prompt,
                progress=show,
                seed=seed,
                allow_oom=allow_oom,
                allow_killed=True,
                workflow=workflow,
            )
        finally:
            ctx.out.end_progress()
        ctx.out.line(f"  {label}: {m.brief()}")
        done.append(m)
        if m.killed:
            break
    series = vram.Series.of(done)
    ctx.out.line(series.table())
    if series.out_of_memory:
        error = series.as_measurement().error or "no message"
        ctx.out.warn(f"the workflow ran out of memory ({error})".splitlines()[0])
    return series


def _refuse_killed(series: vram.Series, what: str) -> None:
    """A killed run measured nothing: the command fails (exit 3, or apply's restore)."""
    killed = series.killed_run
    if killed is not None:
        name, m = killed
        raise CheckFailed(f"the {name} ({what}) was killed: {m.error or 'the run was cut'}")


def recover_interrupted(ctx: Context) -> None:
    """A ledger left open by a killed run: finish its undo before anything else."""
    ledger = ctx.store.load()
    if ledger is None or not (ledger.is_open or ledger.restart_pending):
        return
    if baked.replaced(ctx.target, ctx.store, ledger):  # its backups are of another container
        if ledger.is_open:
            ctx.out.warn(
                f"a qpatch run on the container {ledger.instance and ledger.instance[:12]} that "
                f"{ctx.target.ref} replaces was interrupted (ledger {str(ledger.state)!r}); "
                "this one was created since and is left as it is"
            )
        return  # and a restart that was of the container this one replaces is not ours
    if not ledger.is_open:
        finish_restart(ctx, ledger)  # the files are as the closed ledger says: just the server
        return
    ctx.out.warn(
        f"an earlier qpatch run on this target was interrupted (ledger state "
        f"{str(ledger.state)!r}); restoring the originals first"
    )
    applier = appliers.for_ledger(ledger)
    try:
        done = applier.recover(ctx, ledger)
    except QpatchError as e:
        raise NotRestored(
            f"recovering the interrupted run failed: {e}\n" + applier.manual_steps(ctx, ledger)
        ) from e
    ctx.out.ok(done)


def file_rows(ledger: Ledger | None = None, edits: list[FileEdit] | None = None) -> list[dict]:
    if ledger is not None:
        return [
            {"path": r.path, "sha256_before": r.sha256_before, "sha256_after": r.sha256_after}
            for r in ledger.files
        ]
    return [
        {"path": e.path, "sha256_before": sha256(e.before), "sha256_after": sha256(e.after)}
        for e in edits or []
    ]


# --------------------------------------------------------------------------- apply


def apply(
    ctx: Context,
    plan: Plan,
    *,
    dry_run: bool,
    restart: bool,
    workflow: dict[str, Any] | None = None,
    runs: int | None = None,
) -> int:
    previous = ctx.store.load()
    stale = baked.recreated_unpatched(ctx.target, ctx.store, previous)
    if stale and previous is not None:  # its patch went with the old container: apply again
        ctx.out.warn(f"{stale}: applying it again")
        previous = replace(previous, state=State.RESTORED)
        previous.event("recreated from an image without the patch")
    applier = appliers.for_plan(plan)
    try:
        if not _show_plan(ctx, plan, previous):
            return 0
        if dry_run:
            return _dry_run(ctx, plan, applier)
        for note in plan.validate(ctx.target, ctx.store.folder):
            ctx.out.warn(note)
        baseline = None
        if workflow:  # an out-of-memory baseline is the case users come with: a result
            baseline = measure(ctx, workflow, "before, unpatched", runs=runs, allow_oom=True)
            _refuse_killed(baseline, "before, unpatched")
        ledger = _new_ledger(ctx, plan, previous, baseline)
        applier.prepare(ctx, plan, ledger)  # from here on the original stays untouched
        _back_up(ctx, plan, ledger)
    except (Exception, KeyboardInterrupt):
        ctx.result.files = _outcomes(ctx, plan)  # refused: nothing of ComfyUI's was written
        raise
    try:
        stats = applier.apply(ctx, plan, ledger, restart=restart)
        if stats is not None:
            ctx.result.argv = stats["system"].get("argv")
            if baseline is not None:  # a workflow that fails patched is a failed apply
                _measure_after(ctx, workflow, baseline, ledger, runs)
        event = "applied" + ("" if restart else " (not restarted)")
        ledger.restart_pending = False  # healthy after the restart, or none was made
        ctx.store.advance(ledger, State.APPLIED, event)
    except (Exception, KeyboardInterrupt) as e:
        restarted = restart and ledger.state in (State.RESTARTING, State.APPLIED)
        written = _written(ctx, plan)
        error = applier.undo(ctx, ledger, e, restarted=restarted)
        ctx.result.files = _outcomes(ctx, plan, written)
        raise error from e
    ctx.result.files = [{**row, "outcome": "written"} for row in file_rows(ledger)]
    ctx.result.status = "applied"
    ctx.result.measurements = ledger.measurements
    ctx.out.ok(f"applied {plan.patch_name} to {ctx.target.description}")
    if not restart:
        ctx.out.warn("not restarted (--no-restart): the change takes effect at the next start")
        if baseline is not None:
            ctx.out.warn("no measurement after the patch: the server still runs the old code")
    return 0


def _show_plan(ctx: Context, plan: Plan, previous: Ledger | None) -> bool:
    """Findings and changes, for people and --json; False when there is nothing to do."""
    out = ctx.out
    findings = [str(f) for f in plan.report.findings]
    ctx.result.patch = plan.patch_name
    ctx.result.files = file_rows(edits=plan.edits)
    ctx.result.findings = findings
    if plan.container is not None:
        ctx.result.container = plan.container.to_json()
    if plan.evidence is not None:
        ctx.result.evidence = plan.evidence.to_json()
        ctx.result.effects = [v.to_json() for v in plan.effects]
        out.line("  evidence about this server:")
        for fact in plan.evidence.facts():
            out.line(f"    {fact}")
    for f in plan.report.findings:
        out.warn(str(f)) if f.severity == "warning" else out.line(f"  {f}")
    if not plan.changed:
        ctx.result.status = "already-applied"
        out.ok(f"{plan.patch_name} is already applied to {ctx.target.description}; nothing to do")
        return False
    if previous is not None and previous.state == State.APPLIED:
        raise BadInput(
            f"{ctx.target.description} already carries patch {previous.patch!r} and this one "
            "would change it further",
            hint="roll it back first: qpatch rollback",
        )
    for change in plan.report.changes:
        out.line(f"  {change.kind}: {change}")
    return True


def _written(ctx: Context, plan: Plan) -> set[str]:
    """The files that carry the patch right now (best effort: a target that stopped
    answering says nothing)."""
    try:
        return {
            e.path for e in plan.changed_edits if current_sha(ctx.target, e.path) == sha256(e.after)
        }
    except Exception:  # noqa: BLE001 - only a report; the undo decides what happens
        return set()


def _outcomes(ctx: Context, plan: Plan, written: set[str] | None = None) -> list[dict[str, Any]]:
    """What happened to each file of a refused or failed apply, read back from the target:
    as before the command ("unchanged", or "restored" where it had been written), or not."""
    rows = []
    for edit in plan.edits:
        before = sha256(edit.before)
        try:
            now: str | None = current_sha(ctx.target, edit.path)
        except Exception:  # noqa: BLE001 - a report of what is known, never a new failure
            now = "unknown"
        row: dict[str, Any] = {"path": edit.path, "sha256_before": before}
        if now == before:
            row["outcome"] = "restored" if edit.path in (written or set()) else "unchanged"
        else:
            row.update(outcome="not restored", sha256_now=now)
        rows.append(row)
    return rows


def _dry_run(ctx: Context, plan: Plan, applier: Applier) -> int:
    for edit in plan.changed_edits:
        ctx.out.line(unified_diff(edit.before, edit.after, f"a{edit.path}", f"b{edit.path}"))
    extra = applier.dry_run(plan)
    if extra:
        ctx.out.line(extra)
    ctx.result.status = "dry-run"
    ctx.out.ok("dry run: nothing was written")
    return 0


def _new_ledger(
    ctx: Context, plan: Plan, previous: Ledger | None, baseline: vram.Series | None
) -> Ledger:
    return Ledger(
        target=ctx.target.ref,
        key=ctx.target.key,
        patch=plan.patch_name,
        patch_version=plan.patch_version,
        instance=ctx.target.instance,
        state=State.WRITING,
        comfyui_root=ctx.layout.root,
        start_script=ctx.layout.start_script,
        env=plan.env,
        flags=plan.flags,
        findings=[str(f) for f in plan.report.findings],
        history=previous.history if previous else [],
        measurements={"baseline": baseline.to_json()} if baseline else {},
    )


def _back_up(ctx: Context, plan: Plan, ledger: Ledger) -> None:
    for edit in plan.changed_edits:
        rec = FileRecord(
            edit.path,
            sha256(edit.before),
            sha256(edit.after),
            edit.stat.mode,
            edit.stat.uid,
            edit.stat.gid,
        )
        ctx.store.store_backup(ledger, rec, edit.before)
        ctx.store.store_patched(ledger, rec, edit.after)
        ledger.files.append(rec)
    ctx.store.save(ledger)
    where = f"{ctx.store.folder} and " if ledger.in_target else ""
    ctx.out.step(f"backed up {len(ledger.files)} file(s) to {where}{ctx.store.mirror}")


def _measure_after(
    ctx: Context,
    workflow: dict[str, Any],
    baseline: vram.Series,
    ledger: Ledger,
    runs: int | None,
) -> None:
    from qpatch import vram

    after = measure(ctx, workflow, "after, patched", seed=baseline.seed, runs=runs)
    ledger.measurements["after"] = after.to_json()
    _refuse_killed(after, "after, patched")
    comparison = vram.compare(baseline, after)
    ctx.out.line(comparison.table())
    ctx.result.comparison = comparison.to_json()


# --------------------------------------------------------------------------- verify


def verify(
    ctx: Context,
    *,
    workflow: dict[str, Any] | None = None,
    expect_saving: float | None = None,
    require_vram: bool = False,
    baseline: dict[str, Any] | None = None,
    runs: int | None = None,
) -> int:
    """`baseline`: a saved measurement (`measure --save`) to compare with instead of the
    one apply --measure left in the ledger; `runs`: warm runs of the measurement now."""
    out = ctx.out
    ledger = ctx.store.load()
    checks: list[dict[str, Any]] = []
    ctx.result.checks = checks
    ctx.result.patch = ledger.patch if ledger else None

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})
        (out.ok if ok else out.warn)(f"{name}: {detail}")

    stale = baked.recreated_unpatched(ctx.target, ctx.store, ledger)
    born = baked.read(ctx.target.labels())
    if stale:
        check("patched", False, f"recreated unpatched: {stale}")
        out.line(f"  {baked.recreated_hint(ctx.target.ref)}")
        ctx.result.files = file_rows(ledger)
        ctx.result.status = "recreated-unpatched"
        return CheckFailed.exit_code
    if (ledger is None or ledger.state.is_closed) and born is not None:
        return _verify_baked(ctx, born, check)
    if ledger is None or ledger.state != State.APPLIED:
        state = str(ledger.state) if ledger else "no ledger"
        check("patched", False, f"not applied ({state})")
        ctx.result.files = file_rows(ledger) if ledger else []
        ctx.result.status = "failed"
        return CheckFailed.exit_code
    check("patched", True, f"{ledger.patch}, {len(ledger.files)} file(s)")
    ctx.result.files = file_rows(ledger)
    ctx.result.findings = ledger.findings
    for rec in ledger.files:
        if current_sha(ctx.target, rec.path) == rec.sha256_after:
            check(f"unchanged {rec.path}", True, "sha256 as written")
        else:
            check(f"unchanged {rec.path}", False, "drift: changed since qpatch wrote it")
            out.line(ctx.store.drift_diff(rec))
    for name, ok, detail in appliers.for_ledger(ledger).checks(ctx, ledger):
        check(name, ok, detail)
    stats = ctx.api.system_stats()
    check("healthy", stats is not None, "answers /system_stats" if stats else "no answer")
    if workflow is not None and stats is not None:
        base = baseline if baseline is not None else ledger.measurements.get("baseline")
        _verify_vram(ctx, base, workflow, expect_saving, require_vram, check, runs)
    elif require_vram or expect_saving is not None:
        check("vram", False, "not measured: give --workflow to measure")
    else:
        out.line("VRAM: not measured (give --workflow FILE to run and measure one)")
    ok = all(c["ok"] for c in checks)
    ctx.result.status = "ok" if ok else "failed"
    return 0 if ok else CheckFailed.exit_code


def _verify_baked(ctx: Context, born: baked.Baked, check: Any) -> int:
    """A container born from a baked image holds no ledger: its image's labels say what
    was written, and the files must still be that."""
    check("patched", True, f"{born.patch} (version {born.patch_version}), baked into its image")
    ctx.result.patch = born.patch
    ctx.result.baked = born.to_json()
    states = baked.file_states(ctx.target, born)
    ctx.result.files = [
        {"path": p, "sha256_after": born.files[p], "now": st} for p, st in states.items()
    ]
    for path, state in states.items():
        detail = "sha256 as baked" if state == baked.PATCHED else f"{state}, not as baked"
        check(f"unchanged {path}", state == baked.PATCHED, detail)
    stats = ctx.api.system_stats()
    check("healthy", stats is not None, "answers /system_stats" if stats else "no answer")
    ok = all(c["ok"] for c in ctx.result.checks)
    ctx.result.status = "ok" if ok else "failed"
    return 0 if ok else CheckFailed.exit_code


def _verify_vram(
    ctx: Context,
    baseline: dict[str, Any] | None,
    workflow: dict[str, Any],
    expect_saving: float | None,
    require_vram: bool,
    check: Any,
    runs: int | None = None,
) -> None:
    from qpatch import vram

    seed = baseline.get("seed") if baseline else None
    now = measure(ctx, workflow, "now", seed=seed, runs=runs)
    ctx.result.measurement = now.to_json()
    killed = now.killed_run
    if killed is not None:
        check("vram", False, f"the {killed[0]} was killed: {killed[1].error}")
        return
    if baseline is None:
        problems = now.problems(require_vram=require_vram)
        if expect_saving is not None:
            problems.append(
                "no baseline to compare with (apply --measure, or measure --save NAME "
                "before patching and verify --baseline NAME)"
            )
        check("vram", not problems, "; ".join(problems) or now.summary())
        return
    comparison = vram.compare(baseline, now)
    ctx.out.line(comparison.table())
    ctx.result.comparison = comparison.to_json()
    problems = comparison.problems(expect_saving=expect_saving, require_vram=require_vram)
    check("vram", not problems, "; ".join(problems) or comparison.verdict)


# --------------------------------------------------------------------------- measure


def measure_runs(
    ctx: Context, workflow: dict[str, Any], *, runs: int | None, name: str | None = None
) -> vram.Series:
    """The workflow on the target as it is, nothing changed: a cold run and `runs` warm
    ones. Out of memory is a result here, as it is for apply's baseline; a killed run is
    reported in the JSON, then exit 3."""
    series = measure(ctx, workflow, "as it is", runs=runs, allow_oom=True, workflow=name)
    ctx.result.measurement = series.to_json()
    if series.killed:
        ctx.result.status = "killed"
        _refuse_killed(series, "as it is")
    ctx.result.status = "out-of-memory" if series.out_of_memory else "measured"
    return series


# --------------------------------------------------------------------------- rollback


def rollback(ctx: Context, *, restart: bool, force: bool) -> int:
    out = ctx.out
    ledger = ctx.store.load()
    stale = baked.recreated_unpatched(ctx.target, ctx.store, ledger)
    born = baked.read(ctx.target.labels())
    if stale:
        ctx.result.status = "nothing-to-roll-back"
        ctx.result.files = []
        ctx.result.patch = None
        out.ok(f"nothing to roll back: {stale}")
        return 0
    if (ledger is None or ledger.state.is_closed) and born is not None:
        states = baked.file_states(ctx.target, born)
        if baked.PATCHED in states.values():
            source = born.source_image or "the image it was baked from"
            raise BadInput(
                f"{ctx.target.description} was born patched: {born.patch} is baked into its "
                "image, and the container holds no ledger to undo",
                hint=f"recreate it from {source} (the image the patch was baked on)",
            )
    if ledger is None or ledger.state.is_closed:
        ctx.result.status = "nothing-to-roll-back"
        ctx.result.files = []
        ctx.result.patch = None
        out.ok("nothing to roll back")
        return 0
    ctx.result.patch = ledger.patch
    ctx.result.files = file_rows(ledger)
    ctx.result.findings = ledger.findings
    applier = appliers.for_ledger(ledger)
    now = {rec.path: current_sha(ctx.target, rec.path) for rec in ledger.files}
    drifted = [r for r in ledger.files if now[r.path] not in (r.sha256_after, r.sha256_before)]
    if drifted and not force:
        names = ", ".join(r.path for r in drifted)
        raise CheckFailed(
            f"changed since qpatch wrote them: {names}; rolling back would lose those changes",
            hint="qpatch rollback --force keeps a copy of each changed file, then restores",
        )
    for rec in drifted:
        if now[rec.path] is None:  # deleted since: nothing to keep, the original comes back
            out.warn(f"{rec.path} had been deleted since apply")
            continue
        data = ctx.target.read_file(rec.path)[0]
        kept = ctx.store.keep_drifted(rec, data, in_target=applier.target_survives_rollback)
        out.warn(f"{rec.path} had changed since apply: kept a copy at {kept}")
    done = applier.rollback(ctx, ledger, restart=restart, forced=bool(drifted))
    ctx.result.status = "rolled-back"
    out.ok(done)
    return 0


# --------------------------------------------------------------------------- status


def status(ctx: Context) -> int:
    ledger = ctx.store.load()
    stale = baked.recreated_unpatched(ctx.target, ctx.store, ledger)
    born = baked.read(ctx.target.labels())
    if stale:
        ctx.result.status = "recreated-unpatched"
        ctx.result.patch = ledger.patch if ledger else None
        ctx.result.files = file_rows(ledger) if ledger else []
        ctx.result.findings = []
        ctx.out.warn(stale)
        ctx.out.line(f"  {baked.recreated_hint(ctx.target.ref)}")
        return 0
    if (ledger is None or ledger.state.is_closed) and born is not None:
        states = baked.file_states(ctx.target, born)
        ctx.result.status = "baked"
        ctx.result.patch = born.patch
        ctx.result.baked = born.to_json()
        ctx.result.files = [{"path": p, "now": st} for p, st in states.items()]
        ctx.result.findings = []
        ctx.out.line(
            f"{ctx.target.description}: {born.patch} (version {born.patch_version}) — baked "
            f"into its image (from {born.baked_from or '?'}, on {born.source_image or '?'})"
        )
        for path, state in states.items():
            ctx.out.line(f"  {path}: {state}")
        return 0
    if ledger is None:
        ctx.result.status = "never-patched"
        ctx.result.patch = None
        ctx.result.files = []
        ctx.result.findings = []
        ctx.out.line(f"{ctx.target.description}: never patched by qpatch")
        return 0
    ctx.result.status = str(ledger.state)
    ctx.result.patch = ledger.patch
    ctx.result.files = file_rows(ledger)
    ctx.result.findings = ledger.findings
    ctx.result.history = ledger.history
    ctx.result.ledger = ctx.store.folder
    ctx.out.line(f"{ctx.target.description}: {ledger.patch} — {ledger.state}")
    if not ledger.state.is_closed:
        extra = appliers.for_ledger(ledger).describe(ctx, ledger)
        if extra:
            ctx.out.line(extra)
    for rec in ledger.files:
        now = current_sha(ctx.target, rec.path)
        word = {rec.sha256_after: "patched", rec.sha256_before: "original"}.get(now, "changed")
        ctx.out.line(f"  {rec.path}: {word}")
    for h in ledger.history[-10:]:
        ctx.out.line(f"  history: {_when(h['time'])} {h['event']}")
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
