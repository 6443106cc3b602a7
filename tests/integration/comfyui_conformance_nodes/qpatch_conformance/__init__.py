"""Nodes that let tests/integration/test_comfyui_conformance.py observe ComfyUI's execution
rules from outside, through /prompt and /history only: how often a node ran, whether it
ran under inference mode, what an error or an IS_CHANGED of each kind does.

Install this folder into the custom_nodes/ of any ComfyUI to run the conformance tests
against it (QPATCH_COMFYUI_URL); the test bed does so for the stand-in. Written for
qpatch; the node contract (INPUT_TYPES, RETURN_TYPES, FUNCTION, OUTPUT_NODE, a dict with
"ui" and "result") is ComfyUI's.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import torch

#: (class, tag) -> how many times the node's function ran in this process
RUNS: collections.Counter[tuple[str, str]] = collections.Counter()


def _report(cls: type, tag: str, value: int) -> dict[str, Any]:
    RUNS[(cls.__name__, tag)] += 1
    report = {
        "node": cls.__name__,
        "tag": tag,
        "value": value,
        "runs": RUNS[(cls.__name__, tag)],
        "inference_mode": torch.is_inference_mode_enabled(),
        "grad_enabled": torch.is_grad_enabled(),
    }
    return {"ui": {"text": [json.dumps(report)]}, "result": (value,)}


class QpatchCounter:
    """No IS_CHANGED: cached by its inputs."""

    CATEGORY = "qpatch/conformance"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "tag": ("STRING", {"default": "a"}),
                "value": ("INT", {"default": 0, "min": 0, "max": 1000}),
            }
        }

    def run(self, tag: str, value: int) -> dict[str, Any]:
        return _report(type(self), tag, value)


class QpatchNaNChanged(QpatchCounter):
    """IS_CHANGED returns NaN: never equal to itself, so the node runs on every prompt."""

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        return float("nan")


class QpatchConstantChanged(QpatchCounter):
    """A classmethod IS_CHANGED with a stable value: cached like a node without one."""

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> str:
        return f"stable-{kwargs.get('tag')}"


class QpatchInstanceChanged(QpatchCounter):
    """IS_CHANGED without @classmethod, as the blog post writes it: called on the class it
    misses `self`, raises, and counts as NaN."""

    def IS_CHANGED(self, **kwargs: Any) -> str:  # noqa: N802 - ComfyUI's name
        return "stable"


class QpatchRaises(QpatchCounter):
    """Fails with a known message: /history must carry it."""

    def run(self, tag: str, value: int) -> dict[str, Any]:
        raise RuntimeError(f"qpatch conformance failure {tag}")


class QpatchOutOfMemory(QpatchCounter):
    """Fails as a node that runs out of GPU memory does, with torch's own exception."""

    def run(self, tag: str, value: int) -> dict[str, Any]:
        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB (qpatch conformance)"
        )


class QpatchAdd:
    """Not an output: runs only as an input of one, through a link."""

    CATEGORY = "qpatch/conformance"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def run(self, value: int) -> tuple[int]:
        RUNS[("QpatchAdd", "")] += 1
        return (value + 1,)


NODE_CLASS_MAPPINGS = {
    cls.__name__: cls
    for cls in (
        QpatchCounter,
        QpatchNaNChanged,
        QpatchConstantChanged,
        QpatchInstanceChanged,
        QpatchRaises,
        QpatchOutOfMemory,
        QpatchAdd,
    )
}
