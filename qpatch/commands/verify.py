from __future__ import annotations

from qpatch import baselines, engine
from qpatch.output import Console
from qpatch.result import Result
from qpatch.session import session
from qpatch.workflow import load_workflow


def verify(
    out: Console,
    result: Result,
    *,
    target: str | None,
    host: str | None = None,
    workflow: str | None = None,
    expect_saving: float | None = None,
    require_vram: bool = False,
    baseline: str | None = None,
    runs: int | None = None,
) -> int:
    """`runs`: warm runs of the --workflow measurement (None: vram.DEFAULT_RUNS)."""
    prompt = load_workflow(workflow) if workflow else None
    saved = baselines.load(baseline) if baseline else None
    with session(out, result, target, require_running=False, host=host) as ctx:
        return engine.verify(
            ctx,
            workflow=prompt,
            expect_saving=expect_saving,
            require_vram=require_vram,
            baseline=saved,
            runs=runs,
        )
