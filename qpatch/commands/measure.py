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
    runs: int | None = None,
    save: str | None = None,
) -> int:
    """A cold run and `runs` warm ones (None: vram.DEFAULT_RUNS); `save` keeps the series."""
    prompt = load_workflow(workflow)
    if save is not None:
        baselines.load_name_check(save)  # a bad name fails before minutes of measuring
    with session(out, result, target) as ctx:
        series = engine.measure_runs(ctx, prompt, runs=runs, name=workflow)
        if save is not None:
            path = baselines.save(
                save, target=ctx.target.ref, workflow=workflow, measurement=series.to_json()
            )
            out.ok(
                f"saved as baseline {save!r} ({path}); compare with: "
                f"qpatch verify --workflow {workflow} --baseline {save}"
            )
    return 0
