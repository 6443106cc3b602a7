"""How ComfyUI's entry point is named on a command line, in one place: the launch-line
editor, the container command, discovery and the process scan all ask the same question."""

from __future__ import annotations

MAIN_PY = "main.py"


def is_main_py(word: str) -> bool:
    """`main.py` itself or a path ending in it (`/root/ComfyUI/main.py`, `ComfyUI/main.py`)."""
    return word == MAIN_PY or word.endswith("/" + MAIN_PY)
