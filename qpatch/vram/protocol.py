"""ComfyUI's side of a measurement: how a workflow run is made worth measuring, and what
a node may say about itself.

ComfyUI caches outputs and node instances, so a second run of the same prompt would cost
nothing and measure nothing: every literal ``seed``/``noise_seed`` input is varied and
POST /free is asked first. The sampler cannot see inside torch, so a node may report its own
figures as a ui text that is a JSON object (the node-figures contract, `NODE_KEYS`):
``peak_allocated_bytes`` (``torch.cuda.max_memory_allocated``), ``step_time_s`` (median per
step) and ``output_checksum`` (compared when both runs used one seed).

**A killed run.** Today's transport cannot tell a dead server from a slow one by itself:
every request is an exec in the target, so a container that stopped makes the exec fail
(a QpatchError out of `run_workflow`), while a dead local server answers each /history poll
with status 0 ("no answer"), which `run_workflow` takes for "not done yet" until its 600 s
limit. A run ComfyUI itself cut (POST /interrupt) ends with an ``execution_interrupted``
message instead of ``execution_error``. All three are one outcome here, KILLED: a
`_Watch` asks the target's state every second while the run is polled (stopped, or
restarted by its runtime: killed at once), an error out of the run is classified by asking
again (`_server_gone`: stopped, restarted, or no longer answering HTTP), and the
interrupted message is read by `run_failure`.

This is the part that changes with ComfyUI's API; the readings come from `sources` and the
figures they make are `figures`' business.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from qpatch.comfy_api import ComfyAPI
from qpatch.errors import CheckFailed, QpatchError
from qpatch.targets.base import Target, TargetState
from qpatch.vram.figures import KILLED, NO_GPU, OUT_OF_MEMORY, Figure, Measurement
from qpatch.vram.sources import (
    NVML_INTERVAL_S,
    STATS_INTERVAL_S,
    HostRss,
    NvmlSource,
    NvmlUnavailable,
    Peaks,
    PidCache,
    Sampler,
    SampleSource,
    SystemStatsSource,
    host_ram_unseen,
)
from qpatch.workflow import WorkflowRun, run_workflow

FREE_SETTLE_S = 1.0  # ComfyUI's worker thread drops its caches after /free, not during it
#: Integer inputs that only change what is generated, so varying them is harmless.
SEED_INPUTS = ("seed", "noise_seed")
#: A ui text that is a JSON object with any of these keys is a node's own report.
NODE_KEYS = ("peak_allocated_bytes", "step_time_s", "output_checksum")
WATCH_S = 1.0  # how often a running measurement asks whether the server is still there


def new_seed() -> int:
    """One seed for every run of a series, so their outputs (and the next series') compare."""
    return random.randrange(2**31)


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


def checked_node_report(
    node: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The node's report with every contract key that is not a number (or null) dropped,
    and a note for each: a node's typo must never crash a measurement or fake a figure.
    Keys outside the contract are the node's own business and stay as they are."""
    if node is None:
        return None, []
    kept, notes = dict(node), []
    for key in NODE_KEYS:
        value = kept.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            notes.append(f"the node's {key} is not a number ({value!r}): ignored")
            del kept[key]
        elif key != "output_checksum" and value < 0:
            notes.append(f"the node's {key} is negative ({value!r}): ignored")
            del kept[key]
    return kept, notes


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


def _choose_source(
    api: ComfyAPI,
    stats: Mapping[str, Any] | None,
    use_nvml: bool,
    pids: Callable[[], Iterable[int]] | None = None,
) -> _Chosen:
    dev = ((stats or {}).get("devices") or [None])[0] or {}
    dtype, dname = dev.get("type"), dev.get("name")
    notes: list[str] = []
    nvml_seen_gpu = False
    if use_nvml:
        try:
            nv = NvmlSource(pids or api.target.host_pids)
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


def _host_ram(
    target: Target, pids: Callable[[], Iterable[int]]
) -> tuple[HostRss | None, str | None]:
    """The host RAM reader for the target's processes, or why there is none."""
    try:
        listed = list(pids())
        servers = [p.argv for p in target.server_processes()]
    except QpatchError as e:
        return None, f"the target's processes could not be listed: {e}"
    reason = host_ram_unseen(listed, servers)
    return (None, reason) if reason else (HostRss(pids), None)


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
    allow_oom: bool = False,
    allow_killed: bool = False,
) -> Measurement:
    """Run `prompt` once for real and measure it.

    ComfyUI's cache is defeated twice over: POST /free first (drops cached outputs and
    node instances), and every literal `seed`/`noise_seed` input is set to `seed` (a fresh
    random one when None). Pass the same `seed` to a baseline and a later run to compare
    their outputs (`Comparison.same_output`). Raises CheckFailed when the run fails —
    unless it ran out of GPU memory and `allow_oom`: that is the case users come with, so
    the run is a result (outcome "out-of-memory", with the peak it reached). A run that
    was killed (the module's docstring) is a result with `allow_killed` (outcome
    "killed", with the reason), a CheckFailed without."""
    seed = new_seed() if seed is None else seed
    prompt, seed_inputs = vary_seed(prompt, seed)
    stats = api.system_stats()
    pids = PidCache(api.target.host_pids)
    chosen = _choose_source(api, stats, use_nvml, pids)
    rss, rss_unseen = _host_ram(api.target, pids)
    interval = interval or (STATS_INTERVAL_S if chosen.name == "system_stats" else NVML_INTERVAL_S)
    watch = _Watch(api.target, progress)
    started = time.monotonic()
    killed: str | None = None
    try:
        freed = free_cache(api)
        with Sampler(chosen.source, interval, rss) as sampler:
            try:
                run: WorkflowRun | None = run_workflow(api, prompt, timeout=timeout, progress=watch)
            except RunKilled as e:
                run, killed = None, str(e)
            except QpatchError as e:  # the exec carrying a request failed, or time ran out
                gone = _server_gone(api, watch.start, e)
                if gone is None:
                    raise
                run, killed = None, gone
        peaks = sampler.peaks() if chosen.source is not None or rss is not None else None
    finally:
        chosen.close()
    if run is None:
        wall = time.monotonic() - started
        run = WorkflowRun("", wall, "killed", {}, [])
        failure: RunFailure | None = RunFailure("?", "killed", killed or "the run was cut")
    else:
        failure = run_failure(run)
    if failure is not None and not (
        (allow_oom and failure.out_of_memory) or (allow_killed and failure.killed)
    ):
        what = "was killed" if failure.killed else "failed"
        raise CheckFailed(f"the workflow {what} while being measured ({failure})")
    m = _measurement(run, peaks, chosen, interval, rss_unseen)
    if failure is not None:
        outcome = KILLED if failure.killed else OUT_OF_MEMORY
        m = replace(m, outcome=outcome, error=failure.message, prompt_id=run.prompt_id or None)
    return replace(m, workflow=workflow, seed=seed, seed_inputs=seed_inputs, freed=freed)


class RunKilled(CheckFailed):
    """The server went away while a run was measured; the message says how."""


class _Watch:
    """The progress callback of a measured run, which also asks the target, every
    WATCH_S, whether its server still runs: a server that stopped or was restarted by its
    runtime ends the run as killed at once, not at run_workflow's 600 s limit."""

    def __init__(self, target: Target, progress: Callable[[float], None] | None) -> None:
        self.target = target
        self.progress = progress
        self.start = _state(target)
        self._next = time.monotonic() + WATCH_S

    def __call__(self, elapsed: float) -> None:
        if self.progress is not None:
            self.progress(elapsed)
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + WATCH_S
        gone = _stopped(_state(self.target), self.start)
        if gone is not None:
            raise RunKilled(gone)


def _state(target: Target) -> TargetState | None:
    """The target's state, or None when it cannot say right now (never fatal here)."""
    try:
        return target.state()
    except QpatchError:
        return None


def _stopped(now: TargetState | None, start: TargetState | None) -> str | None:
    if now is None:
        return None
    if not now.running:
        return f"the server stopped during the run ({now.detail})"
    if start is not None and now.restarts > start.restarts:
        return f"the server was restarted during the run ({now.restarts - start.restarts}x)"
    return None


def _server_gone(api: ComfyAPI, start: TargetState | None, error: QpatchError) -> str | None:
    """Why the run's `error` means the server went away, or None: a real error (a hang
    with the server up, a refused prompt) stays one."""
    gone = _stopped(_state(api.target), start)
    if gone is not None:
        return gone
    try:
        answers = api.system_stats() is not None
    except QpatchError:
        answers = False
    return None if answers else f"ComfyUI stopped answering HTTP during the run ({error})"


@dataclass(frozen=True)
class RunFailure:
    """Why ComfyUI says a run failed: the node and its exception, as /history carries them."""

    node_type: str
    exception_type: str  # "killed": the server went away, or ComfyUI cut the run
    message: str

    @property
    def out_of_memory(self) -> bool:
        """torch's own OutOfMemoryError, or its message where a node re-raised it."""
        return "OutOfMemoryError" in self.exception_type or any(
            marker in self.message for marker in OOM_MARKERS
        )

    @property
    def killed(self) -> bool:
        return self.exception_type == "killed"

    def __str__(self) -> str:
        return f"{self.node_type}: {self.message.strip()}"


#: What torch's allocators say when the device is full (CUDA, and the same words on ROCm).
OOM_MARKERS = ("CUDA out of memory", "HIP out of memory", "out of memory on device")


def run_failure(run: WorkflowRun) -> RunFailure | None:
    if run.status == "success":
        return None
    for m in run.messages:
        if not (isinstance(m, list) and len(m) == 2):
            continue
        e = m[1] if isinstance(m[1], dict) else {}
        if m[0] == "execution_error":
            return RunFailure(
                str(e.get("node_type", "?")),
                str(e.get("exception_type", "")),
                str(e.get("exception_message", "")),
            )
        if m[0] == "execution_interrupted":  # POST /interrupt, or a node that cut the run
            node = str(e.get("node_type", "?"))
            return RunFailure(node, "killed", f"ComfyUI says the run was interrupted at {node}")
    return RunFailure("?", "", "see ComfyUI's log")


def _measurement(
    run: WorkflowRun,
    peaks: Peaks | None,
    chosen: _Chosen,
    interval: float,
    host_ram_unseen: str | None = None,
) -> Measurement:
    src = chosen.name
    node = node_report(run.ui_texts())
    first = peaks.first if peaks else None
    key = peaks.device_key if peaks else None
    notes = list(chosen.notes)
    if peaks and peaks.errors:
        notes.append(f"{peaks.errors} readings failed, last: {peaks.last_error}")
    node, node_notes = checked_node_report(node)
    notes += node_notes
    node_peak = (node or {}).get("peak_allocated_bytes")
    node_step = (node or {}).get("step_time_s")
    rss = peaks.host_rss if peaks else None
    if rss is None and host_ram_unseen is None:
        host_ram_unseen = "no reading of the target's processes succeeded"
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
        host_ram_peak=Figure(rss, "bytes", "proc" if rss is not None else None),
        host_ram_not_measured=None if rss is not None else host_ram_unseen,
    )
