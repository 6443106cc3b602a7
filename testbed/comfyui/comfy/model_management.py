"""Devices and memory, as far as the stand-in's server and custom nodes use them.

Custom nodes ask `get_torch_device()` for the device ComfyUI chose (`--cpu` gives the CPU,
otherwise CUDA when torch has it); `/system_stats` reports memory with upstream's formulas:
on CUDA `vram_*` is the device as the driver sees it plus what torch's caching allocator
holds free, `torch_vram_*` what torch reserved and holds free; on the CPU both are RAM.
The memory flags (`--lowvram`, `--novram`, ...) set the logged VRAM state only: the
stand-in loads no model of its own to split.
"""

from __future__ import annotations

import enum
import gc
import logging
import os
import platform

import torch

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
    logging.info("Device: %s", get_torch_device_name(device))
    logging.info("Python version: %s", platform.python_version())
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):
        logging.info("PYTORCH_CUDA_ALLOC_CONF=%s", os.environ["PYTORCH_CUDA_ALLOC_CONF"])
