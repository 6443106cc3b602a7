"""Measure what a workflow run really costs in GPU memory and time, and say plainly where
each figure came from and when there is nothing to measure.

Split by what each part changes with: `sources` (NVML, ComfyUI's /system_stats and the
sampling thread: the hardware), `figures` (the figures, their comparison and verdicts: pure
code) and `protocol` (ComfyUI's workflow protocol: seed variation, POST /free, the run, the
node's own report). `protocol` uses the other two; they know nothing of it or of each other.

Callers import from here, so how the package is cut stays its own business.
"""

from __future__ import annotations

from qpatch.vram.figures import (
    GIB,
    NO_GPU,
    TIME_BASIS,
    VERDICT_BASIS,
    Comparison,
    Figure,
    Measurement,
    Row,
    compare,
    fmt_value,
)
from qpatch.vram.protocol import (
    FREE_SETTLE_S,
    NODE_KEYS,
    SEED_INPUTS,
    free_cache,
    measure_workflow,
    node_report,
    vary_seed,
)
from qpatch.vram.sources import (
    NVML_INTERVAL_S,
    PID_REFRESH_S,
    STATS_INTERVAL_S,
    NvmlSource,
    NvmlUnavailable,
    Peaks,
    PidCache,
    Sample,
    Sampler,
    SampleSource,
    SystemStatsSource,
    sample_from_stats,
)

__all__ = [
    "FREE_SETTLE_S",
    "GIB",
    "NODE_KEYS",
    "NO_GPU",
    "NVML_INTERVAL_S",
    "PID_REFRESH_S",
    "SEED_INPUTS",
    "STATS_INTERVAL_S",
    "TIME_BASIS",
    "VERDICT_BASIS",
    "Comparison",
    "Figure",
    "Measurement",
    "NvmlSource",
    "NvmlUnavailable",
    "Peaks",
    "PidCache",
    "Row",
    "Sample",
    "SampleSource",
    "Sampler",
    "SystemStatsSource",
    "compare",
    "fmt_value",
    "free_cache",
    "measure_workflow",
    "node_report",
    "sample_from_stats",
    "vary_seed",
]
