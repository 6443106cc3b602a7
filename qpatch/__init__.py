"""qpatch: make a running ComfyUI fit in GPU memory by patching it safely."""

import importlib
import importlib.util
import sys
import types
from typing import Any

__version__ = "0.1.0"


def _defer_paramiko() -> None:
    """docker-py imports paramiko (and with it cryptography: 0.15 s) when it is imported
    itself, though only its own ssh:// transport uses it, and qpatch's ssh goes through
    the system's ssh binary. So `paramiko` starts as a stand-in module that imports the
    real one at the first attribute asked of it: a command that never asks pays nothing.
    (The stdlib's LazyLoader would load at once: `import` reads the module's __spec__.)"""
    if "paramiko" in sys.modules or importlib.util.find_spec("paramiko") is None:
        return
    stand_in = types.ModuleType("paramiko", "loaded on first use (qpatch._defer_paramiko)")

    def load(name: str) -> Any:
        if sys.modules.get("paramiko") is stand_in:
            del sys.modules["paramiko"]
        return getattr(importlib.import_module("paramiko"), name)

    stand_in.__getattr__ = load  # type: ignore[method-assign]
    sys.modules["paramiko"] = stand_in


_defer_paramiko()
