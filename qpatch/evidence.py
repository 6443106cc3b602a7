"""What qpatch knows about the server an edit lands on, each fact with where it comes from.

Whether a flag or variable helps depends on the ComfyUI version, on Dynamic VRAM, on the
allocator the server really uses and on the dtype of the weights it loads; a user who is told
"--lowvram: no-op" must be able to see why. So every fact carries its source, and a fact that
could not be learnt says so instead of being guessed.

Pure: the parsers here read texts and bytes; qpatch/observe.py fetches them from the target.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: Variables read by torch's allocator or ComfyUI's cuda_malloc; the rest of the server's
#: environment (tokens, keys) is not qpatch's business and is never kept.
ALLOCATOR_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "TORCH_CUDA_ARCH_LIST")

#: safetensors' dtype names -> ComfyUI's words for them.
SAFETENSORS_DTYPES = {
    "F8_E4M3": "fp8_e4m3fn",
    "F8_E5M2": "fp8_e5m2",
    "BF16": "bf16",
    "F16": "fp16",
    "F32": "fp32",
    "F64": "fp64",
}
_SIZES = {"F8_E4M3": 1, "F8_E5M2": 1, "BF16": 2, "F16": 2, "F32": 4, "F64": 8}
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class Fact:
    """One thing known (or not: value None) about the server, and how it was learnt."""

    label: str
    value: Any = None
    source: str = "not looked for"

    @property
    def shown(self) -> str:
        if isinstance(self.value, bool):
            return "on" if self.value else "off"
        if isinstance(self.value, tuple) and all(isinstance(v, tuple) for v in self.value):
            return ", ".join(f"{k}={v}" for k, v in self.value) or "none set"
        if isinstance(self.value, tuple):
            return (" " if self.label == "argv" else "+").join(map(str, self.value))
        return str(self.value)

    def __str__(self) -> str:
        if self.value is None:
            return f"{self.label}: not known ({self.source})"
        return f"{self.label}: {self.shown} ({self.source})"

    def to_json(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"value": value, "source": self.source}


def _unknown(label: str, why: str = "not looked for") -> Fact:
    return Fact(label, None, why)


@dataclass(frozen=True)
class Evidence:
    comfyui: Fact = field(default_factory=lambda: _unknown("ComfyUI"))
    torch: Fact = field(default_factory=lambda: _unknown("torch"))
    device: Fact = field(default_factory=lambda: _unknown("device"))
    argv: Fact = field(default_factory=lambda: _unknown("argv"))
    env: Fact = field(default_factory=lambda: _unknown("allocator env"))
    dynamic_vram: Fact = field(default_factory=lambda: _unknown("Dynamic VRAM"))
    allocator: Fact = field(default_factory=lambda: _unknown("allocator"))
    vram_state: Fact = field(default_factory=lambda: _unknown("vram state"))
    weights_dtype: Fact = field(default_factory=lambda: _unknown("weights dtype"))

    def facts(self) -> list[Fact]:
        return [getattr(self, name) for name in self.__dataclass_fields__]

    def lines(self) -> list[str]:
        return [str(f) for f in self.facts()]

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_json() for name in self.__dataclass_fields__}

    def merged(self, **facts: Fact) -> Evidence:
        return replace(self, **facts)


def version_tuple(text: str) -> tuple[int, ...] | None:
    """(0, 38, 1) for "0.38.1", "v0.38.1" or "2.13.0+cu128"; None for what is no version."""
    found = re.match(r"^v?(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(p) for p in found.group(1).split(".")) if found else None


# -------------------------------------------------------------------- /system_stats


def from_system_stats(
    stats: Mapping[str, Any] | None, source: str = "/system_stats"
) -> dict[str, Fact]:
    """ComfyUI and torch versions, the device type and the argv the server reports."""
    if not isinstance(stats, Mapping) or not stats:
        why = "the server did not answer /system_stats" if not stats else "an odd /system_stats"
        return {k: _unknown(label, why) for k, label in _STATS_LABELS.items()}
    system = stats.get("system")
    system = system if isinstance(system, Mapping) else {}
    devices = stats.get("devices")
    first = devices[0] if isinstance(devices, list) and devices else None
    device = first.get("type") if isinstance(first, Mapping) else None
    argv = system.get("argv")
    found = {
        "comfyui": Fact("ComfyUI", _text(system.get("comfyui_version")), source),
        "torch": Fact("torch", _text(system.get("pytorch_version")), source),
        "device": Fact("device", _text(device), source),
        "argv": Fact(
            "argv",
            tuple(map(str, argv)) if isinstance(argv, list) else None,
            f"{source} argv",
        ),
    }
    return {
        k: f if f.value is not None else replace(f, source=f"{source}: not reported")
        for k, f in found.items()
    }


def _text(value: Any) -> str | None:
    """A reported string, or None for anything else (a server may say odd things)."""
    return value if isinstance(value, str) and value else None


_STATS_LABELS = {"comfyui": "ComfyUI", "torch": "torch", "device": "device", "argv": "argv"}


# -------------------------------------------------------------------- start-up log

#: The line every ComfyUI start prints early (comfy/model_management.py): where a start begins.
_START = re.compile(r"Total VRAM \d+ MB, total RAM \d+ MB")
_DEVICE = re.compile(r"Device: (\S+)(?:.* : (\w+))?\s*$")
_VRAM_STATE = re.compile(r"Set vram state to: (\w+)")
_TORCH = re.compile(r"pytorch version: (\S+)")
#: Upstream's words (main.py): the one line that says Dynamic VRAM came on.
DYNAMIC_VRAM_ON = "DynamicVRAM support detected and enabled"
#: Upstream's lines saying it did not (comfy-aimdo missing, torch too old, the flag).
_DYNAMIC_VRAM_OFF = (
    "DynamicVRAM support disabled",
    "DynamicVRAM support requires",
    "Dynamic vram disabled with argument",
)


def from_log(log: str, comfyui: Fact, source: str = "start-up log") -> dict[str, Fact]:
    """Dynamic VRAM, the allocator backend and the vram state of the server's last start.

    A start that printed no Dynamic VRAM line had it off on a version that has it (upstream
    prints nothing when it is not asked for or not supported); before 0.15 it did not exist."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if _START.search(line)]
    version = version_tuple(str(comfyui.value)) if comfyui.value else None
    predates = version is not None and version < (0, 15)
    too_old = Fact("Dynamic VRAM", False, f"ComfyUI {comfyui.value} predates it (0.15)")
    if not starts:
        why = "no start-up lines in the server's log"
        return {
            "dynamic_vram": too_old if predates else _unknown("Dynamic VRAM", why),
            "allocator": _unknown("allocator", why),
            "vram_state": _unknown("vram state", why),
        }
    block = lines[starts[-1] :]
    found: dict[str, Fact] = {}
    for line in block:
        if (m := _DEVICE.search(line)) and "allocator" not in found:
            backend = m.group(2) or ("none" if m.group(1) == "cpu" else "native")
            found["allocator"] = Fact("allocator", backend, f"{source}: {line.strip()!r}")
        if (m := _VRAM_STATE.search(line)) and "vram_state" not in found:
            found["vram_state"] = Fact("vram state", m.group(1), f"{source}: {line.strip()!r}")
        if DYNAMIC_VRAM_ON in line:
            found["dynamic_vram"] = Fact("Dynamic VRAM", True, f"{source}: {DYNAMIC_VRAM_ON!r}")
        elif any(words in line for words in _DYNAMIC_VRAM_OFF) and "dynamic_vram" not in found:
            found["dynamic_vram"] = Fact("Dynamic VRAM", False, f"{source}: {line.strip()[:80]!r}")
    if "dynamic_vram" not in found:
        if predates:
            found["dynamic_vram"] = too_old
        elif version is not None:
            found["dynamic_vram"] = Fact(
                "Dynamic VRAM", False, f"{source}: no {DYNAMIC_VRAM_ON!r} line"
            )
        else:
            found["dynamic_vram"] = _unknown("Dynamic VRAM", "ComfyUI version not known")
    found.setdefault("allocator", _unknown("allocator", f"{source}: no 'Device:' line"))
    found.setdefault("vram_state", _unknown("vram state", f"{source}: no vram state line"))
    return found


def torch_from_log(log: str, source: str = "start-up log") -> Fact:
    found = [m.group(1) for m in _TORCH.finditer(log)]
    return Fact("torch", found[-1], source) if found else _unknown("torch", f"{source}: no line")


# -------------------------------------------------------------------- environment


def from_environ(raw: bytes | None, source: str) -> Fact:
    """The allocator variables of a /proc/<pid>/environ (NUL-separated), nothing else."""
    if raw is None:
        return _unknown("allocator env", source)
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    env = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
    kept = tuple(sorted((k, env[k]) for k in ALLOCATOR_VARS if k in env))
    return Fact("allocator env", kept, source)


def env_value(evidence: Evidence, name: str) -> str | None:
    return dict(evidence.env.value or ()).get(name)


# -------------------------------------------------------------------- weights


def header_length(head: bytes) -> int | None:
    """The JSON header's length from a safetensors file's first 8 bytes (little-endian)."""
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    return n if 2 <= n <= MAX_HEADER else None


def weights_dtype(header: bytes) -> str | None:
    """The dtype most of the weights' bytes are in, from a safetensors header (8 bytes of
    length, then JSON: name -> {dtype, shape, data_offsets}); None when it is not one."""
    n = header_length(header)
    if n is None or len(header) < 8 + n:
        return None
    if header[8:9] != b"{":
        return None  # not a safetensors header: its tensor bytes are never read
    try:
        table = json.loads(header[8 : 8 + n])
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(table, dict):
        return None
    sizes: dict[str, int] = {}
    for name, tensor in table.items():
        if name == "__metadata__" or not isinstance(tensor, dict):
            continue
        dtype = tensor.get("dtype")
        offsets = tensor.get("data_offsets")
        if not (isinstance(dtype, str) and dtype in SAFETENSORS_DTYPES):
            continue
        if not (isinstance(offsets, list) and len(offsets) == 2):
            continue
        if not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets):
            continue
        sizes[dtype] = sizes.get(dtype, 0) + max(0, offsets[1] - offsets[0])
    if not sizes:
        return None
    return SAFETENSORS_DTYPES[max(sizes, key=lambda d: sizes[d])]


def dtype_fact(found: Mapping[str, str | None], source_words: str) -> Fact:
    """The weights' dtype from each file's (path -> dtype): one dtype, or all of them."""
    known = {path: d for path, d in found.items() if d}
    if not known:
        why = f"{source_words}: no safetensors header read" if found else source_words
        return _unknown("weights dtype", why)
    names = ", ".join(sorted(p.rsplit("/", 1)[-1] for p in known))
    dtypes = tuple(sorted(set(known.values())))
    value = dtypes[0] if len(dtypes) == 1 else dtypes
    return Fact("weights dtype", value, f"safetensors header of {names}")


#: Loader nodes and their file inputs -> the model folders the file is looked up in.
WORKFLOW_WEIGHTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "UNETLoader": ("unet_name", ("diffusion_models", "unet")),
    "UnetLoaderGGUF": ("unet_name", ("diffusion_models", "unet")),
    "CheckpointLoaderSimple": ("ckpt_name", ("checkpoints",)),
}
#: UNETLoader's weight_dtype input: ComfyUI casts the weights to it on load.
_CAST = {"fp8_e4m3fn": "fp8_e4m3fn", "fp8_e4m3fn_fast": "fp8_e4m3fn", "fp8_e5m2": "fp8_e5m2"}


def workflow_weights(
    prompt: Mapping[str, Any],
) -> tuple[list[tuple[str, tuple[str, ...]]], dict[str, str]]:
    """The diffusion-model files an API-format workflow loads, as (file, model folders), and
    the casts its loaders ask for (file -> dtype)."""
    files: list[tuple[str, tuple[str, ...]]] = []
    casts: dict[str, str] = {}
    for node in prompt.values() if isinstance(prompt, Mapping) else ():
        if not isinstance(node, dict):
            continue
        spec = WORKFLOW_WEIGHTS.get(str(node.get("class_type")))
        inputs = node.get("inputs")
        if spec is None or not isinstance(inputs, dict) or not isinstance(inputs.get(spec[0]), str):
            continue
        name = inputs[spec[0]]
        files.append((name, spec[1]))
        if (cast := _CAST.get(str(inputs.get("weight_dtype")))) is not None:
            casts[name] = cast
    return files, casts


def merge_facts(facts: Iterable[Mapping[str, Fact]]) -> dict[str, Fact]:
    merged: dict[str, Fact] = {}
    for found in facts:
        merged.update(found)
    return merged
