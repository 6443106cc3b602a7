"""Gather the evidence (qpatch/evidence.py) from the target, once per plan.

Everything here only reads: the server's /system_stats, its process's argv and allocator
environment (/proc inside the target), its log since its last start, and the first bytes of
the diffusion-model files it loads (8 bytes of length and the JSON header of a safetensors
file: never the tensors, which are many gigabytes). A piece that cannot be had becomes a
fact marked unknown, with the reason: the plan decides what an unknown means.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qpatch import evidence as ev
from qpatch.comfy_api import ComfyAPI
from qpatch.discovery import Layout
from qpatch.evidence import Evidence, Fact
from qpatch.targets.base import Target

LOG_LINES = 3000  # enough to reach back to the last start of a server that has run a while
MAX_FILES = 8  # weight files whose headers are read when no workflow names them
HEADER_LIMIT = 16 * 1024 * 1024  # a real model's header is well under 1 MB
_MODEL_FOLDERS = ("diffusion_models", "unet")


def gather(
    target: Target, layout: Layout, *, workflow: Mapping[str, Any] | None = None
) -> Evidence:
    """The four reads overlap (each is a round trip to the target, one exec or API call)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        stats = pool.submit(_system_stats, target, layout)
        environ = pool.submit(_environ, target, layout.server.pid) if layout.server else None
        log = pool.submit(_log, target)
        weights = pool.submit(_weights, target, layout, workflow)
        facts = ev.from_system_stats(stats.result())
        if layout.server is not None and environ is not None:
            pid = layout.server.pid
            facts["argv"] = Fact("argv", tuple(layout.server.argv), f"/proc/{pid}/cmdline")
            facts["env"] = ev.from_environ(environ.result(), f"/proc/{pid}/environ")
        else:
            facts["env"] = Fact("allocator env", None, "no server process found")
        text = log.result()
        if facts["torch"].value is None and text:
            facts["torch"] = ev.torch_from_log(text)
        facts.update(ev.from_log(text, facts["comfyui"]))
        facts["weights_dtype"] = weights.result()
    return Evidence(**facts)


def _system_stats(target: Target, layout: Layout) -> dict[str, Any] | None:
    try:
        return ComfyAPI(target, layout.python, layout.port).system_stats()
    except Exception:  # a server that is down is evidence too: its facts are unknown
        return None


def _environ(target: Target, pid: int) -> bytes | None:
    r = target.exec(["cat", f"/proc/{pid}/environ"], timeout=10)
    return r.stdout if r.exit_code == 0 else None


def _log(target: Target) -> str:
    try:
        return target.logs(tail=LOG_LINES)
    except Exception:
        return ""


def _weights(target: Target, layout: Layout, workflow: Mapping[str, Any] | None) -> Fact:
    """The dtype of the diffusion model's weights: of the files the workflow loads, or, with
    no workflow, of those in models/diffusion_models and models/unet."""
    models = posixpath.join(layout.root, "models")
    if workflow is not None:
        files, casts = ev.workflow_weights(workflow)
        if casts:
            cast = sorted(set(casts.values()))
            value = cast[0] if len(cast) == 1 else tuple(cast)
            return Fact("weights dtype", value, "the workflow's loader: weight_dtype input")
        if not files:
            return Fact(
                "weights dtype", None, "the workflow loads no diffusion-model file qpatch knows"
            )
        paths = [_find(target, models, name, folders) for name, folders in files]
        found = {p: _dtype(target, p) for p in paths if p}
        return ev.dtype_fact(found, "the workflow's model files")
    r = target.exec(
        [
            "find",
            *(posixpath.join(models, f) for f in _MODEL_FOLDERS),
            "-maxdepth",
            "3",
            "-name",
            "*.safetensors",
            "-type",
            "f",
        ],
        timeout=20,
    )
    paths = sorted(p for p in r.text.splitlines() if p)[:MAX_FILES]
    if not paths:
        return Fact(
            "weights dtype", None, "no .safetensors in models/diffusion_models or models/unet"
        )
    return ev.dtype_fact({p: _dtype(target, p) for p in paths}, "models/diffusion_models")


def _find(target: Target, models: str, name: str, folders: tuple[str, ...]) -> str | None:
    for folder in folders:
        path = posixpath.normpath(posixpath.join(models, folder, name))
        if path.startswith(models + "/") and target.exists(path):
            return path
    return None


def _dtype(target: Target, path: str) -> str | None:
    head = target.exec(["head", "-c", "9", "--", path], timeout=20)
    n = ev.header_length(head.stdout) if head.exit_code == 0 else None
    if n is None or n > HEADER_LIMIT or head.stdout[8:9] != b"{":
        return None  # no safetensors file: nothing more of it is read
    r = target.exec(["head", "-c", str(8 + n), "--", path], timeout=60)
    return ev.weights_dtype(r.stdout) if r.exit_code == 0 else None
