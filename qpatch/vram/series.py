"""A measurement as a series of runs — one cold run, reported apart, then N warm runs whose
min / median / max stand for the workflow — and the rule that says when the difference
between two series is more than their noise.

Why several runs: one run's peak moves with things no patch changes (what torch's
allocator happens to keep cached, other tenants of the device, /system_stats read every
250 ms, wall time polled every 0.2 s), so one run against one run can call noise a saving.
The first run after a start also pays once-only costs (imports, the CUDA context, weights
into the page cache); it is kept apart and never counted. Every run of a series uses one
seed, after POST /free, so each is the same work from the same state.

**The rule** (`judge`): a row's difference is the median after minus the median before.
It is a *saving* (lower) or a *cost* (higher) only when it is larger than the noise;
otherwise it is *within noise*. The noise is the larger of the two series' spreads
(max − min over their counted runs), and never less than the tolerance, 5% of the median
before. The larger spread, not the range of both series pooled: a pooled range contains
the very difference being judged. The floor, because the two series run in different
server processes (apply and verify restart in between), whose variation the spread
within one process cannot see, and because three runs that agree to the byte have no
spread at all. With one counted run on either side no spread is known: the tolerance
alone is the bar, as before series existed, and the table says "spread unknown (1 run)".
`--expect-saving PCT` counts the same way: a saving within the noise counts as none.

Pure code, like `figures`: a series stored in the ledger or a saved baseline reads back
as one, and the single-run JSON an older qpatch stored reads back as a series of one.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from qpatch.vram.figures import (
    COMPLETED,
    KILLED,
    OUT_OF_MEMORY,
    OUTCOME_WORDS,
    ROWS,
    Figure,
    Measurement,
    fmt_number,
    fmt_value,
    mem_word,
    render,
)

#: Warm runs per measurement unless --runs says otherwise (the cold run comes on top).
DEFAULT_RUNS = 3

#: A row's verdict words (`judge`).
SAVING = "saving"
COST = "cost"
WITHIN_NOISE = "within noise"
NOT_COMPARABLE = "n/a"

RULE = (
    "saving / cost: the medians differ by more than the noise, the larger spread (max − min) "
    "and at least ±{tol}%; else within noise"
)


def rule_words(tolerance: float, spread_known: bool) -> str:
    """The rule in a line, for the table's footer and the JSON."""
    tol = f"{tolerance * 100:.0f}"
    if spread_known:
        return RULE.format(tol=tol)
    return f"spread unknown (1 run): saving / cost: the medians differ by more than ±{tol}%"


def run_labels(runs: int) -> list[str]:
    """The names of a series' runs, in the order they are made."""
    return ["cold run", *(f"warm run {i} of {runs}" for i in range(1, runs + 1))]


# -- one figure over the runs -----------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """One figure of a series over its counted runs (values from one source only)."""

    values: tuple[float, ...]
    unit: str
    source: str | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def spread(self) -> float | None:
        """max − min; None with one value, where no spread is known (not zero)."""
        return self.max - self.min if self.n >= 2 else None

    def figure(self) -> Figure:
        """The median, as the Figure that stands for the series."""
        return Figure(self.median, self.unit, self.source)

    def to_json(self) -> dict[str, Any]:
        return {
            "min": self.min,
            "median": self.median,
            "max": self.max,
            "spread": self.spread,
            "n": self.n,
            "unit": self.unit,
            "source": self.source,
            "values": list(self.values),
        }


def noise(before: Stats | None, after: Stats | None) -> float | None:
    """The larger of the two spreads; None when either side has no spread (one run)."""
    if before is None or after is None or before.spread is None or after.spread is None:
        return None
    return max(before.spread, after.spread)


def threshold(before: float, spread: float | None, tolerance: float) -> float:
    """The noise: how far the medians must differ to count (the module's rule)."""
    floor = abs(before) * tolerance
    return floor if spread is None else max(spread, floor)


def judge(before: float, after: float, spread: float | None, tolerance: float) -> str:
    """SAVING, COST or WITHIN_NOISE for one row: the module's rule."""
    difference = after - before
    # 10.5 / 10.0 is 1.0500000000000003: a hair of slack keeps exactly ±5% within
    if abs(difference) <= threshold(before, spread, tolerance) * (1 + 1e-9):
        return WITHIN_NOISE
    return SAVING if difference < 0 else COST


# -- the series -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """The runs of one measurement: the cold one (None where it was not made: a single
    stored run) and the warm ones, in the order made."""

    warm: tuple[Measurement, ...]
    cold: Measurement | None = None

    @classmethod
    def of(cls, runs: Sequence[Measurement]) -> Series:
        """Runs in the order they were made: the first is the cold one."""
        if not runs:
            raise ValueError("a series needs at least one run")
        return cls(tuple(runs[1:]), runs[0])

    @classmethod
    def single(cls, m: Measurement) -> Series:
        """One run on its own (what an older qpatch stored): counted, spread unknown."""
        return cls((m,), None)

    # -- which runs count ---------------------------------------------------------------

    @property
    def runs(self) -> list[tuple[str, Measurement]]:
        """Every run with its name: "cold run", then "warm run 1" …"""
        named = [("cold run", self.cold)] if self.cold is not None else []
        return named + [(f"warm run {i}", m) for i, m in enumerate(self.warm, start=1)]

    @property
    def outcome(self) -> str:
        """KILLED if any run was killed (nothing after it could be measured); else
        OUT_OF_MEMORY if any warm run ran out (a workflow that fits one time in three
        does not fit); else COMPLETED. The cold run decides only when it is all there is."""
        if any(m.killed for _, m in self.runs):
            return KILLED
        if self.warm:
            return OUT_OF_MEMORY if any(m.out_of_memory for m in self.warm) else COMPLETED
        return self.cold.outcome if self.cold is not None else COMPLETED

    @property
    def out_of_memory(self) -> bool:
        return self.outcome == OUT_OF_MEMORY

    @property
    def killed(self) -> bool:
        return self.outcome == KILLED

    @property
    def killed_run(self) -> tuple[str, Measurement] | None:
        return next(((name, m) for name, m in self.runs if m.killed), None)

    @property
    def counted(self) -> list[Measurement]:
        """The runs the statistics are over: the warm runs of the series' own outcome (an
        out-of-memory series counts the peaks its runs died at), never a killed one. Only
        a series of a cold run alone counts that run."""
        pool = [m for m in self.warm if not m.killed]
        if self.outcome != KILLED:
            pool = [m for m in pool if m.outcome == self.outcome]
        if not self.warm and self.cold is not None and not self.cold.killed:
            pool = [self.cold]
        return pool

    @property
    def spread_known(self) -> bool:
        return len(self.counted) >= 2

    @property
    def representative(self) -> Measurement:
        """The counted run with the median peak (the first where no peak was measured):
        its seed, device, node report and notes stand for the series."""
        counted = self.counted
        peaks = sorted((m for m in counted if m.peak.value is not None), key=_peak)
        if peaks:
            return peaks[len(peaks) // 2]
        if counted:
            return counted[0]
        killed = self.killed_run
        if killed is not None:
            return killed[1]
        return self.warm[0] if self.warm else self._cold()

    def _cold(self) -> Measurement:
        assert self.cold is not None, "a series has at least one run"
        return self.cold

    @property
    def seed(self) -> int | None:
        return self.representative.seed

    # -- figures ----------------------------------------------------------------------

    def stats(self, key: str) -> Stats | None:
        """One row's figure over the counted runs, from the representative's source (a run
        that read another source is left out: figures of two sources never mix)."""
        spec = next(s for s in ROWS if s.key == key)
        figs = [spec.figure(m) for m in self.counted]
        source = spec.figure(self.representative).source
        if source is None:
            source = next((f.source for f in figs if f.value is not None), None)
        values = tuple(float(f.value) for f in figs if f.value is not None and f.source == source)
        if not values:
            return None
        return Stats(values, spec.figure(self.representative).unit, source)

    def as_measurement(self) -> Measurement:
        """The series as one Measurement: each row's figure its median, the rest the
        representative run's, the outcome the series'. What single-run readers get."""
        rep = self.representative
        medians = {}
        for spec in ROWS:
            stats = self.stats(spec.key)
            medians[spec.key] = stats.figure() if stats is not None else spec.figure(rep)
        notes: list[str] = []
        for _, m in self.runs:
            notes += [n for n in m.notes if n not in notes]
        return replace(rep, **medians, outcome=self.outcome, error=self._error(), notes=notes)

    def _error(self) -> str | None:
        killed = self.killed_run
        if killed is not None:
            return f"{killed[0]}: {killed[1].error or 'the run was cut'}"
        if self.out_of_memory:
            return next((m.error for m in self.counted if m.error), None)
        return self.representative.error

    # -- words --------------------------------------------------------------------------

    def outcome_words(self) -> str:
        """Each run's outcome, the cold one apart: "cold completed; warm: completed ×3"."""
        warm = [OUTCOME_WORDS.get(m.outcome, m.outcome) for m in self.warm]
        same = len(set(warm)) == 1 and len(warm) > 1
        warm_words = f"{warm[0]} ×{len(warm)}" if same else ", ".join(warm) or "none"
        if self.cold is None:
            return f"warm: {warm_words}"
        cold = OUTCOME_WORDS.get(self.cold.outcome, self.cold.outcome)
        return f"cold {cold}; warm: {warm_words}"

    def summary(self) -> str:
        """One line: the median peak with its range, or why there is none."""
        m = self.as_measurement()
        if self.killed:
            return f"killed: {m.error}"
        n = len(self.counted)
        if self.out_of_memory:
            return f"out of memory ({n} of {len(self.warm)} warm runs): {m.oom_words()}"
        if not m.vram_measured:
            return f"VRAM: not measured ({m.not_measured})"
        peak = "target_peak" if m.target_peak.value is not None else "device_peak"
        stats, wall = self.stats(peak), self.stats("wall_s")
        if stats is None or stats.spread is None:
            k = stats.n if stats is not None else n
            return f"{m.summary()}; spread unknown ({k} run{'' if k == 1 else 's'})"
        time = f", run time median {fmt_value(wall.median, 's')}" if wall else ""
        return (
            f"VRAM peak median {fmt_value(stats.median, 'bytes')} ({stats.source}; "
            f"min {fmt_value(stats.min, 'bytes')}, max {fmt_value(stats.max, 'bytes')}, "
            f"{n} warm runs){time}"
        )

    def table(self) -> str:
        """The cold run's figures apart, then min / median / max of the counted runs."""
        rep = self.representative
        mem = mem_word(rep.device_type)
        body = []
        for spec in ROWS:
            unit = spec.figure(rep).unit
            cold = spec.figure(self.cold) if self.cold is not None else Figure.none(unit)
            s = self.stats(spec.key)
            cells = [fmt_number(v, unit) for v in (s.min, s.median, s.max)] if s else ["n/a"] * 3
            source = (s.source if s else None) or cold.source or ""
            body.append((spec.title(mem, unit), fmt_number(cold.value, unit), *cells, source))
        n = len(self.counted)
        counted = (
            f"min / median / max over {n} warm runs; the cold run is not counted"
            if n >= 2
            else f"spread unknown ({n} run{'' if n == 1 else 's'})"
        )
        tail = [self.summary(), f"runs: {self.outcome_words()}", counted, *rep.host_ram_words()]
        return render([("", "cold", "min", "median", "max", "source"), *body], tail)

    def problems(self, *, require_vram: bool = False) -> list[str]:
        """What `verify --require-vram` must fail on (exit 3)."""
        return self.as_measurement().problems(require_vram=require_vram)

    # -- JSON -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The median view's Measurement JSON (what every single-run reader reads), plus
        `series`: each run's own JSON, each row's statistics, and the outcomes."""
        d = self.as_measurement().to_json()
        d["summary"] = self.summary()
        d["series"] = {
            "warm_runs": len(self.warm),
            "counted_runs": len(self.counted),
            "spread_known": self.spread_known,
            "outcome": self.outcome,
            "outcomes": {
                "cold": self.cold.outcome if self.cold is not None else None,
                "warm": [m.outcome for m in self.warm],
            },
            "figures": {
                spec.key: (s.to_json() if (s := self.stats(spec.key)) else None) for spec in ROWS
            },
            "cold": self.cold.to_json() if self.cold is not None else None,
            "warm": [m.to_json() for m in self.warm],
        }
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Series:
        """A series' JSON, or the single-run Measurement JSON an older qpatch stored."""
        s = d.get("series")
        if isinstance(s, Mapping) and isinstance(s.get("warm"), list):
            cold = Measurement.from_json(s["cold"]) if s.get("cold") else None
            warm = tuple(Measurement.from_json(m) for m in s["warm"])
            if warm or cold is not None:
                return cls(warm, cold)
        return cls.single(Measurement.from_json(d))

    @classmethod
    def from_runs_json(cls, runs: Sequence[Mapping[str, Any]]) -> Series:
        """The runs list an older `qpatch measure --save` kept: made the same way (each
        after /free), the first one cold."""
        measured = [Measurement.from_json(r) for r in runs]
        return cls.of(measured) if len(measured) >= 2 else cls.single(measured[0])


def as_series(m: Series | Measurement | Mapping[str, Any]) -> Series:
    """Whatever a caller holds — a series, one run, or either's stored JSON — as a series."""
    if isinstance(m, Series):
        return m
    if isinstance(m, Measurement):
        return Series.single(m)
    return Series.from_json(m)


def _peak(m: Measurement) -> float:
    value = m.peak.value
    assert value is not None
    return value
