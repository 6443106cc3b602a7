"""apply / verify / rollback / status as short sequences of steps (docs/design.md, "The engine").

The rule every sequence keeps: once the first byte is written, any failure restores every
file byte-exact and restarts (exit 1), and only a failure of that restore exits 4, with
the steps left to do by hand. The ledger's state, saved before each step that changes the
target, lets the next command finish a run that was killed half-way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qpatch import health, recreate, vram
from qpatch.comfy_api import ComfyAPI
from qpatch.discovery import Layout
from qpatch.errors import BadInput, CheckFailed, NotRestored, QpatchError, Restored
from qpatch.faults import fault_point
from qpatch.ledger import FileRecord, Ledger, LedgerStore, sha256
from qpatch.output import Console
from qpatch.plan import FileEdit, Plan, unified_diff
from qpatch.targets.base import Target

CLOSED = ("rolled-back", "recovered", "restored")


@dataclass
class Context:
    """What every step needs: where, what is there, and how to talk to the user."""

    target: Target
    layout: Layout
    store: LedgerStore
    out: Console
    timeout: float = 180.0
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> ComfyAPI:
        return ComfyAPI(self.target, self.layout.python, self.layout.port)


# --------------------------------------------------------------------------- shared steps


def restart_and_wait(ctx: Context, why: str) -> dict[str, Any]:
    ctx.out.step(f"restarting ComfyUI ({why})")
    ctx.target.restart()
    return health.wait_healthy_shown(ctx.api, ctx.out, timeout=ctx.timeout)


def measure(
    ctx: Context, prompt: dict[str, Any], what: str, seed: int | None = None
) -> vram.Measurement:
    ctx.out.step(f"measuring the workflow ({what})")
    show = ctx.out.progress("workflow running")
    try:
        m = vram.measure_workflow(ctx.api, prompt, progress=show, seed=seed)
    finally:
        ctx.out.end_progress()
    ctx.out.line(m.table())
    return m


def restore_files(ctx: Context, ledger: Ledger) -> list[str]:
    """Put every original back and check its hash; return the paths that were rewritten."""
    restored = []
    for rec in ledger.files:
        current = _current_sha(ctx.target, rec.path)
        if current == rec.sha256_before:
            continue
        original = ctx.store.backup(rec)
        ctx.target.write_file(rec.path, original, rec.stat)
        if _current_sha(ctx.target, rec.path) != rec.sha256_before:
            raise QpatchError(f"{rec.path}: restored bytes do not match the original's sha256")
        restored.append(rec.path)
        ctx.out.step(f"restored {rec.path}")
    return restored


def _current_sha(target: Target, path: str) -> str | None:
    return sha256(target.read_file(path)[0]) if target.exists(path) else None


def manual_steps(ctx: Context, ledger: Ledger) -> str:
    if ledger.recreate is not None:
        return recreate.manual_steps(ledger.recreate)
    lines = [f"Restore by hand in {ctx.target.description}:"]
    for rec in ledger.files:
        lines.append(
            f"  cp {ctx.store.path(rec.backup_name)} {rec.path}   "
            f"# host copy: {ctx.store.mirror / rec.backup_name}; sha256 {rec.sha256_before}"
        )
    lines.append("  then restart ComfyUI and run: qpatch status")
    return "\n".join(lines)


def undo(ctx: Context, ledger: Ledger, cause: Exception, *, restart: bool) -> QpatchError:
    """After a failure past the first write: originals back, server back, exit 1 (or 4)."""
    if ledger.recreate is not None:
        return recreate.undo(ctx, ledger, cause)
    ctx.out.warn(f"{cause}; restoring the originals")
    logs = ctx.target.logs(20)
    try:
        restore_files(ctx, ledger)
        ledger.state = "restored"
        ledger.event(f"apply failed and was undone: {cause}")
        ctx.store.save(ledger)
        if restart or not ctx.target.state().running:
            restart_and_wait(ctx, "with the originals")
    except Exception as e:
        return NotRestored(
            f"could not restore after: {cause}\n  restore failed: {e}\n"
            + (manual_steps(ctx, ledger))
        )
    tail = "\n".join("    " + line for line in logs.splitlines()[-20:])
    return Restored(
        f"apply failed: {cause}\n  every file is back as it was and ComfyUI answers.\n"
        f"  the server's last log lines before the restore:\n{tail}"
    )


def recover_interrupted(ctx: Context) -> None:
    """A ledger left open by a killed run: finish its undo before anything else."""
    ledger = ctx.store.load()
    if ledger is None or not ledger.is_open:
        return
    ctx.out.warn(
        f"an earlier qpatch run on this target was interrupted (ledger state {ledger.state!r}); "
        "restoring the originals first"
    )
    try:
        if ledger.recreate is not None:
            recreate.recover(ctx, ledger)
            ctx.out.ok("recovered: the original container is back as it was")
            return
        restore_files(ctx, ledger)
        was_restarting = ledger.state == "restarting"
        ledger.state = "recovered"
        ledger.event("interrupted run recovered: originals restored")
        ctx.store.save(ledger)
        if was_restarting or not ctx.target.state().running:
            restart_and_wait(ctx, "the interrupted run had restarted it")
    except QpatchError as e:
        raise NotRestored(
            f"recovering the interrupted run failed: {e}\n" + (manual_steps(ctx, ledger))
        ) from e
    ctx.out.ok("recovered: every file is back as it was before the interrupted run")


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
) -> int:
    out = ctx.out
    previous = ctx.store.load()
    findings = [str(f) for f in plan.report.findings]
    ctx.result.update(patch=plan.patch_name, files=file_rows(edits=plan.edits), findings=findings)
    if plan.container is not None:
        ctx.result["container"] = plan.container.to_json()
    for f in plan.report.findings:
        out.warn(str(f)) if f.severity == "warning" else out.line(f"  {f}")
    if not plan.changed:
        ctx.result["status"] = "already-applied"
        out.ok(f"{plan.patch_name} is already applied to {ctx.target.description}; nothing to do")
        return 0
    if previous is not None and previous.state == "applied":
        raise BadInput(
            f"{ctx.target.description} already carries patch {previous.patch!r} and this one "
            "would change it further",
            hint="roll it back first: qpatch rollback",
        )
    for change in plan.report.changes:
        out.line(f"  {change.kind}: {change}")
    if dry_run:
        for edit in plan.changed_edits:
            out.line(unified_diff(edit))
        if plan.container is not None and plan.recreates:
            out.line(plan.container.describe())
        ctx.result["status"] = "dry-run"
        out.ok("dry run: nothing was written")
        return 0

    plan.validate(ctx.target)
    baseline = measure(ctx, workflow, "before, unpatched") if workflow else None
    ledger = Ledger(
        target=ctx.target.ref,
        key=ctx.target.key,
        patch=plan.patch_name,
        state="writing",
        comfyui_root=ctx.layout.root,
        start_script=ctx.layout.start_script,
        env=plan.env,
        flags=plan.flags,
        findings=findings,
        history=previous.history if previous else [],
        measurements={"baseline": baseline.to_json()} if baseline else {},
    )
    if plan.recreates:
        recreate.prepare(ctx, plan, ledger)  # the original stays untouched from here on
    for edit in plan.changed_edits:
        rec = FileRecord(
            edit.path,
            sha256(edit.before),
            sha256(edit.after),
            edit.stat.mode,
            edit.stat.uid,
            edit.stat.gid,
        )
        ctx.store.store_backup(rec, edit.before)
        ctx.store.store_patched(rec, edit.after)
        ledger.files.append(rec)
    ctx.store.save(ledger)
    where = "" if ctx.store.host_only else f"{ctx.store.folder} and "
    out.step(f"backed up {len(ledger.files)} file(s) to {where}{ctx.store.mirror}")

    try:
        stats = _write_and_restart(ctx, plan, ledger, restart)
        if stats is not None:
            ctx.result["argv"] = stats["system"].get("argv")
            if baseline is not None:  # a workflow that fails patched is a failed apply
                after = measure(ctx, workflow, "after, patched", seed=baseline.seed)
                ledger.measurements["after"] = after.to_json()
                comparison = vram.compare(baseline, after)
                out.line(comparison.table())
                ctx.result["comparison"] = comparison.to_json()
        ledger.state = "applied"
        ledger.event("applied" + ("" if restart else " (not restarted)"))
        ctx.store.save(ledger)
    except (Exception, KeyboardInterrupt) as e:
        restarted = restart and ledger.state in ("restarting", "applied")
        raise undo(ctx, ledger, e, restart=restarted) from e
    ctx.result["status"] = "applied"
    ctx.result["measurements"] = ledger.measurements
    out.ok(f"applied {plan.patch_name} to {ctx.target.description}")
    if not restart:
        out.warn("not restarted (--no-restart): the change takes effect at the next start")
        if baseline is not None:
            out.warn("no measurement after the patch: the server still runs the old code")
    return 0


def _write_and_restart(
    ctx: Context, plan: Plan, ledger: Ledger, restart: bool
) -> dict[str, Any] | None:
    """Write every file and restart (or recreate the container); /system_stats once
    healthy, None when not restarted. The ledger's state follows each step."""
    if plan.recreates:
        return recreate.apply(ctx, plan, ledger)
    for edit in plan.changed_edits:
        ctx.target.write_file(edit.path, edit.after, edit.stat)
        ctx.out.step(f"wrote {edit.path}")
    fault_point("after-write")
    ledger.state = "written"
    ctx.store.save(ledger)
    if not restart:
        return None
    ledger.state = "restarting"
    ctx.store.save(ledger)
    return restart_and_wait(ctx, "to load the patch")


# --------------------------------------------------------------------------- verify


def verify(
    ctx: Context,
    *,
    workflow: dict[str, Any] | None = None,
    expect_saving: float | None = None,
    require_vram: bool = False,
) -> int:
    out = ctx.out
    ledger = ctx.store.load()
    checks: list[dict[str, Any]] = []
    ctx.result.update(checks=checks, patch=ledger.patch if ledger else None)

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})
        (out.ok if ok else out.warn)(f"{name}: {detail}")

    if ledger is None or ledger.state != "applied":
        state = ledger.state if ledger else "no ledger"
        check("patched", False, f"not applied ({state})")
        ctx.result["files"] = file_rows(ledger) if ledger else []
        ctx.result["status"] = "failed"
        return CheckFailed.exit_code
    check("patched", True, f"{ledger.patch}, {len(ledger.files)} file(s)")
    ctx.result["files"] = file_rows(ledger)
    ctx.result["findings"] = ledger.findings
    for rec in ledger.files:
        now = _current_sha(ctx.target, rec.path)
        if now == rec.sha256_after:
            check(f"unchanged {rec.path}", True, "sha256 as written")
        else:
            check(f"unchanged {rec.path}", False, "drift: changed since qpatch wrote it")
            out.line(ctx.store.drift_diff(rec))
    if ledger.recreate is not None:
        for name, ok, detail in recreate.checks(ctx, ledger):
            check(name, ok, detail)
    stats = ctx.api.system_stats()
    check("healthy", stats is not None, "answers /system_stats" if stats else "no answer")
    if workflow is not None and stats is not None:
        _verify_vram(ctx, ledger, workflow, expect_saving, require_vram, check)
    elif require_vram or expect_saving is not None:
        check("vram", False, "not measured: give --workflow to measure")
    else:
        out.line("VRAM: not measured (give --workflow FILE to run and measure one)")
    ok = all(c["ok"] for c in checks)
    ctx.result["status"] = "ok" if ok else "failed"
    return 0 if ok else CheckFailed.exit_code


def _verify_vram(
    ctx: Context,
    ledger: Ledger,
    workflow: dict[str, Any],
    expect_saving: float | None,
    require_vram: bool,
    check: Any,
) -> None:
    baseline = ledger.measurements.get("baseline")
    seed = baseline.get("seed") if baseline else None
    now = measure(ctx, workflow, "now", seed=seed)
    ctx.result["measurement"] = now.to_json()
    if baseline is None:
        problems = now.problems(require_vram=require_vram)
        if expect_saving is not None:
            problems.append("no baseline in the ledger to compare with (apply --measure)")
        check("vram", not problems, "; ".join(problems) or now.summary())
        return
    comparison = vram.compare(baseline, now)
    ctx.out.line(comparison.table())
    ctx.result["comparison"] = comparison.to_json()
    problems = comparison.problems(expect_saving=expect_saving, require_vram=require_vram)
    check("vram", not problems, "; ".join(problems) or comparison.verdict)


# --------------------------------------------------------------------------- rollback


def rollback(ctx: Context, *, restart: bool, force: bool) -> int:
    out = ctx.out
    ledger = ctx.store.load()
    if ledger is None or ledger.state in CLOSED:
        ctx.result.update(status="nothing-to-roll-back", files=[], patch=None)
        out.ok("nothing to roll back")
        return 0
    ctx.result.update(patch=ledger.patch, files=file_rows(ledger), findings=ledger.findings)
    ctx.store.host_only = ledger.recreate is not None  # the replacement goes: keep on the host
    drifted = []
    for rec in ledger.files:
        now = _current_sha(ctx.target, rec.path)
        if now not in (rec.sha256_after, rec.sha256_before):
            drifted.append(rec)
    if drifted and not force:
        names = ", ".join(r.path for r in drifted)
        raise CheckFailed(
            f"changed since qpatch wrote them: {names}; rolling back would lose those changes",
            hint="qpatch rollback --force keeps a copy of each changed file, then restores",
        )
    for rec in drifted:
        kept = ctx.store.keep_drifted(rec, ctx.target.read_file(rec.path)[0])
        out.warn(f"{rec.path} had changed since apply: kept a copy at {kept}")
    if ledger.recreate is not None:
        recreate.rollback(ctx, ledger, restart=restart)
        ctx.result["status"] = "rolled-back"
        out.ok(f"rolled back {ledger.patch}: the original container is back, as it was")
        return 0
    try:
        restore_files(ctx, ledger)
    except QpatchError as e:
        raise NotRestored(f"rollback failed: {e}\n" + manual_steps(ctx, ledger)) from e
    ledger.state = "rolled-back"
    ledger.event("rolled back" + (" (forced over drift)" if drifted else ""))
    ctx.store.save(ledger)
    if restart:
        try:
            restart_and_wait(ctx, "to unload the patch")
        except CheckFailed as e:
            raise CheckFailed(f"files restored, but ComfyUI is not healthy: {e}") from e
    ctx.result["status"] = "rolled-back"
    out.ok(f"rolled back {ledger.patch}: every file is byte-exact as before")
    return 0


# --------------------------------------------------------------------------- status


def status(ctx: Context) -> int:
    ledger = ctx.store.load()
    if ledger is None:
        ctx.result.update(status="never-patched", patch=None, files=[], findings=[])
        ctx.out.line(f"{ctx.target.description}: never patched by qpatch")
        return 0
    ctx.result.update(
        status=ledger.state,
        patch=ledger.patch,
        files=file_rows(ledger),
        findings=ledger.findings,
        history=ledger.history,
        ledger=ctx.store.folder,
    )
    ctx.out.line(f"{ctx.target.description}: {ledger.patch} — {ledger.state}")
    if ledger.recreate is not None and ledger.state not in CLOSED:
        ctx.result["recreate"] = asdict(ledger.recreate)
        ctx.out.line(recreate.describe(ledger.recreate))
    for rec in ledger.files:
        now = _current_sha(ctx.target, rec.path)
        word = {rec.sha256_after: "patched", rec.sha256_before: "original"}.get(now, "changed")
        ctx.out.line(f"  {rec.path}: {word}")
    for h in ledger.history[-10:]:
        ctx.out.line(f"  history: {_when(h['time'])} {h['event']}")
    return 0


def _when(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
