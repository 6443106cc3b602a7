"""Choose torch's CUDA allocator backend before torch is imported, as upstream does.

On a CUDA build of torch >= 2.0 ComfyUI runs the cudaMallocAsync backend unless
`--disable-cuda-malloc`: it appends `backend:cudaMallocAsync` to PYTORCH_CUDA_ALLOC_CONF
(or sets it). Allocator options of the native backend (`expandable_segments`,
`max_split_size_mb`) then do nothing, which is why qpatch's patch adds
`--disable-cuda-malloc` next to them. The torch version and build are read from torch's
version.py without importing torch: once torch is imported the variable is fixed.

With COMFYUI_STANDIN_PROFILE=current it does what upstream master's cuda_malloc.py does
instead (comfy/profile.py decides): `expandable_segments:True` is taken out of the variable
every time, the backend is chosen from the torch version string (and, on CUDA 12 and older,
the card's name), and an empty variable is unset. Neither profile prints a line here; the
backend shows in model_management's `Device: ... : cudaMallocAsync` line.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import MutableMapping
from pathlib import Path

from comfy import profile
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


def conf_0141(value: str | None, wanted: bool) -> str | None:
    """0.14.1's new value of the variable: the backend appended when wanted, else as it was."""
    if not wanted:
        return value
    return ASYNC if not value else f"{value},{ASYNC}"


def gpu_names() -> list[str]:
    """`nvidia-smi -L` names (upstream's way, before torch); none when it cannot run."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(" (UUID")[0] for line in out.splitlines() if line]


def configure(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set the variable; True when the cudaMallocAsync backend was asked for."""
    if profile.CURRENT:
        wanted = profile.cuda_malloc_current(args, torch_build()[0], gpu_names)
        args.cuda_malloc = wanted
        profile.apply_alloc_conf(environ, profile.alloc_conf_current(environ.get(ENV), wanted))
        return wanted
    wanted = (args.cuda_malloc or async_by_default()) and not args.disable_cuda_malloc
    if wanted:
        environ[ENV] = conf_0141(environ.get(ENV), wanted)
    return wanted


ASYNC_REQUESTED = configure()
