"""Measure what a workflow run really costs in GPU memory, host RAM and time, and say
plainly where each figure came from, when there is nothing to measure, and when a
difference is no more than the noise of the runs.

Split by what each part changes with: `sources` (NVML, ComfyUI's /system_stats, /proc and
the sampling thread: the hardware), `figures` (one run's figures and the rows of every
table), `series` (a cold run and N warm runs: min / median / max and the noise rule) and
`comparison` (two series side by side and the verdict) — those three are pure code —
and `protocol` (ComfyUI's workflow protocol: seed variation, POST /free, the run, a
killed run, the node's own report). `protocol` uses `sources` and `figures`; the pure
modules know nothing of it.

Callers import from here, so how the package is cut stays its own business.
"""

from __future__ import annotations

from qpatch.vram.comparison import TIME_BASIS, VERDICT_BASIS, Comparison, Row, compare
from qpatch.vram.figures import (
    COMPLETED,
    GIB,
    KILLED,
    NO_GPU,
    OUT_OF_MEMORY,
    ROWS,
    Figure,
    Measurement,
    fmt_value,
)
from qpatch.vram.protocol import (
    FREE_SETTLE_S,
    NODE_KEYS,
    SEED_INPUTS,
    free_cache,
    measure_workflow,
    new_seed,
    node_report,
    vary_seed,
)
from qpatch.vram.series import (
    COST,
    DEFAULT_RUNS,
    SAVING,
    WITHIN_NOISE,
    Series,
    Stats,
    as_series,
    judge,
    run_labels,
)
from qpatch.vram.sources import (
    NVML_INTERVAL_S,
    PID_REFRESH_S,
    STATS_INTERVAL_S,
    HostRss,
    NvmlSource,
    NvmlUnavailable,
    Peaks,
    PidCache,
    Sample,
    Sampler,
    SampleSource,
    SystemStatsSource,
    host_ram_unseen,
    sample_from_stats,
)

__all__ = [
    "COMPLETED",
    "COST",
    "DEFAULT_RUNS",
    "FREE_SETTLE_S",
    "GIB",
    "KILLED",
    "NODE_KEYS",
    "NO_GPU",
    "NVML_INTERVAL_S",
    "OUT_OF_MEMORY",
    "PID_REFRESH_S",
    "ROWS",
    "SAVING",
    "SEED_INPUTS",
    "STATS_INTERVAL_S",
    "TIME_BASIS",
    "VERDICT_BASIS",
    "WITHIN_NOISE",
    "Comparison",
    "Figure",
    "HostRss",
    "Measurement",
    "NvmlSource",
    "NvmlUnavailable",
    "Peaks",
    "PidCache",
    "Row",
    "Sample",
    "SampleSource",
    "Sampler",
    "Series",
    "Stats",
    "SystemStatsSource",
    "as_series",
    "compare",
    "fmt_value",
    "free_cache",
    "host_ram_unseen",
    "judge",
    "measure_workflow",
    "new_seed",
    "node_report",
    "run_labels",
    "sample_from_stats",
    "vary_seed",
]
