"""ComfyUI's side of a measurement: how a workflow run is made worth measuring, and what
a node may say about itself.

ComfyUI caches outputs and node instances, so a second run of the same prompt would cost
nothing and measure nothing: every literal ``seed``/``noise_seed`` input is varied and
POST /free is asked first. The sampler cannot see inside torch, so a node may report its own
figures as a ui text that is a JSON object (the node-figures contract, `NODE_KEYS`):
``peak_allocated_bytes`` (``torch.cuda.max_memory_allocated``), ``step_time_s`` (median per
step) and ``output_checksum`` (compared when both runs used one seed).

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
from qpatch.errors import CheckFailed
from qpatch.vram.figures import NO_GPU, OUT_OF_MEMORY, Figure, Measurement
from qpatch.vram.sources import (
    NVML_INTERVAL_S,
    STATS_INTERVAL_S,
    NvmlSource,
    NvmlUnavailable,
    Peaks,
    Sampler,
    SampleSource,
    SystemStatsSource,
)
from qpatch.workflow import WorkflowRun, run_workflow

FREE_SETTLE_S = 1.0  # ComfyUI's worker thread drops its caches after /free, not during it
#: Integer inputs that only change what is generated, so varying them is harmless.
SEED_INPUTS = ("seed", "noise_seed")
#: A ui text that is a JSON object with any of these keys is a node's own report.
NODE_KEYS = ("peak_allocated_bytes", "step_time_s", "output_checksum")


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
    allow_oom: bool = False,
) -> Measurement:
    """Run `prompt` once for real and measure it.

    ComfyUI's cache is defeated twice over: POST /free first (drops cached outputs and
    node instances), and every literal `seed`/`noise_seed` input is set to `seed` (a fresh
    random one when None). Pass the same `seed` to a baseline and a later run to compare
    their outputs (`Comparison.same_output`). Raises CheckFailed when the run fails —
    unless it ran out of GPU memory and `allow_oom`: that is the case users come with, so
    the run is a result (outcome "out-of-memory", with the peak it reached)."""
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
    failure = run_failure(run)
    if failure is not None and not (allow_oom and failure.out_of_memory):
        raise CheckFailed(f"the workflow failed while being measured ({failure})")
    m = _measurement(run, peaks, chosen, interval)
    if failure is not None:
        m = replace(m, outcome=OUT_OF_MEMORY, error=failure.message)
    return replace(m, workflow=workflow, seed=seed, seed_inputs=seed_inputs, freed=freed)


@dataclass(frozen=True)
class RunFailure:
    """Why ComfyUI says a run failed: the node and its exception, as /history carries them."""

    node_type: str
    exception_type: str
    message: str

    @property
    def out_of_memory(self) -> bool:
        """torch's own OutOfMemoryError, or its message where a node re-raised it."""
        return "OutOfMemoryError" in self.exception_type or any(
            marker in self.message for marker in OOM_MARKERS
        )

    def __str__(self) -> str:
        return f"{self.node_type}: {self.message.strip()}"


#: What torch's allocators say when the device is full (CUDA, and the same words on ROCm).
OOM_MARKERS = ("CUDA out of memory", "HIP out of memory", "out of memory on device")


def run_failure(run: WorkflowRun) -> RunFailure | None:
    if run.status == "success":
        return None
    for m in run.messages:
        if isinstance(m, list) and len(m) == 2 and m[0] == "execution_error":
            e = m[1] if isinstance(m[1], dict) else {}
            return RunFailure(
                str(e.get("node_type", "?")),
                str(e.get("exception_type", "")),
                str(e.get("exception_message", "")),
            )
    return RunFailure("?", "", "see ComfyUI's log")


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
    node, node_notes = checked_node_report(node)
    notes += node_notes
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
