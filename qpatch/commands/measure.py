from __future__ import annotations

from qpatch import baselines, engine
from qpatch.output import Console
from qpatch.result import Result
from qpatch.session import session
from qpatch.workflow import load_workflow


def measure(
    out: Console,
    result: Result,
    *,
    target: str,
    workflow: str,
    runs: int,
    save: str | None,
) -> int:
    prompt = load_workflow(workflow)
    if save is not None:
        baselines.load_name_check(save)  # a bad name fails before minutes of measuring
    with session(out, result, target) as ctx:
        chosen = engine.measure_runs(ctx, prompt, runs=runs, name=workflow)
        if save is not None:
            runs_json = (result.measurements or {}).get("runs", [])
            path = baselines.save(
                save,
                target=ctx.target.ref,
                workflow=workflow,
                measurement=chosen.to_json(),
                runs=runs_json,
            )
            out.ok(
                f"saved as baseline {save!r} ({path}); compare with: "
                f"qpatch verify --workflow {workflow} --baseline {save}"
            )
    return 0
