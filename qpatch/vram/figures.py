"""The figures of one measured run, and the rows every table is drawn from.

Pure code, no I/O: the ledger's stored JSON reads back as a `Measurement`, so a baseline
taken weeks ago is as good as a fresh one, and tests need neither a GPU nor ComfyUI.
Where the readings come from is `sources`' business; how a run is made, `protocol`'s;
what several runs say together, `series`'; two series side by side, `comparison`'s.

Every table (a run's, a series', a comparison's) is drawn from `ROWS`, so a row is named,
labelled and read in one place: a label written twice would drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3
NO_GPU = "no NVIDIA GPU visible"
#: A run's outcome: it finished; the GPU ran out of memory (what users come with); or it
#: was killed — the server died or was restarted under it, stopped answering HTTP, or
#: ComfyUI says the run was interrupted — so it says nothing of what the run needs.
COMPLETED = "completed"
OUT_OF_MEMORY = "out-of-memory"
KILLED = "killed"
OUTCOME_WORDS = {COMPLETED: "completed", OUT_OF_MEMORY: "out of memory", KILLED: "killed"}


# -- figures and measurements -------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A number with its unit and the source it came from; value None: not measured."""

    value: float | None
    unit: str  # "bytes" or "s"
    source: str | None  # "nvml", "system_stats", "node" (its own report), "wall", "proc"

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
    """A value with its unit, for sentences: "41.71 GiB", "0.160 s", "n/a"."""
    if value is None:
        return "n/a"
    return f"{fmt_number(value, unit)} {unit_word(unit)}"


def fmt_number(value: float | None, unit: str) -> str:
    """A value in the unit `unit_word` names, for table cells (the unit is in the label)."""
    if value is None:
        return "n/a"
    if unit == "bytes":
        return f"{value / GIB:.2f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def unit_word(unit: str) -> str:
    return "GiB" if unit == "bytes" else unit


def _host_ram_figure() -> Figure:
    return Figure.none()


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
    error: str | None = None  # why the run did not complete (the exception, or the kill)
    #: RSS summed over the target's processes on this host, peak over the run (source
    #: "proc"); stored measurements from before it existed read back as not measured.
    host_ram_peak: Figure = field(default_factory=_host_ram_figure)
    host_ram_not_measured: str | None = None  # why there is no host RAM figure

    @property
    def vram_measured(self) -> bool:
        return self.not_measured is None

    @property
    def out_of_memory(self) -> bool:
        return self.outcome == OUT_OF_MEMORY

    @property
    def killed(self) -> bool:
        return self.outcome == KILLED

    @property
    def peak(self) -> Figure:
        """The target's own peak where it could be attributed, else the device's."""
        return self.target_peak if self.target_peak.value is not None else self.device_peak

    def summary(self) -> str:
        """One line: the peak and the time, or why VRAM was not measured."""
        if self.killed:
            return f"killed: {self.error or 'the run was cut'}"
        if self.out_of_memory:
            return f"out of memory: {self.oom_words()}"
        if not self.vram_measured:
            return f"VRAM: not measured ({self.not_measured})"
        peak = self.peak
        return f"VRAM peak {peak} ({peak.source}), run time {self.wall_s}"

    def brief(self) -> str:
        """One run of a series in a line: its outcome and figures, measured or not (the
        series' table says what they are worth)."""
        if self.killed or self.out_of_memory:
            return self.summary()
        mem = "VRAM" if self.vram_measured else f"{mem_word(self.device_type)}"
        peak = self.peak
        words = [f"peak {mem} {peak}" + (f" ({peak.source})" if peak.source else "")]
        if self.host_ram_peak.value is not None:
            words.append(f"host RAM {self.host_ram_peak}")
        words.append(f"run time {self.wall_s}")
        return ", ".join(words)

    def oom_words(self) -> str:
        """ "at 139.0 GiB (limit 139.8)", with what is known of the peak and the limit."""
        if not self.vram_measured or self.peak.value is None:
            return f"peak not measured ({self.not_measured or 'no reading'})"
        total = self.device_total.value
        limit = "" if total is None else f" (limit {total / GIB:.1f})"
        return f"at {self.peak}{limit}"

    __str__ = summary

    def table(self) -> str:
        """This run's figures, one row of `ROWS` each, then the summary."""
        mem = mem_word(self.device_type)
        figs = [(spec.title(mem), spec.figure(self)) for spec in ROWS]
        body = [(label, str(fig), fig.source or "") for label, fig in figs]
        tail = [self.summary(), *self.host_ram_words()]
        return render([("", "value", "source"), *body], tail)

    def host_ram_words(self) -> list[str]:
        """The line that says why host RAM has no figure, when it has none."""
        if self.host_ram_peak.value is not None or self.host_ram_not_measured is None:
            return []
        return [f"host RAM: not measured ({self.host_ram_not_measured})"]

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
        """Also what an older qpatch stored: keys it lacked take their defaults, keys it
        does not know (a series' own, `vram_measured`, `summary`) are left out."""
        known = set(cls.__dataclass_fields__)
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in known and k not in FIGURES}
        kw.update({k: Figure.from_json(d.get(k), unit) for k, unit in FIGURES.items()})
        kw.setdefault("source", None)
        kw.setdefault("device_type", None)
        kw.setdefault("device_name", None)
        kw.setdefault("not_measured", NO_GPU)
        kw.setdefault("node", None)
        return cls(**kw)


#: The Figure fields of a Measurement and their units.
FIGURES = {
    "wall_s": "s",
    "target_peak": "bytes",
    "device_peak": "bytes",
    "target_idle": "bytes",
    "device_idle": "bytes",
    "device_total": "bytes",
    "node_peak_allocated": "bytes",
    "node_step_time": "s",
    "host_ram_peak": "bytes",
}


# -- the rows of every table --------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    """One row of a table: its key (the Measurement field it shows, the key in the
    comparison's JSON and the verdict's basis) and its label."""

    key: str
    label: str  # "{mem}" becomes what the memory is: VRAM, or the CPU's RAM

    def figure(self, m: Measurement) -> Figure:
        value: Figure = getattr(m, self.key)
        return value

    def title(self, mem: str, unit: str | None = None) -> str:
        """The label; with `unit`, the unit its cells are in: "peak VRAM, device (GiB)"."""
        label = self.label.format(mem=mem)
        return label if unit is None else f"{label} ({unit_word(unit)})"


#: The rows of every table, in the order shown.
ROWS: tuple[RowSpec, ...] = (
    RowSpec("target_peak", "peak {mem}, target's processes"),
    RowSpec("device_peak", "peak {mem}, device"),
    RowSpec("node_peak_allocated", "peak allocated (node's torch)"),
    RowSpec("node_step_time", "step time (node, median)"),
    RowSpec("wall_s", "run time (wall)"),
    RowSpec("host_ram_peak", "host RAM peak, target's processes"),
)


def mem_word(device_type: str | None) -> str:
    return "RAM (cpu, not VRAM)" if device_type == "cpu" else "VRAM"


def render(
    rows: list[tuple[str, ...]], tail: list[str], *, left: frozenset[int] = frozenset()
) -> str:
    """Left-align the first column and the columns in `left` (words), right-align the
    figures; the last column trails. Then the tail lines."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])]
        cells += [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(r[1:-1], widths[1:-1], strict=True), start=1)
        ]
        cells.append(r[-1])
        lines.append("  ".join(cells).rstrip())
    return "\n".join([*lines, *tail])
