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
from qpatch.vram.figures import NO_GPU, Figure, Measurement
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
