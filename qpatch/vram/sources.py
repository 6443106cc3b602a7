"""Where the memory readings come from, and the thread that keeps their peaks.

Two sources, tried in this order (`protocol` chooses):

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

**Host RAM** of the target's processes (`HostRss`): their resident set sizes summed, from
``/proc/<pid>/statm`` on this host, read by the same sampler thread at the same moments.
Only where this host sees those processes (`host_ram_unseen` says why not: a remote engine,
another PID namespace); shared pages count once per process that maps them, so a forked
tree reads a little high, which one python (ComfyUI) does not.

Which GPU "the device" is: the one the target used most (ComfyUI runs a workflow on one
device). Summing a host's GPUs would add other tenants' memory and dilute the ratio; taking
the busiest GPU could report someone else's card.

Hardware and ComfyUI's stats change for their own reasons, so nothing here knows how a
figure is compared or how a workflow is run.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpatch.comfy_api import ComfyAPI

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency; a broken install must not stop a patch
    pynvml = None

NVML_INTERVAL_S = 0.02
STATS_INTERVAL_S = 0.25  # each /system_stats reading is an exec in the target
PID_REFRESH_S = 1.0  # container.top() is an API call: not on every 20 ms reading


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
#: Host RAM of the target's processes in bytes, or None when none of them is readable.
RssSource = Callable[[], "int | None"]


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
    host_rss: int | None = None  # peak RSS summed over the target's processes on this host


class Sampler:
    """Keeps the peak of a source's readings, read every `interval` seconds on a thread,
    and of the host RAM of the target's processes (`host_rss`) at the same moments.

    One reading is taken when it starts and one when it stops, so even a run shorter than
    the interval has a before and an after. A reading that fails is counted, not fatal: a
    measurement must never break the workflow it measures."""

    def __init__(
        self,
        source: SampleSource | None,
        interval: float = NVML_INTERVAL_S,
        host_rss: RssSource | None = None,
    ) -> None:
        self.source = source
        self.host_rss = host_rss
        self.interval = interval
        self._rss: int | None = None
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
        if self.source is not None:
            s = self._read(self.source)
            if s is not None:
                self._add(s)
        if self.host_rss is not None:
            rss = self._read(self.host_rss)
            if rss is not None:
                with self._lock:
                    self._rss = rss if self._rss is None else max(self._rss, rss)

    def _read(self, source: Callable[[], Any]) -> Any:
        try:
            return source()
        except Exception as e:  # any failure of a source is one skipped reading
            with self._lock:
                self._errors += 1
                self._last_error = f"{type(e).__name__}: {e}"
            return None

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
                host_rss=self._rss,
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


# -- host RAM of the target's processes --------------------------------------------------------

PROC = Path("/proc")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class HostRss:
    """The resident memory of the target's processes on this host, summed: field 2 of
    /proc/<pid>/statm (resident pages; VmRSS of /proc/<pid>/status, without the parsing)
    times the page size. A process that ended since the PIDs were listed is skipped."""

    name = "proc"

    def __init__(self, pids: Callable[[], Iterable[int]], proc: Path = PROC) -> None:
        self._pids = pids
        self._proc = proc

    def __call__(self) -> int | None:
        total, seen = 0, False
        for pid in self._pids():
            try:
                resident = (self._proc / str(pid) / "statm").read_text().split()[1]
            except (OSError, IndexError):
                continue
            total += int(resident) * PAGE_SIZE
            seen = True
        return total if seen else None


def host_ram_unseen(
    pids: Sequence[int], servers: Sequence[Sequence[str]], proc: Path = PROC
) -> str | None:
    """Why this host cannot read the RAM of the target's processes; None: it can.

    `pids` are the target's processes as its runtime reports them (`Target.host_pids`),
    `servers` the argv of ComfyUI's server as the target sees it (`server_processes`). A
    remote engine reports its own host's PIDs: here they name nothing, or someone else's
    processes, so at least one of them must run the server's own command line."""
    if not proc.is_dir():
        return f"this host has no {proc}"
    if not pids:
        return "the target names no processes on this host"
    seen = {pid: argv for pid in pids if (argv := _cmdline(proc, pid)) is not None}
    if not seen:
        return (
            f"the target's processes (PIDs {_few(pids)}) are not visible from this host: "
            "a remote engine or another PID namespace"
        )
    wanted = {tuple(a) for a in servers}
    if wanted and not wanted & set(seen.values()):
        return (
            f"PIDs {_few(pids)} run other programs on this host: the target's processes "
            "live elsewhere (a remote engine)"
        )
    return None


def _cmdline(proc: Path, pid: int) -> tuple[str, ...] | None:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return tuple(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)


def _few(pids: Sequence[int]) -> str:
    shown = ", ".join(str(p) for p in list(pids)[:5])
    return shown + (", …" if len(pids) > 5 else "")
