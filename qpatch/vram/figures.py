"""The figures of a measured run, and what two runs' figures say side by side.

Pure code, no I/O: the ledger's stored JSON compares as well as a fresh `Measurement`, so
`verify` can judge a baseline taken weeks ago, and tests need neither a GPU nor ComfyUI.
Where the readings come from is `sources`' business; how a run is made, `protocol`'s.

Both tables, one run's and the comparison's, are drawn from `ROWS`, so a row is named,
labelled and read in one place: a label written twice would drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3
NO_GPU = "no NVIDIA GPU visible"
#: A run's outcome: it finished, or the GPU ran out of memory (what users come with).
COMPLETED = "completed"
OUT_OF_MEMORY = "out-of-memory"


# -- figures and measurements -------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A number with its unit and the source it came from; value None: not measured."""

    value: float | None
    unit: str  # "bytes" or "s"
    source: str | None  # "nvml", "system_stats", "node" (its own report), "wall" or None

    @classmethod
    def none(cls, unit: str = "bytes") -> Figure:
        return cls(None, unit, None)

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None, unit: str = "bytes") -> Figure:
        if not d:
            return cls.none(unit)
        return cls(d.get("value"), d.get("unit", unit), d.get("source"))

    def __str__(self) -> str:
        return fmt_value(self.value, self.unit)


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "bytes":
        return f"{value / GIB:.2f} GiB"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


@dataclass(frozen=True)
class Measurement:
    """One measured workflow run; what the ledger stores and `compare` reads."""

    source: str | None  # where the memory figures came from
    device_type: str | None  # "cuda", "cpu", ... (ComfyUI's torch device type)
    device_name: str | None
    not_measured: str | None  # why this is not a VRAM figure; None: it is
    wall_s: Figure  # POST /prompt to /history saying done, polled every 0.2 s
    target_peak: Figure
    device_peak: Figure
    target_idle: Figure  # the reading just before the run (after /free)
    device_idle: Figure
    device_total: Figure
    node_peak_allocated: Figure  # the node's torch.cuda.max_memory_allocated, if it says
    node_step_time: Figure
    node: dict[str, Any] | None  # the node's whole JSON report
    prompt_id: str | None = None
    status: str | None = None
    workflow: str | None = None
    seed: int | None = None
    seed_inputs: list[str] = field(default_factory=list)  # "node_id.input" varied
    freed: bool = False  # /free answered before the run
    interval_s: float | None = None
    samples: int = 0
    sample_errors: int = 0
    notes: list[str] = field(default_factory=list)
    outcome: str = COMPLETED
    error: str | None = None  # the exception's message when the run did not complete

    @property
    def vram_measured(self) -> bool:
        return self.not_measured is None

    @property
    def out_of_memory(self) -> bool:
        return self.outcome == OUT_OF_MEMORY

    @property
    def peak(self) -> Figure:
        """The target's own peak where it could be attributed, else the device's."""
        return self.target_peak if self.target_peak.value is not None else self.device_peak

    def summary(self) -> str:
        """One line: the peak and the time, or why VRAM was not measured."""
        if self.out_of_memory:
            return f"out of memory: {self.oom_words()}"
        if not self.vram_measured:
            return f"VRAM: not measured ({self.not_measured})"
        peak = self.peak
        return f"VRAM peak {peak} ({peak.source}), run time {self.wall_s}"

    def oom_words(self) -> str:
        """ "at 139.0 GiB (limit 139.8)", with what is known of the peak and the limit."""
        if not self.vram_measured or self.peak.value is None:
            return f"peak not measured ({self.not_measured or 'no reading'})"
        total = self.device_total.value
        limit = "" if total is None else f" (limit {total / GIB:.1f})"
        return f"at {self.peak}{limit}"

    __str__ = summary

    def table(self) -> str:
        mem = _mem_word(self.device_type)
        figs = [(spec.title(mem), spec.figure(self)) for spec in ROWS]
        rows = [(label, str(fig), fig.source or "") for label, fig in figs]
        return _render([("", "value", "source"), *rows], [self.summary()])

    def problems(self, *, require_vram: bool = False) -> list[str]:
        """What `verify --require-vram` must fail on (exit 3)."""
        if require_vram and not self.vram_measured:
            return [f"VRAM: not measured ({self.not_measured}) and --require-vram was given"]
        return []

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["vram_measured"] = self.vram_measured
        d["summary"] = self.summary()
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Measurement:
        figs = {
            "wall_s": "s",
            "target_peak": "bytes",
            "device_peak": "bytes",
            "target_idle": "bytes",
            "device_idle": "bytes",
            "device_total": "bytes",
            "node_peak_allocated": "bytes",
            "node_step_time": "s",
        }
        known = {f for f in cls.__dataclass_fields__}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in known and k not in figs}
        kw.update({k: Figure.from_json(d.get(k), unit) for k, unit in figs.items()})
        kw.setdefault("source", None)
        kw.setdefault("device_type", None)
        kw.setdefault("device_name", None)
        kw.setdefault("not_measured", NO_GPU)
        kw.setdefault("node", None)
        return cls(**kw)


# -- the rows of both tables --------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    """One row of a table: its key (in the comparison's JSON and the verdict's basis), its
    label, and which figure of a Measurement it shows."""

    key: str
    label: str  # "{mem}" becomes what the memory is: VRAM, or the CPU's RAM
    figure: Callable[[Measurement], Figure]

    def title(self, mem: str) -> str:
        return self.label.format(mem=mem)


#: The rows of `Measurement.table()` and of `compare()`, in the order shown.
ROWS: tuple[RowSpec, ...] = (
    RowSpec("target_peak", "peak {mem}, target's processes", lambda m: m.target_peak),
    RowSpec("device_peak", "peak {mem}, device", lambda m: m.device_peak),
    RowSpec(
        "node_peak_allocated", "peak allocated (node's torch)", lambda m: m.node_peak_allocated
    ),
    RowSpec("node_step_time", "step time (node, median)", lambda m: m.node_step_time),
    RowSpec("wall_s", "run time (wall)", lambda m: m.wall_s),
)


def _mem_word(device_type: str | None) -> str:
    return "RAM (cpu, not VRAM)" if device_type == "cpu" else "VRAM"


# -- comparing two runs -------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    before: Figure
    after: Figure

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
        }


#: Which memory row the verdict rests on, best first: the target's own processes are what a
#: patch changes; the device adds other tenants; the node's torch peak misses the context.
VERDICT_BASIS = ("target_peak", "device_peak", "node_peak_allocated")
#: Which time row: the node's step time leaves out the model load, which no patch changes.
TIME_BASIS = ("node_step_time", "wall_s")


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

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    @property
    def measured(self) -> bool:
        return self.not_measured is None

    @property
    def saved_bytes(self) -> float | None:
        if self.basis is None:
            return None
        r = self.row(self.basis)
        assert r.before.value is not None and r.after.value is not None
        return r.before.value - r.after.value

    @property
    def saving_pct(self) -> float | None:
        """Percent of the baseline peak saved (negative: more memory used)."""
        ratio = self.row(self.basis).ratio if self.basis else None
        return None if ratio is None else (1.0 - ratio) * 100.0

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
        if self.before_outcome == OUT_OF_MEMORY:
            after = (
                f"completes, peak {self.after_peak}"
                if self.after_outcome == COMPLETED
                else "still out of memory"
            )
            return f"before: out of memory {self.before_oom}; after: {after}"
        if not self.measured:
            return f"VRAM: not measured ({self.not_measured})"
        pct, saved = self.saving_pct, self.saved_bytes
        assert pct is not None and saved is not None
        if abs(pct) <= self.tolerance * 100 + 1e-9:  # 10.5 / 10.0 is 1.0500000000000003
            return f"no significant change (±{self.tolerance * 100:.0f}%)"
        at = "" if self.time_change_pct is None else f" at {_signed(self.time_change_pct)} time"
        if pct > 0:
            return f"saved {saved / GIB:.2f} GiB (−{pct:.0f}%){at}"
        return f"used {-saved / GIB:.2f} GiB more (+{-pct:.0f}%){at}"

    def expect_saving(self, pct: float, *, require_vram: bool = False) -> bool:
        """Whether a saving of at least `pct` percent was measured. Without a measurement
        the expectation cannot fail unless VRAM is required (`verify --require-vram`)."""
        if self.fixes_oom:
            return True
        if not self.measured:
            return not require_vram
        saving = self.saving_pct
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
            out.append(
                f"expected a saving of at least {expect_saving:g}%, measured "
                f"{self.saving_pct:.1f}% ({self.verdict})"
            )
        return out

    def table(self) -> str:
        """Plain aligned text: each row before / after / ratio / source, then the verdict."""
        body = [
            (
                r.label,
                str(r.before),
                str(r.after),
                "n/a" if r.ratio is None else f"{r.ratio:.2f}×",
                r.source,
            )
            for r in self.rows
        ]
        tail = [self.verdict]
        if self.same_output is not None:
            tail.append(f"output: {'same' if self.same_output else 'DIFFERENT'} (node checksum)")
        return _render([("", "before", "after", "ratio", "source"), *body], tail)

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
            "time_change_pct": self.time_change_pct,
            "same_output": self.same_output,
            "before_outcome": self.before_outcome,
            "after_outcome": self.after_outcome,
            "fixes_oom": self.fixes_oom,
            "verdict": self.verdict,
        }


def compare(
    before: Measurement | Mapping[str, Any],
    after: Measurement | Mapping[str, Any],
    *,
    tolerance: float = 0.05,
) -> Comparison:
    """Before/after per figure, and which figure the verdict rests on. Pure: the ledger's
    stored JSON compares as well as a fresh Measurement."""
    b, a = _as_measurement(before), _as_measurement(after)
    mem = _mem_word(b.device_type if b.device_type == a.device_type else None)
    rows = [Row(s.key, s.title(mem), s.figure(b), s.figure(a)) for s in ROWS]
    by_key = {r.key: r for r in rows}
    basis = next((k for k in VERDICT_BASIS if by_key[k].comparable), None)
    reason = b.not_measured or a.not_measured
    if reason is None and basis is None:
        reason = f"before and after are not comparable ({b.source} -> {a.source})"
    return Comparison(
        rows=rows,
        tolerance=tolerance,
        not_measured=reason,
        basis=basis if reason is None else None,
        time_basis=next((k for k in TIME_BASIS if by_key[k].comparable), None),
        same_output=_same_output(b, a),
        before_outcome=b.outcome,
        after_outcome=a.outcome,
        before_oom=b.oom_words() if b.out_of_memory else None,
        after_peak=f"{a.peak}" if a.vram_measured and a.peak.value is not None else "n/a",
    )


def _as_measurement(m: Measurement | Mapping[str, Any]) -> Measurement:
    return m if isinstance(m, Measurement) else Measurement.from_json(m)


def _same_output(b: Measurement, a: Measurement) -> bool | None:
    """Only meaningful when both runs used the same seed on the same kind of device."""
    cb, ca = (b.node or {}).get("output_checksum"), (a.node or {}).get("output_checksum")
    if cb is None or ca is None or b.seed != a.seed or b.device_type != a.device_type:
        return None
    return math.isclose(float(cb), float(ca), rel_tol=1e-3, abs_tol=1e-6)


def _signed(pct: float) -> str:
    return f"+{pct:.0f}%" if pct >= 0 else f"−{-pct:.0f}%"


def _render(rows: list[tuple[str, ...]], tail: list[str]) -> str:
    """Left-align the first column, right-align figures; the source column trails."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1], strict=True)]
        cells.append(r[-1])
        lines.append("  ".join(cells).rstrip())
    return "\n".join([*lines, *tail])
