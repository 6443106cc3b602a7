"""Which upstream ComfyUI the stand-in imitates, and every decision that differs between them.

`COMFYUI_STANDIN_PROFILE` picks the profile: `0.14.1` (the default, unchanged) or `current`
(upstream master as read for the stand-in: ComfyUI 0.38.1, Comfy-Org/ComfyUI). Where the two
differ in something qpatch's rules rest on (flags, Dynamic VRAM, the allocator variable), the
difference is decided here, in pure functions of their inputs, so unit tests need neither a GPU
nor a running server. The current profile's flags live in comfy/cli_args_current.py.

What the current profile reproduces, as upstream master does it:
- Dynamic VRAM (comfy-aimdo) is asked for unless `--disable-dynamic-vram`, `--highvram`,
  `--gpu-only`, `--novram` or `--cpu`; `--enable-dynamic-vram` asks for it whatever else is
  given. It comes on only where it is supported (an NVIDIA CUDA torch; ROCm 7.14 or later) and
  torch is 2.8 or later, unless `--enable-dynamic-vram` forces it.
- `--lowvram` still sets (and logs) the LOW_VRAM state, but does nothing under Dynamic VRAM.
- cuda_malloc.py removes `expandable_segments:True` from PYTORCH_CUDA_ALLOC_CONF every time
  (not only under Dynamic VRAM), then appends `backend:cudaMallocAsync` when that backend is
  chosen, and unsets the variable when nothing is left. PYTORCH_ALLOC_CONF is neither read nor
  written by ComfyUI (torch reads it; that is torch's business, not the stand-in's).

This module imports only the standard library: `main.py --help` must not load torch.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ENV = "COMFYUI_STANDIN_PROFILE"
DEFAULT = "0.14.1"
CURRENT_NAME = "current"
PROFILES = (DEFAULT, CURRENT_NAME)

#: The version each profile reports (comfyui_version.py, /system_stats). `current` is what the
#: newest stored upstream snapshot says: comfyui_version.py / pyproject.toml at
#: Comfy-Org/ComfyUI 20ca544ee0436721d8eb5f544665e490609f72c8.
VERSIONS = {DEFAULT: "0.14.1", CURRENT_NAME: "0.38.1"}


def selected(environ: Mapping[str, str] = os.environ) -> str:
    """The profile the environment asks for; an unknown name stops the process (exit 2)."""
    name = environ.get(ENV, "").strip() or DEFAULT
    if name not in PROFILES:
        print(
            f"{ENV}={name!r}: unknown stand-in profile (one of: {', '.join(PROFILES)})",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return name


NAME = selected()
CURRENT = NAME == CURRENT_NAME


def version(name: str = NAME) -> str:
    return VERSIONS[name]


# ------------------------------------------------------------------------- Dynamic VRAM

#: Upstream's lines, word for word (Comfy-Org/ComfyUI main.py, 02018c7e).
DYNAMIC_VRAM_ENABLED = "DynamicVRAM support detected and enabled"
DYNAMIC_VRAM_NO_AIMDO = (
    "No working comfy-aimdo install detected. DynamicVRAM support disabled. Falling back to "
    "legacy ModelPatcher. VRAM estimates may be unreliable especially on Windows"
)
DYNAMIC_VRAM_OLD_TORCH = (
    "Unsupported Pytorch detected. DynamicVRAM support requires Pytorch version 2.8 or later "
    "(2.12+ is recommended). Falling back to legacy ModelPatcher. VRAM estimates may be "
    "unreliable especially on Windows"
)
DYNAMIC_VRAM_DISABLED_BY_FLAG = (
    "Dynamic vram disabled with argument. If you have any issues with dynamic vram enabled "
    "please give us a detailed reports as this argument will be removed soon. If you use gguf "
    "we recommend keeping dynamic vram enabled and using native ComfyUI model formats instead. "
    "ComfyUI native formats like fp8, int8 and w4a8 will be faster even if they are larger "
    "than your memory."
)
#: OUR wording, not upstream's: upstream prints nothing when Dynamic VRAM is simply not asked
#: for or not supported (no line at all is its signal). The stand-in says so, marked as its
#: own, so a CPU-only test bed shows the decision; nothing may match on this line against a
#: real ComfyUI.
DYNAMIC_VRAM_OFF_STANDIN = "[stand-in] DynamicVRAM off: {reason}"


@dataclass(frozen=True)
class DeviceFacts:
    """What the Dynamic VRAM decision needs to know about the device and torch.

    vendor: "nvidia" (a CUDA torch on a GPU), "amd" (a ROCm torch on a GPU), "cpu" (--cpu or
    no GPU), or "other" (MPS, XPU, DirectML, ...)."""

    vendor: str
    torch_version: tuple[int, int] = (0, 0)
    rocm_version: tuple[int, int] | None = None


@dataclass(frozen=True)
class DynamicVRAM:
    enabled: bool
    #: (logging level, message) to print, in order
    messages: tuple[tuple[int, str], ...] = ()


def dynamic_vram_requested(args: Any) -> bool:
    """Upstream's `enables_dynamic_vram()` (comfy/cli_args.py): asked for by the flags."""
    if args.enable_dynamic_vram:
        return True
    return not (
        args.disable_dynamic_vram or args.highvram or args.gpu_only or args.novram or args.cpu
    )


def dynamic_vram_supported(device: DeviceFacts) -> bool:
    if device.vendor == "nvidia":
        return True
    return device.vendor == "amd" and (device.rocm_version or (0, 0)) >= (7, 14)


def _off_reason(args: Any) -> str:
    for flag, on in (
        ("--disable-dynamic-vram", args.disable_dynamic_vram),
        ("--cpu", args.cpu),
        ("--highvram", args.highvram),
        ("--gpu-only", args.gpu_only),
        ("--novram", args.novram),
    ):
        if on:
            return flag
    return "not supported on this device"


def decide_dynamic_vram(args: Any, device: DeviceFacts) -> DynamicVRAM:
    """Whether Dynamic VRAM comes on, and the start-up lines that say so (main.py's order).

    comfy-aimdo hooks CUDA (and ROCm) devices only; the stand-in counts it as installed and
    working there, and as failing elsewhere (`--enable-dynamic-vram` on the CPU), where
    upstream's init_devices finds no device to hook."""
    forced = bool(args.enable_dynamic_vram)
    if not (forced or (dynamic_vram_requested(args) and dynamic_vram_supported(device))):
        return DynamicVRAM(
            False, ((logging.INFO, DYNAMIC_VRAM_OFF_STANDIN.format(reason=_off_reason(args))),)
        )
    if not forced and device.torch_version < (2, 8):
        return DynamicVRAM(False, ((logging.WARNING, DYNAMIC_VRAM_OLD_TORCH),))
    if device.vendor not in ("nvidia", "amd"):
        return DynamicVRAM(False, ((logging.WARNING, DYNAMIC_VRAM_NO_AIMDO),))
    return DynamicVRAM(True, ((logging.INFO, DYNAMIC_VRAM_ENABLED),))


def disable_flag_warning(args: Any) -> str | None:
    """The warning upstream prints at start for `--disable-dynamic-vram` (any device)."""
    return DYNAMIC_VRAM_DISABLED_BY_FLAG if args.disable_dynamic_vram else None


def lowvram_effective(args: Any, dynamic_vram: bool) -> bool:
    """Whether `--lowvram` changes how models load: never under Dynamic VRAM (its help says
    so), though upstream still sets and logs the LOW_VRAM state."""
    return bool(args.lowvram) and not dynamic_vram


# ----------------------------------------------------------------- other memory start-up

ASYNC_OFFLOAD_LINE = "Using async weight offloading with {} streams"  # upstream's wording
PINNED_MEMORY_LINE = "Enabled pinned memory {}"  # upstream's wording
SMART_MEMORY_OFF_LINE = "Disabling smart memory management"  # upstream's wording


def async_offload_streams(args: Any, vendor: str) -> int:
    """Offload streams: `--async-offload [N]`, else 2 on NVIDIA and AMD; 0 if disabled."""
    if args.disable_async_offload:
        return 0
    if args.async_offload is not None:
        return int(args.async_offload)
    return 2 if vendor in ("nvidia", "amd") else 0


def max_pinned_memory(ram: int, swap: int, *, windows: bool = False) -> float:
    """Upstream's ceiling for pinned host memory, in bytes (the arithmetic, types included:
    the start-up line prints `value // MiB`, a float where the float term wins)."""
    if windows:
        return ram * 0.40
    gib = 1024**3
    return max(ram * 0.40, min(ram * 0.90, ram - 4 * gib, ram + swap - 16 * gib))


def pinned_memory_line(args: Any, vendor: str, ram: int, swap: int) -> str | None:
    if args.disable_pinned_memory or vendor not in ("nvidia", "amd"):
        return None
    return PINNED_MEMORY_LINE.format(max_pinned_memory(ram, swap) // (1024 * 1024))


def disk_swap_total(swaps: str) -> int:
    """Bytes of swap from the text of /proc/swaps, zram devices left out (as upstream)."""
    total = 0
    for line in swaps.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and not os.path.basename(fields[0]).startswith("zram"):
            total += int(fields[2]) * 1024
    return total


# -------------------------------------------------------------------------- allocator

ALLOC_ENV = "PYTORCH_CUDA_ALLOC_CONF"
ASYNC = "backend:cudaMallocAsync"
EXPANDABLE = "expandable_segments:True"

#: NVIDIA cards upstream's cuda_malloc.py keeps off cudaMallocAsync (unless --cuda-malloc or a
#: CUDA 13 torch): a name from `nvidia-smi -L` containing one of these and "NVIDIA".
NO_ASYNC_CARDS = (
    "GeForce GTX TITAN X",
    "GeForce GTX 980",
    "GeForce GTX 970",
    "GeForce GTX 960",
    "GeForce GTX 950",
    "GeForce 945M",
    "GeForce 940M",
    "GeForce 930M",
    "GeForce 920M",
    "GeForce 910M",
    "GeForce GTX 750",
    "GeForce GTX 745",
    "Quadro K620",
    "Quadro K1200",
    "Quadro K2200",
    "Quadro M500",
    "Quadro M520",
    "Quadro M600",
    "Quadro M620",
    "Quadro M1000",
    "Quadro M1200",
    "Quadro M2000",
    "Quadro M2200",
    "Quadro M3000",
    "Quadro M4000",
    "Quadro M5000",
    "Quadro M5500",
    "Quadro M6000",
    "GeForce MX110",
    "GeForce MX130",
    "GeForce 830M",
    "GeForce 840M",
    "GeForce GTX 850M",
    "GeForce GTX 860M",
    "GeForce GTX 1650",
    "GeForce GTX 1630",
    "Tesla M4",
    "Tesla M6",
    "Tesla M10",
    "Tesla M40",
    "Tesla M60",
)


def async_supported(gpu_names: Iterable[str]) -> bool:
    return not any(
        "NVIDIA" in name and any(card in name for card in NO_ASYNC_CARDS) for name in gpu_names
    )


def cuda_malloc_current(
    args: Any, torch_version: str, gpu_names: Callable[[], Iterable[str]] = tuple
) -> bool:
    """Whether current upstream picks cudaMallocAsync. The torch version string decides (read
    without importing torch): a `+cuNNN` build of torch 2 or later, and not `--fast autotune`;
    a CUDA 13 build always, an older one unless the card is listed above (`gpu_names` is
    asked only then: `nvidia-smi -L`). `--cpu` does not matter here any more; `--cuda-malloc`
    asks for it, `--disable-cuda-malloc` wins."""
    wanted = bool(args.cuda_malloc)
    if not wanted:
        major = re.match(r"(\d+)\.", torch_version)
        cuda = re.search(r"\+cu(\d+)", torch_version)
        autotune = any(getattr(f, "value", f) == "autotune" for f in (args.fast or ()))
        if major and int(major.group(1)) >= 2 and "+cu" in torch_version and not autotune:
            wanted = (cuda is not None and int(cuda.group(1)) >= 130) or async_supported(
                gpu_names()
            )
    return wanted and not args.disable_cuda_malloc


def alloc_conf_current(value: str | None, cuda_malloc: bool) -> str | None:
    """The new PYTORCH_CUDA_ALLOC_CONF; None means unset it. `expandable_segments:True` is
    cut out as upstream does (a plain text replace, then commas stripped at the ends only)."""
    value = value or ""
    if EXPANDABLE in value:
        value = value.replace(EXPANDABLE, "").strip(",")
    if cuda_malloc:
        value = f"{value},{ASYNC}" if value else ASYNC
    return value or None


def apply_alloc_conf(environ: dict[str, str] | Any, value: str | None) -> None:
    if value is not None:
        environ[ALLOC_ENV] = value
    else:
        environ.pop(ALLOC_ENV, None)
