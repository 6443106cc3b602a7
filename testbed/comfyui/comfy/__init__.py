"""qpatch's ComfyUI stand-in: the `comfy` package, as far as qpatch and custom nodes use it."""
