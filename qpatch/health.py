"""The health gate: ComfyUI answers /system_stats from inside the target, and the target
is running and not restart-looping. Nothing else tells us a patched server really works."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qpatch.comfy_api import ComfyAPI
from qpatch.errors import CheckFailed
from qpatch.output import Console

POLL_S = 0.5
#: How long one exec keeps asking before the target's state is looked at again: a dead or
#: restart-looping target is seen within this, and a starting one costs one exec per slice.
SLICE_S = 3.0


def wait_healthy(
    api: ComfyAPI,
    *,
    timeout: float = 180.0,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Return /system_stats once it answers; raise CheckFailed saying why it never did."""
    target = api.target
    t0 = time.monotonic()
    restarts0 = target.state().restarts
    while True:
        elapsed = time.monotonic() - t0
        state = target.state()
        if not state.running:
            raise CheckFailed(f"ComfyUI is not running: {target.description} {state.detail}")
        if state.restarts > restarts0 + 1:
            raise CheckFailed(
                f"{target.description} is restart-looping ({state.restarts - restarts0} restarts)"
            )
        stats = api.system_stats(retry_for=min(SLICE_S, max(0.0, timeout - elapsed)))
        if stats is not None:
            return stats
        elapsed = time.monotonic() - t0
        if elapsed > timeout:
            raise CheckFailed(f"ComfyUI did not answer /system_stats within {timeout:.0f} s")
        if progress:
            progress(elapsed)
        time.sleep(POLL_S)


def wait_healthy_shown(
    api: ComfyAPI, out: Console, *, timeout: float, where: str = ""
) -> dict[str, Any]:
    """wait_healthy with the progress line and the one-line outcome every command prints."""
    suffix = f" in {where}" if where else ""
    show = out.progress(f"waiting for /system_stats{suffix}")
    try:
        stats = wait_healthy(api, timeout=timeout, progress=show)
    finally:
        out.end_progress()
    out.ok(f"ComfyUI answers{suffix} ({stats['system'].get('comfyui_version', '?')})")
    return stats
