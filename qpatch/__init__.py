"""qpatch: make a running ComfyUI fit in GPU memory by patching it safely."""

__version__ = "0.1.0"
