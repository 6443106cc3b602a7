"""Run an API-format workflow through ComfyUI's own queue, as a user's browser would:
POST /prompt, then poll /history/<id> until it is done."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpatch.comfy_api import ComfyAPI
from qpatch.errors import BadInput, CheckFailed

POLL_S = 0.2


@dataclass(frozen=True)
class WorkflowRun:
    prompt_id: str
    wall_s: float
    status: str  # ComfyUI's status_str: "success" or "error"
    outputs: dict[str, Any]
    messages: list[Any]

    def ui_texts(self) -> list[str]:
        """Every `ui.text` entry the output nodes left, in node order."""
        texts: list[str] = []
        for node_id in sorted(self.outputs):
            texts.extend(self.outputs[node_id].get("text", []))
        return texts


def load_workflow(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInput(f"workflow {p}: {e}") from e
    if not isinstance(data, dict) or not all(
        isinstance(n, dict) and "class_type" in n for n in data.values()
    ):
        raise BadInput(
            f"workflow {p}: not in ComfyUI's API format",
            hint='export it with "Save (API Format)": {node_id: {"class_type", "inputs"}}',
        )
    return data


def run_workflow(
    api: ComfyAPI,
    prompt: dict[str, Any],
    *,
    timeout: float = 600.0,
    progress: Callable[[float], None] | None = None,
) -> WorkflowRun:
    body = {"prompt": prompt, "client_id": f"qpatch-{uuid.uuid4().hex}"}
    t0 = time.monotonic()
    r = api.post("/prompt", body, timeout=30)
    if not r.ok:
        raise CheckFailed(f"ComfyUI refused the workflow (HTTP {r.status}): {r.text[:800]}")
    prompt_id = r.json()["prompt_id"]
    while True:
        elapsed = time.monotonic() - t0
        h = api.get(f"/history/{prompt_id}")
        entry = h.json().get(prompt_id) if h.ok else None
        if (
            entry
            and entry.get("status", {}).get("completed") is not None
            and (entry["status"].get("status_str") in ("success", "error"))
        ):
            return WorkflowRun(
                prompt_id,
                time.monotonic() - t0,
                entry["status"]["status_str"],
                entry.get("outputs", {}),
                entry["status"].get("messages", []),
            )
        if elapsed > timeout:
            raise CheckFailed(f"workflow {prompt_id} not done after {timeout:.0f} s")
        if progress:
            progress(elapsed)
        time.sleep(POLL_S)
