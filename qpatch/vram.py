"""Measure what a workflow run really costs in GPU memory and time, and say plainly where
each figure came from and when there is nothing to measure.

Two sources, tried in this order:

- **NVML** on this host (``nvidia-ml-py``): the memory used by the target's own processes
  (``nvmlDeviceGetComputeRunningProcesses``, matched against ``Target.host_pids()``) and
  the device's used memory. Chosen only when NVML sees a process of the target on a GPU:
  a remote Docker engine's GPU is invisible here even when this host has one of its own.
- **ComfyUI's ``/system_stats``** read from inside the target: ``vram_total - vram_free``
  for the device and ``torch_vram_total - torch_vram_free`` for ComfyUI's own process.
  On CUDA, ComfyUI counts the memory torch keeps cached but unused as *free* in both, so
  these are live tensors (plus other processes' memory for the device), lower than NVML's.
  On ``--cpu`` ComfyUI reports RAM there; the numbers are kept but never called VRAM.

The figures of one side (target or device) are peaks over all readings of a run, taken by
a `Sampler` thread: every 20 ms from NVML, every 250 ms from /system_stats (each reading is
an exec), which can miss a peak shorter than that; the node's own
``torch.cuda.max_memory_allocated``, when it reports one, cannot. NVML matches PIDs as this
host sees them; where qpatch runs in another PID namespace than the target's processes, it
sees none of them and /system_stats is used.

Which GPU "the device" is: the one the target used most (ComfyUI runs a workflow on one
device). Summing a host's GPUs would add other tenants' memory and dilute the ratio; taking
the busiest GPU could report someone else's card.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from qpatch.comfy_api import ComfyAPI
from qpatch.errors import CheckFailed
from qpatch.workflow import WorkflowRun, run_workflow

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency; a broken install must not stop a patch
    pynvml = None

GIB = 1024**3
NVML_INTERVAL_S = 0.02
STATS_INTERVAL_S = 0.25  # each /system_stats reading is an exec in the target
PID_REFRESH_S = 1.0  # container.top() is an API call: not on every 20 ms reading
FREE_SETTLE_S = 1.0  # ComfyUI's worker thread drops its caches after /free, not during it
#: Integer inputs that only change what is generated, so varying them is harmless.
SEED_INPUTS = ("seed", "noise_seed")
#: A ui text that is a JSON object with any of these keys is a node's own report.
NODE_KEYS = ("peak_allocated_bytes", "step_time_s", "output_checksum")
NO_GPU = "no NVIDIA GPU visible"


# -- readings and the sampler -------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading. Bytes; `target` is None when the source cannot attribute memory to the
    target's processes (NVML without per-process figures, for instance)."""

    target: int | None = None
    devices: Mapping[str, int] = field(default_factory=dict)  # device key -> used bytes
    target_on: Mapping[str, int] = field(default_factory=dict)  # device key -> target's bytes


#: A measurement source: returns a reading, or None when there is none this time.
SampleSource = Callable[[], "Sample | None"]


@dataclass(frozen=True)
class Peaks:
    target: int | None
    device: int | None
    device_key: str | None  # which device `device` is
    devices: dict[str, int]  # every device's own peak
    first: Sample | None  # the reading taken before the run started
    samples: int
    errors: int
    last_error: str | None


class Sampler:
    """Keeps the peak of a source's readings, read every `interval` seconds on a thread.

    One reading is taken when it starts and one when it stops, so even a run shorter than
    the interval has a before and an after. A reading that fails is counted, not fatal: a
    measurement must never break the workflow it measures."""

    def __init__(self, source: SampleSource, interval: float = NVML_INTERVAL_S) -> None:
        self.source = source
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._target: int | None = None
        self._devices: dict[str, int] = {}
        self._target_on: dict[str, int] = {}
        self._first: Sample | None = None
        self._samples = 0
        self._errors = 0
        self._last_error: str | None = None

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.read_once()
        self._thread = threading.Thread(target=self._loop, name="qpatch-vram", daemon=True)
        self._thread.start()

    def stop(self) -> Peaks:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.read_once()
        return self.peaks()

    def _loop(self) -> None:
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self.read_once()
            # A slow reading (an exec) pushes the next one back instead of bunching up.
            due = max(due + self.interval, time.monotonic())

    def read_once(self) -> None:
        try:
            s = self.source()
        except Exception as e:  # any failure of a source is one skipped reading
            with self._lock:
                self._errors += 1
                self._last_error = f"{type(e).__name__}: {e}"
            return
        if s is not None:
            self._add(s)

    def _add(self, s: Sample) -> None:
        with self._lock:
            self._samples += 1
            if self._first is None:
                self._first = s
            if s.target is not None:
                self._target = s.target if self._target is None else max(self._target, s.target)
            _keep_max(self._devices, s.devices)
            _keep_max(self._target_on, s.target_on)

    def peaks(self) -> Peaks:
        with self._lock:
            key = _main_device(self._devices, self._target_on)
            return Peaks(
                target=self._target,
                device=self._devices.get(key) if key else None,
                device_key=key,
                devices=dict(self._devices),
                first=self._first,
                samples=self._samples,
                errors=self._errors,
                last_error=self._last_error,
            )


def _keep_max(peaks: dict[str, int], reading: Mapping[str, int]) -> None:
    for k, v in reading.items():
        peaks[k] = max(peaks.get(k, v), v)


def _main_device(devices: Mapping[str, int], target_on: Mapping[str, int]) -> str | None:
    """The device the target used most; without attribution, the busiest one."""
    on = {k: v for k, v in target_on.items() if v > 0 and k in devices}
    pick = on or devices
    return max(pick, key=lambda k: pick[k]) if pick else None


# -- sources ------------------------------------------------------------------------------


class NvmlUnavailable(Exception):
    """NVML cannot be used on this host; the message says why (for the report)."""


class PidCache:
    """The target's host PIDs, refreshed at most every `every` seconds: listing them is an
    API call (Docker's top) that must not run on every 20 ms reading."""

    def __init__(self, pids: Callable[[], Iterable[int]], every: float = PID_REFRESH_S) -> None:
        self._pids = pids
        self._every = every
        self._at = -math.inf
        self._cached: frozenset[int] = frozenset()

    def __call__(self) -> frozenset[int]:
        now = time.monotonic()
        if now - self._at >= self._every:
            # On failure keep the last known set: the target may be restarting.
            with contextlib.suppress(Exception):
                self._cached = frozenset(self._pids())
            self._at = now
        return self._cached


class NvmlSource:
    """Readings from NVML: the target's processes' memory and each GPU's used memory."""

    name = "nvml"

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        if pynvml is None:
            raise NvmlUnavailable("nvidia-ml-py is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML: {e}") from e
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as e:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable(f"NVML: {e}") from e
        if not self._handles:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable("NVML: no GPU on this host")
        self._pids = PidCache(pids)

    def __call__(self) -> Sample:
        pids = self._pids()
        devices: dict[str, int] = {}
        target_on: dict[str, int] = {}
        attributed = True
        for i, h in enumerate(self._handles):
            key = f"gpu{i}"
            devices[key] = int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
            mine = [p for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid in pids]
            if any(p.usedGpuMemory is None for p in mine):
                attributed = False  # e.g. no permission to read other processes' figures
            target_on[key] = sum(p.usedGpuMemory or 0 for p in mine)
        return Sample(sum(target_on.values()) if attributed else None, devices, target_on)

    def target_devices(self) -> list[int]:
        """NVML indices of the GPUs where a process of the target holds a context now."""
        pids = self._pids()
        return [
            i
            for i, h in enumerate(self._handles)
            if any(p.pid in pids for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h))
        ]

    def describe(self, index: int) -> tuple[str, int]:
        """The GPU's name and total memory, for the report."""
        h = self._handles[index]
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else str(name)
        return name, int(pynvml.nvmlDeviceGetMemoryInfo(h).total)

    def close(self) -> None:
        pynvml.nvmlShutdown()


def sample_from_stats(stats: Mapping[str, Any]) -> Sample:
    """A reading from ComfyUI's /system_stats: device = vram_total - vram_free, the target
    (ComfyUI's own process) = torch_vram_total - torch_vram_free."""
    devices: dict[str, int] = {}
    target_on: dict[str, int] = {}
    for d in stats.get("devices") or []:
        key = _stats_key(d)
        devices[key] = int(d["vram_total"]) - int(d["vram_free"])
        target_on[key] = int(d["torch_vram_total"]) - int(d["torch_vram_free"])
    return Sample(sum(target_on.values()) if target_on else None, devices, target_on)


def _stats_key(device: Mapping[str, Any]) -> str:
    index = device.get("index")
    return str(device.get("type")) if index is None else f"{device.get('type')}:{index}"


class SystemStatsSource:
    """Readings from ComfyUI's /system_stats, read through the target (an exec each)."""

    name = "system_stats"

    def __init__(self, api: ComfyAPI) -> None:
        self.api = api

    def __call__(self) -> Sample | None:
        stats = self.api.system_stats()
        return sample_from_stats(stats) if stats else None


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

    @property
    def vram_measured(self) -> bool:
        return self.not_measured is None

    def summary(self) -> str:
        """One line: the peak and the time, or why VRAM was not measured."""
        if not self.vram_measured:
            return f"VRAM: not measured ({self.not_measured})"
        peak = self.target_peak if self.target_peak.value is not None else self.device_peak
        return f"VRAM peak {peak} ({peak.source}), run time {self.wall_s}"

    __str__ = summary

    def table(self) -> str:
        rows = [(label, str(fig), fig.source or "") for label, fig in self._rows()]
        return _render([("", "value", "source"), *rows], [self.summary()])

    def _rows(self) -> list[tuple[str, Figure]]:
        mem = _mem_word(self.device_type)
        return [
            (f"peak {mem}, target's processes", self.target_peak),
            (f"peak {mem}, device", self.device_peak),
            ("peak allocated (node's torch)", self.node_peak_allocated),
            ("step time (node, median)", self.node_step_time),
            ("run time (wall)", self.wall_s),
        ]

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
    def verdict(self) -> str:
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
        if expect_saving is not None and self.measured and not self.expect_saving(expect_saving):
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
    rows = [
        Row("target_peak", f"peak {mem}, target's processes", b.target_peak, a.target_peak),
        Row("device_peak", f"peak {mem}, device", b.device_peak, a.device_peak),
        Row(
            "node_peak_allocated",
            "peak allocated (node's torch)",
            b.node_peak_allocated,
            a.node_peak_allocated,
        ),
        Row("node_step_time", "step time (node, median)", b.node_step_time, a.node_step_time),
        Row("wall_s", "run time (wall)", b.wall_s, a.wall_s),
    ]
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


# -- running a workflow under measurement -------------------------------------------------


def vary_seed(prompt: Mapping[str, Any], seed: int) -> tuple[dict[str, Any], list[str]]:
    """A copy of the prompt with every literal integer `seed`/`noise_seed` input set to
    `seed`, and which inputs those were ("node_id.input"). Linked inputs are left alone."""
    out = copy.deepcopy(dict(prompt))
    changed: list[str] = []
    for node_id, node in out.items():
        inputs = node.get("inputs") or {}
        for name in SEED_INPUTS:
            v = inputs.get(name)
            if isinstance(v, int) and not isinstance(v, bool):
                inputs[name] = seed
                changed.append(f"{node_id}.{name}")
    return out, changed


def node_report(texts: Iterable[str]) -> dict[str, Any] | None:
    """The first ui text that is a JSON object carrying any of NODE_KEYS."""
    for t in texts:
        try:
            obj = json.loads(t)
        except (TypeError, ValueError):
            continue
        if isinstance(obj, dict) and any(k in obj for k in NODE_KEYS):
            return obj
    return None


@dataclass
class _Chosen:
    """The source picked for a run, and what the report should say about it."""

    source: SampleSource | None
    name: str | None
    device_type: str | None
    device_name: str | None
    device_total: int | None
    not_measured: str | None
    notes: list[str]
    close: Callable[[], None] = lambda: None


def _choose_source(api: ComfyAPI, stats: Mapping[str, Any] | None, use_nvml: bool) -> _Chosen:
    dev = ((stats or {}).get("devices") or [None])[0] or {}
    dtype, dname = dev.get("type"), dev.get("name")
    notes: list[str] = []
    nvml_seen_gpu = False
    if use_nvml:
        try:
            nv = NvmlSource(api.target.host_pids)
        except NvmlUnavailable as e:
            notes.append(f"NVML not used: {e}")
        else:
            nvml_seen_gpu = True
            on = nv.target_devices()
            if on:
                name, total = nv.describe(on[0])
                return _Chosen(nv, "nvml", dtype or "cuda", name, total, None, notes, nv.close)
            nv.close()
            notes.append("NVML sees no process of the target on this host's GPUs")
    if stats is None:
        reason = "ComfyUI's /system_stats did not answer"
        return _Chosen(None, None, None, None, None, reason, notes)
    total = dev.get("vram_total")
    chosen = _Chosen(SystemStatsSource(api), "system_stats", dtype, dname, total, None, notes)
    if dtype == "cpu":
        chosen.not_measured = "ComfyUI runs on the CPU" if nvml_seen_gpu else NO_GPU
        notes.append("ComfyUI runs on the CPU: /system_stats reports RAM, not VRAM")
    elif not dev:
        chosen.not_measured = "ComfyUI's /system_stats lists no device"
    return chosen


def free_cache(api: ComfyAPI, settle: float = FREE_SETTLE_S) -> bool:
    """Ask ComfyUI to unload models and drop its caches (its worker thread then resets the
    executor, so every node runs again, and empties torch's cache), and give it a moment."""
    ok = api.post("/free", {"unload_models": True, "free_memory": True}).ok
    if ok:
        time.sleep(settle)
    return ok


def measure_workflow(
    api: ComfyAPI,
    prompt: Mapping[str, Any],
    *,
    timeout: float = 600.0,
    interval: float | None = None,
    progress: Callable[[float], None] | None = None,
    use_nvml: bool = True,
    seed: int | None = None,
    workflow: str | None = None,
) -> Measurement:
    """Run `prompt` once for real and measure it.

    ComfyUI's cache is defeated twice over: POST /free first (drops cached outputs and
    node instances), and every literal `seed`/`noise_seed` input is set to `seed` (a fresh
    random one when None). Pass the same `seed` to a baseline and a later run to compare
    their outputs (`Comparison.same_output`). Raises CheckFailed when the run fails."""
    seed = random.randrange(2**31) if seed is None else seed
    prompt, seed_inputs = vary_seed(prompt, seed)
    stats = api.system_stats()
    chosen = _choose_source(api, stats, use_nvml)
    interval = interval or (NVML_INTERVAL_S if chosen.name == "nvml" else STATS_INTERVAL_S)
    try:
        freed = free_cache(api)
        if chosen.source is None:
            run, peaks = run_workflow(api, prompt, timeout=timeout, progress=progress), None
        else:
            with Sampler(chosen.source, interval) as sampler:
                run = run_workflow(api, prompt, timeout=timeout, progress=progress)
            peaks = sampler.peaks()
    finally:
        chosen.close()
    _raise_if_failed(run)
    m = _measurement(run, peaks, chosen, interval)
    return replace(m, workflow=workflow, seed=seed, seed_inputs=seed_inputs, freed=freed)


def _raise_if_failed(run: WorkflowRun) -> None:
    if run.status == "success":
        return
    detail = next(
        (
            f"{m[1].get('node_type', '?')}: {m[1].get('exception_message', '').strip()}"
            for m in run.messages
            if isinstance(m, list) and len(m) == 2 and m[0] == "execution_error"
        ),
        "see ComfyUI's log",
    )
    raise CheckFailed(f"the workflow failed while being measured ({detail})")


def _measurement(
    run: WorkflowRun, peaks: Peaks | None, chosen: _Chosen, interval: float
) -> Measurement:
    src = chosen.name
    node = node_report(run.ui_texts())
    first = peaks.first if peaks else None
    key = peaks.device_key if peaks else None
    notes = list(chosen.notes)
    if peaks and peaks.errors:
        notes.append(f"{peaks.errors} readings failed, last: {peaks.last_error}")
    node_peak = (node or {}).get("peak_allocated_bytes")
    node_step = (node or {}).get("step_time_s")
    return Measurement(
        source=src,
        device_type=chosen.device_type,
        device_name=chosen.device_name,
        not_measured=chosen.not_measured,
        wall_s=Figure(run.wall_s, "s", "wall"),
        target_peak=Figure(peaks.target if peaks else None, "bytes", src),
        device_peak=Figure(peaks.device if peaks else None, "bytes", src),
        target_idle=Figure(first.target if first else None, "bytes", src),
        device_idle=Figure(first.devices.get(key) if first and key else None, "bytes", src),
        device_total=Figure(chosen.device_total, "bytes", src),
        node_peak_allocated=Figure(node_peak, "bytes", "node" if node_peak is not None else None),
        node_step_time=Figure(node_step, "s", "node" if node_step is not None else None),
        node=node,
        prompt_id=run.prompt_id,
        status=run.status,
        interval_s=interval,
        samples=peaks.samples if peaks else 0,
        sample_errors=peaks.errors if peaks else 0,
        notes=notes,
    )
