"""apply / verify / rollback / status on many targets: pick the members, run one child
per target (qpatch.fleet.runner), show the table, exit with the worst target's status."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from qpatch.fleet import members as fleet_members
from qpatch.fleet import runner
from qpatch.fleet.members import Member
from qpatch.fleet.view import LiveView, failure_details, summary_rows, table, worst
from qpatch.output import Console
from qpatch.result import Result


def fleet(
    out: Console,
    result: Result,
    *,
    command: str,
    refs: Sequence[str],
    every: bool,
    filters: Sequence[str],
    hosts: Sequence[str],
    forwarded: Sequence[str],
    parallel: int,
    max_failures: int | None,
) -> int:
    """`forwarded`: the command's own options as the user gave them, for every child."""
    stopped = command in ("rollback", "status")  # they work on stopped containers too
    members = fleet_members.select(refs, every=every, filters=filters, hosts=hosts, stopped=stopped)
    limit = f"; no new start after {max_failures} failed" if max_failures else ""
    at_once = min(parallel, len(members))
    out.step(f"{command} on {len(members)} target(s), {at_once} at a time{limit}")

    def argv_for(m: Member) -> list[str]:
        host = ["--host", m.host] if m.host else []
        return [sys.executable, "-m", "qpatch", command, m.ref, *host, *forwarded, "--json"]

    ran = runner.run(
        members, argv_for, parallel=parallel, max_failures=max_failures, view=LiveView()
    )
    outcomes = ran.outcomes
    out.line()
    out.line(table(summary_rows(outcomes)))
    for line in failure_details(outcomes):
        out.line(line)
    code = worst([o.exit_code for o in outcomes])
    interrupted = ran.interrupted
    if interrupted:
        code = worst([code, 130])
    result.targets = [_entry(o) for o in outcomes]
    done = sum(o.state == runner.DONE and o.exit_code == 0 for o in outcomes)
    result.status = "done" if code == 0 else ("interrupted" if interrupted else "failed")
    out.line(f"{done} of {len(outcomes)} target(s) succeeded; exit status {code} (the worst)")
    return code


def _entry(o: runner.Outcome) -> dict[str, object]:
    """One target's object: the child's own --json, with where and how long."""
    base: dict[str, object] = {"target": o.member.ref, "engine": o.member.engine}
    if o.state == runner.NOT_STARTED:
        return {**base, "status": "not-started", "reason": o.reason, "exit_code": None}
    child = o.result or {"status": "crashed", "log": o.log[-20:]}
    timing = {"exit_code": o.exit_code, "elapsed_s": round(o.elapsed or 0, 2)}
    return {**child, **base, **timing, "interrupted": o.interrupted}
