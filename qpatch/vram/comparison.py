"""Two measurements side by side: per row the medians, their ratio and the verdict word
(`series.judge`: saving, cost or within noise), and the one sentence `verify` and `apply`
end on.

Pure code: the ledger's stored JSON compares as well as a fresh series, and an older
single-run JSON compares as a series of one run (spread unknown: the fixed tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from qpatch.vram.figures import (
    COMPLETED,
    GIB,
    KILLED,
    OUT_OF_MEMORY,
    ROWS,
    Figure,
    Measurement,
    fmt_number,
    mem_word,
    render,
    unit_word,
)
from qpatch.vram.series import (
    NOT_COMPARABLE,
    WITHIN_NOISE,
    Series,
    Stats,
    as_series,
    judge,
    noise,
    rule_words,
)
from qpatch.vram.series import threshold as _threshold

#: Which memory row the verdict rests on, best first: the target's own processes are what a
#: patch changes; the device adds other tenants; the node's torch peak misses the context.
VERDICT_BASIS = ("target_peak", "device_peak", "node_peak_allocated")
#: Which time row: the node's step time leaves out the model load, which no patch changes.
TIME_BASIS = ("node_step_time", "wall_s")
DEFAULT_TOLERANCE = 0.05


@dataclass(frozen=True)
class Row:
    """One figure before and after: the medians (`before`, `after`), and the statistics
    they come from where there were runs to count."""

    key: str
    label: str
    before: Figure
    after: Figure
    before_stats: Stats | None = None
    after_stats: Stats | None = None
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def comparable(self) -> bool:
        """Same source on both sides and a non-zero baseline: a ratio means something."""
        b, a = self.before, self.after
        return (
            b.value is not None
            and a.value is not None
            and b.value > 0
            and b.source is not None
            and b.source == a.source
        )

    @property
    def ratio(self) -> float | None:
        if not self.comparable:
            return None
        assert self.before.value is not None and self.after.value is not None
        return self.after.value / self.before.value

    @property
    def difference(self) -> float | None:
        """after − before, medians; None where the row is not comparable."""
        if not self.comparable:
            return None
        assert self.before.value is not None and self.after.value is not None
        return self.after.value - self.before.value

    @property
    def spread(self) -> float | None:
        """The noise the difference is judged against: the larger spread of the two sides;
        None when either side has one run."""
        return noise(self.before_stats, self.after_stats)

    @property
    def threshold(self) -> float | None:
        """How far the medians must differ to count (`series.threshold`)."""
        if not self.comparable:
            return None
        assert self.before.value is not None
        return _threshold(self.before.value, self.spread, self.tolerance)

    @property
    def verdict(self) -> str:
        """SAVING, COST, WITHIN_NOISE, or NOT_COMPARABLE ("n/a")."""
        if not self.comparable:
            return NOT_COMPARABLE
        assert self.before.value is not None and self.after.value is not None
        return judge(self.before.value, self.after.value, self.spread, self.tolerance)

    @property
    def words(self) -> str:
        """The verdict for the table: with one run, "within noise" reads as the tolerance."""
        if self.verdict == WITHIN_NOISE and self.spread is None:
            return f"within ±{self.tolerance * 100:.0f}%"
        return self.verdict

    @property
    def source(self) -> str:
        b, a = self.before.source, self.after.source
        if b == a:
            return b or ""
        return f"{b or '-'} -> {a or '-'} (not comparable)"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "ratio": self.ratio,
            "before_runs": self.before_stats.to_json() if self.before_stats else None,
            "after_runs": self.after_stats.to_json() if self.after_stats else None,
            "difference": self.difference,
            "spread": self.spread,
            "threshold": self.threshold,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    tolerance: float
    not_measured: str | None  # why there is no VRAM verdict; None: there is one
    basis: str | None  # the row key the verdict rests on
    time_basis: str | None
    same_output: bool | None  # the node's output checksum matched (same seed both times)
    before_outcome: str = COMPLETED
    after_outcome: str = COMPLETED
    before_oom: str | None = None  # "at 139.0 GiB (limit 139.8)" when the baseline ran out
    after_peak: str | None = None
    runs_before: int = 1  # counted (warm) runs on each side
    runs_after: int = 1
    #: each side's outcomes, "runs: cold completed; warm: completed ×3"
    outcomes: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str | None] = field(default_factory=dict)  # a killed side's reason
    host_ram: list[str] = field(default_factory=list)  # why host RAM has no figure

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    @property
    def measured(self) -> bool:
        return self.not_measured is None

    @property
    def spread_known(self) -> bool:
        return self.runs_before >= 2 and self.runs_after >= 2

    @property
    def saved_bytes(self) -> float | None:
        if self.basis is None:
            return None
        r = self.row(self.basis)
        assert r.before.value is not None and r.after.value is not None
        return r.before.value - r.after.value

    @property
    def saving_pct(self) -> float | None:
        """Percent of the baseline peak saved (negative: more memory used), medians."""
        ratio = self.row(self.basis).ratio if self.basis else None
        return None if ratio is None else (1.0 - ratio) * 100.0

    @property
    def counted_saving_pct(self) -> float | None:
        """The saving `--expect-saving` counts: the measured percent, or none where the
        difference is within the noise (`series.judge`), as the verdict words say."""
        pct = self.saving_pct
        if pct is None or self.basis is None:
            return pct
        return 0.0 if self.row(self.basis).verdict == WITHIN_NOISE else pct

    @property
    def time_change_pct(self) -> float | None:
        ratio = self.row(self.time_basis).ratio if self.time_basis else None
        return None if ratio is None else (ratio - 1.0) * 100.0

    @property
    def fixes_oom(self) -> bool:
        """The baseline ran out of memory and the run after completes: the saving users
        came for, whatever the peaks say (a peak at the device's limit is no real need)."""
        return self.before_outcome == OUT_OF_MEMORY and self.after_outcome == COMPLETED

    @property
    def verdict(self) -> str:
        for side, outcome in (("before", self.before_outcome), ("after", self.after_outcome)):
            if outcome == KILLED:
                return f"not compared: the {side} series was killed ({self.errors.get(side)})"
        if self.before_outcome == OUT_OF_MEMORY:
            after = (
                f"completes, peak {self.after_peak}"
                if self.after_outcome == COMPLETED
                else "still out of memory"
            )
            return f"before: out of memory {self.before_oom}; after: {after}"
        if not self.measured:
            return f"VRAM: not measured ({self.not_measured})"
        assert self.basis is not None
        r = self.row(self.basis)
        pct, saved = self.saving_pct, self.saved_bytes
        assert pct is not None and saved is not None
        if r.verdict == WITHIN_NOISE:
            tol = f"±{self.tolerance * 100:.0f}%"
            if r.spread is None:
                return f"no significant change ({tol})"
            assert r.threshold is not None
            bar = f"±{r.threshold / GIB:.2f} GiB"
            why = (
                f"the larger spread of {self.runs_before} and {self.runs_after} warm runs"
                if r.spread >= r.threshold
                else f"{tol} of before; the runs spread {r.spread / GIB:.2f} GiB"
            )
            return f"within noise: {_signed_gib(-saved)} against {bar} ({why})"
        at = self._time_words()
        if pct > 0:
            return f"saved {saved / GIB:.2f} GiB (−{pct:.0f}%){at}"
        return f"used {-saved / GIB:.2f} GiB more (+{-pct:.0f}%){at}"

    def _time_words(self) -> str:
        if self.time_change_pct is None or self.time_basis is None:
            return ""
        if self.spread_known and self.row(self.time_basis).verdict == WITHIN_NOISE:
            return " at the same time (within noise)"
        return f" at {_signed(self.time_change_pct)} time"

    def expect_saving(self, pct: float, *, require_vram: bool = False) -> bool:
        """Whether a saving of at least `pct` percent was measured above the noise. Without
        a measurement the expectation cannot fail unless VRAM is required (`verify
        --require-vram`)."""
        if KILLED in (self.before_outcome, self.after_outcome):
            return False  # a run that died says nothing of what the workflow needs
        if self.fixes_oom:
            return True
        if not self.measured:
            return not require_vram
        saving = self.counted_saving_pct
        return saving is not None and saving >= pct

    def problems(
        self, *, expect_saving: float | None = None, require_vram: bool = False
    ) -> list[str]:
        """Every reason `verify` must exit 3, in words; empty: all is well."""
        out: list[str] = []
        if require_vram and not self.measured:
            out.append(f"{self.verdict} and --require-vram was given")
        if (
            expect_saving is not None
            and (self.measured or self.fixes_oom)
            and not self.expect_saving(expect_saving)
        ):
            measured = f"{self.saving_pct:.1f}%" if self.saving_pct is not None else "none"
            if self.counted_saving_pct == 0.0 and self.saving_pct:
                measured += ", within the noise: counted as none"
            out.append(
                f"expected a saving of at least {expect_saving:g}%, measured {measured} "
                f"({self.verdict})"
            )
        return out

    def rule(self) -> str:
        return rule_words(self.tolerance, self.spread_known)

    def table(self) -> str:
        """Plain aligned text: each row's min / median / max before and after, the ratio of
        the medians, the verdict word and the source; then the verdict and the rule."""
        body = []
        for r in self.rows:
            unit = r.before.unit
            cells = [*_cells(r.before_stats, r.before), *_cells(r.after_stats, r.after)]
            ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}×"
            label = f"{r.label} ({unit_word(unit)})"
            body.append((label, *[fmt_number(v, unit) for v in cells], ratio, r.words, r.source))
        header = (
            "",
            "before min",
            "median",
            "max",
            "after min",
            "median",
            "max",
            "ratio",
            "verdict",
            "source",
        )
        tail = [self.verdict]
        if self.same_output is not None:
            tail.append(f"output: {'same' if self.same_output else 'DIFFERENT'} (node checksum)")
        tail.append(self.rule())
        tail += [f"runs {side}: {words}" for side, words in self.outcomes.items()]
        tail += self.host_ram
        return render([header, *body], tail, left=frozenset({8}))

    __str__ = table

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [r.to_json() for r in self.rows],
            "tolerance": self.tolerance,
            "measured": self.measured,
            "not_measured": self.not_measured,
            "basis": self.basis,
            "time_basis": self.time_basis,
            "saved_bytes": self.saved_bytes,
            "saving_pct": self.saving_pct,
            "counted_saving_pct": self.counted_saving_pct,
            "time_change_pct": self.time_change_pct,
            "same_output": self.same_output,
            "before_outcome": self.before_outcome,
            "after_outcome": self.after_outcome,
            "fixes_oom": self.fixes_oom,
            "runs": {"before": self.runs_before, "after": self.runs_after},
            "spread_known": self.spread_known,
            "rule": self.rule(),
            "outcomes": dict(self.outcomes),
            "verdict": self.verdict,
        }


def compare(
    before: Series | Measurement | Mapping[str, Any],
    after: Series | Measurement | Mapping[str, Any],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Comparison:
    """Before/after per figure, each row judged against the runs' noise, and which figure
    the verdict rests on. Pure: either side may be a series, one run, or stored JSON of
    either (a single run is a series of one, judged by `tolerance`)."""
    bs, as_ = as_series(before), as_series(after)
    b, a = bs.as_measurement(), as_.as_measurement()
    mem = mem_word(b.device_type if b.device_type == a.device_type else None)
    rows = [
        Row(
            s.key,
            s.title(mem),
            s.figure(b),
            s.figure(a),
            bs.stats(s.key),
            as_.stats(s.key),
            tolerance,
        )
        for s in ROWS
    ]
    by_key = {r.key: r for r in rows}
    basis = next((k for k in VERDICT_BASIS if by_key[k].comparable), None)
    reason = b.not_measured or a.not_measured
    if reason is None and basis is None:
        reason = f"before and after are not comparable ({b.source} -> {a.source})"
    host_ram = list(dict.fromkeys([*b.host_ram_words(), *a.host_ram_words()]))
    return Comparison(
        rows=rows,
        tolerance=tolerance,
        not_measured=reason,
        basis=basis if reason is None else None,
        time_basis=next((k for k in TIME_BASIS if by_key[k].comparable), None),
        same_output=_same_output(b, a),
        before_outcome=bs.outcome,
        after_outcome=as_.outcome,
        before_oom=b.oom_words() if bs.out_of_memory else None,
        after_peak=f"{a.peak}" if a.vram_measured and a.peak.value is not None else "n/a",
        runs_before=len(bs.counted),
        runs_after=len(as_.counted),
        outcomes={"before": bs.outcome_words(), "after": as_.outcome_words()},
        errors={"before": b.error, "after": a.error},
        host_ram=host_ram,
    )


def _cells(stats: Stats | None, median: Figure) -> tuple[float | None, ...]:
    if stats is None:
        return (None, median.value, None) if median.value is not None else (None, None, None)
    return (stats.min, stats.median, stats.max)


def _same_output(b: Measurement, a: Measurement) -> bool | None:
    """Only meaningful when both runs used the same seed on the same kind of device."""
    cb, ca = (b.node or {}).get("output_checksum"), (a.node or {}).get("output_checksum")
    if cb is None or ca is None or b.seed != a.seed or b.device_type != a.device_type:
        return None
    return math.isclose(float(cb), float(ca), rel_tol=1e-3, abs_tol=1e-6)


def _signed(pct: float) -> str:
    return f"+{pct:.0f}%" if pct >= 0 else f"−{-pct:.0f}%"


def _signed_gib(delta: float) -> str:
    return f"+{delta / GIB:.2f} GiB" if delta >= 0 else f"−{-delta / GIB:.2f} GiB"
