"""Devices and memory, as far as the stand-in's server and custom nodes use them.

Custom nodes ask `get_torch_device()` for the device ComfyUI chose (`--cpu` gives the CPU,
otherwise CUDA when torch has it); `/system_stats` reports memory with upstream's formulas:
on CUDA `vram_*` is the device as the driver sees it plus what torch's caching allocator
holds free, `torch_vram_*` what torch reserved and holds free; on the CPU both are RAM.
The memory flags (`--lowvram`, `--novram`, ...) set the logged VRAM state only: the
stand-in loads no model of its own to split.

Under COMFYUI_STANDIN_PROFILE=current, start-up also decides Dynamic VRAM (`init_dynamic_vram`,
called by main.py after this module has logged its lines, as upstream's main.py does) and logs
upstream master's other memory lines: async offload streams, the pinned-memory ceiling,
smart memory off. The decisions are comfy/profile.py's.
"""

from __future__ import annotations

import enum
import gc
import logging
import os
import platform

import torch

from comfy import profile
from comfy.cli_args import args


class VRAMState(enum.Enum):
    DISABLED = 0  # no GPU: everything on the CPU
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(enum.Enum):
    GPU = 0
    CPU = 1


#: What a node raises when the GPU runs out of memory; the executor frees models on it.
OOM_EXCEPTION = torch.cuda.OutOfMemoryError

cpu_state = CPUState.CPU if args.cpu or not torch.cuda.is_available() else CPUState.GPU


def _vram_state() -> VRAMState:
    if cpu_state == CPUState.CPU:
        return VRAMState.DISABLED
    if args.lowvram:
        return VRAMState.LOW_VRAM
    if args.novram:
        return VRAMState.NO_VRAM
    if args.highvram or args.gpu_only:
        return VRAMState.HIGH_VRAM
    return VRAMState.NORMAL_VRAM


vram_state = _vram_state()

#: Whether Dynamic VRAM came on (current profile only; see init_dynamic_vram).
dynamic_vram = False
#: Whether --lowvram changes how models load (never under Dynamic VRAM).
lowvram_active = bool(args.lowvram)


def gpu_vendor() -> str:
    """The device kind profile.py's decisions take: nvidia, amd, cpu or other."""
    if cpu_state == CPUState.CPU:
        return "cpu"
    if torch.version.cuda:
        return "nvidia"
    if getattr(torch.version, "hip", None):
        return "amd"
    return "other"


def _version_pair(text: str | None) -> tuple[int, int] | None:
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor.split("+")[0])
    except ValueError:
        return None


def device_facts() -> profile.DeviceFacts:
    return profile.DeviceFacts(
        vendor=gpu_vendor(),
        torch_version=_version_pair(torch.version.__version__) or (0, 0),
        rocm_version=_version_pair(getattr(torch.version, "hip", None)),
    )


def init_dynamic_vram() -> profile.DynamicVRAM:
    """Decide Dynamic VRAM (current profile), log upstream's line for it, remember it."""
    global dynamic_vram, lowvram_active
    decision = profile.decide_dynamic_vram(args, device_facts())
    for level, message in decision.messages:
        logging.log(level, message)
    dynamic_vram = decision.enabled
    lowvram_active = profile.lowvram_effective(args, dynamic_vram)
    return decision


def get_torch_device() -> torch.device:
    if cpu_state == CPUState.CPU:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def allocator_backend() -> str:
    """`cudaMallocAsync` or `native`: what torch really runs, not what was asked for."""
    try:
        return torch.cuda.get_allocator_backend()
    except Exception:  # noqa: BLE001 - older torch or no CUDA: the native allocator
        return "native"


def get_torch_device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)} : {allocator_backend()}"
    return device.type


def _meminfo() -> tuple[int, int]:
    """(total, available) RAM in bytes, from /proc/meminfo (no psutil in the image)."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    return fields.get("MemTotal", 0), fields.get("MemAvailable", fields.get("MemFree", 0))


def ram_total() -> int:
    return _meminfo()[0]


def ram_free() -> int:
    return _meminfo()[1]


def _torch_reserved_active(device: torch.device) -> tuple[int, int]:
    try:
        stats = torch.cuda.memory_stats(device)
        return stats["reserved_bytes.all.current"], stats["active_bytes.all.current"]
    except (KeyError, RuntimeError):  # the cudaMallocAsync backend keeps fewer statistics
        return torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)


def get_total_memory(device: torch.device | None = None, torch_total_too: bool = False):
    device = device or get_torch_device()
    if device.type == "cuda":
        total = torch.cuda.mem_get_info(device)[1]
        reserved, _ = _torch_reserved_active(device)
        return (total, reserved) if torch_total_too else total
    total = ram_total()
    return (total, total) if torch_total_too else total


def get_free_memory(device: torch.device | None = None, torch_free_too: bool = False):
    device = device or get_torch_device()
    if device.type == "cuda":
        free_cuda = torch.cuda.mem_get_info(device)[0]
        reserved, active = _torch_reserved_active(device)
        free_torch = reserved - active
        free = free_cuda + free_torch
        return (free, free_torch) if torch_free_too else free
    free = ram_free()
    return (free, free) if torch_free_too else free


def soft_empty_cache() -> None:
    gc.collect()
    if torch.cuda.is_available() and cpu_state == CPUState.GPU:
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


def unload_all_models() -> None:
    """Upstream unloads the models it manages; the stand-in's nodes hold their own, which
    the executor drops with its node instances (see execution.PromptExecutor.reset)."""
    soft_empty_cache()


def log_startup() -> None:
    device = get_torch_device()
    total_mb = get_total_memory(device) // (1024 * 1024)
    logging.info("Total VRAM %d MB, total RAM %d MB", total_mb, ram_total() // (1024 * 1024))
    logging.info("pytorch version: %s", torch.version.__version__)
    logging.info("Set vram state to: %s", vram_state.name)
    if profile.CURRENT and args.disable_smart_memory:
        logging.info(profile.SMART_MEMORY_OFF_LINE)
    logging.info("Device: %s", get_torch_device_name(device))
    if profile.CURRENT:
        _log_current_memory_lines()
    logging.info("Python version: %s", platform.python_version())
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):
        logging.info("PYTORCH_CUDA_ALLOC_CONF=%s", os.environ["PYTORCH_CUDA_ALLOC_CONF"])


def _swap_total() -> int:
    """Disk swap for the pinned-memory ceiling; none counted inside a memory-limited cgroup."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            if f.read().strip() != "max":
                return 0
    except OSError:
        pass
    try:
        with open("/proc/swaps", encoding="utf-8") as f:
            return profile.disk_swap_total(f.read())
    except OSError:
        return 0


def _log_current_memory_lines() -> None:
    vendor = gpu_vendor()
    if args.reserve_vram is not None:
        logging.debug("Reserving %sMB vram for other applications.", args.reserve_vram * 1024)
    streams = profile.async_offload_streams(args, vendor)
    if streams > 0:
        logging.info(profile.ASYNC_OFFLOAD_LINE.format(streams))
    pinned = profile.pinned_memory_line(args, vendor, ram_total(), _swap_total())
    if pinned:
        logging.info(pinned)
