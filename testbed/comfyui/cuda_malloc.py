"""Choose torch's CUDA allocator backend before torch is imported, as upstream does.

On a CUDA build of torch >= 2.0 ComfyUI runs the cudaMallocAsync backend unless
`--disable-cuda-malloc`: it appends `backend:cudaMallocAsync` to PYTORCH_CUDA_ALLOC_CONF
(or sets it). Allocator options of the native backend (`expandable_segments`,
`max_split_size_mb`) then do nothing, which is why qpatch's patch adds
`--disable-cuda-malloc` next to them. The torch version and build are read from torch's
version.py without importing torch: once torch is imported the variable is fixed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from comfy.cli_args import args

ENV = "PYTORCH_CUDA_ALLOC_CONF"
ASYNC = "backend:cudaMallocAsync"


def torch_build() -> tuple[str, str | None]:
    """(version, cuda version or None) of the installed torch, from its version.py."""
    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        version_file = Path(folder) / "version.py"
        if version_file.is_file():
            found: dict[str, object] = {}
            exec(compile(version_file.read_text(), str(version_file), "exec"), found)
            cuda = found.get("cuda")
            return str(found.get("__version__", "")), str(cuda) if cuda else None
    return "", None


def async_by_default() -> bool:
    version, cuda = torch_build()
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return False
    return major >= 2 and cuda is not None and not args.cpu


def configure() -> bool:
    """Set the variable; True when the cudaMallocAsync backend was asked for."""
    wanted = (args.cuda_malloc or async_by_default()) and not args.disable_cuda_malloc
    if wanted:
        current = os.environ.get(ENV)
        os.environ[ENV] = ASYNC if not current else f"{current},{ASYNC}"
    return wanted


ASYNC_REQUESTED = configure()
