"""Check the environment variables a patch exports before they reach the start script.

A typo in PYTORCH_CUDA_ALLOC_CONF stops torch at its first CUDA allocation, long after
qpatch said "done"; and a valid value can still do nothing, because ComfyUI picks its own
allocator backend. TORCH_CUDA_ARCH_LIST is checked against the GPU the target sees, which
the engine detects and passes in: everything here is pure.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence

from qpatch.errors import BadInput
from qpatch.report import Report

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
ARCH_LIST = "TORCH_CUDA_ARCH_LIST"


# ------------------------------------------------------------ PYTORCH_CUDA_ALLOC_CONF


def _int(minimum: int) -> Callable[[str], bool]:
    return lambda v: v.isdigit() and int(v) >= minimum


def _fraction(low_open: bool) -> Callable[[str], bool]:
    def check(v: str) -> bool:
        try:
            x = float(v)
        except ValueError:
            return False
        return (0 < x < 1) if low_open else (0 <= x <= 1)

    return check


def _power_of_two(v: str, *, zero: bool = False) -> bool:
    return v.isdigit() and (int(v) & (int(v) - 1) == 0) and (zero or int(v) > 0)


def _roundup(v: str) -> bool:
    """`4` or `[256:1,512:2,>:8]`: sizes in MB (powers of two, or `>`) to divisions."""
    if not (v.startswith("[") and v.endswith("]")):
        return _power_of_two(v)
    pairs = [p.split(":") for p in v[1:-1].split(",")]
    return all(
        len(p) == 2 and (p[0] == ">" or _power_of_two(p[0])) and _power_of_two(p[1], zero=True)
        for p in pairs
    )


def _bool(v: str) -> bool:
    return v in ("True", "False")  # torch accepts exactly these spellings


# The keys torch 2.13 accepts (c10/core/AllocatorConfig.cpp, c10/cuda/CUDAAllocatorConfig.cpp),
# each with what its value must be. An older torch in the target may reject newer keys.
_KEYS: dict[str, tuple[Callable[[str], bool], str]] = {
    "backend": (lambda v: v in ("native", "cudaMallocAsync"), "native or cudaMallocAsync"),
    "max_split_size_mb": (_int(20), "an integer >= 20 (MB)"),
    "max_non_split_rounding_mb": (_int(20), "an integer >= 20 (MB)"),
    "large_segment_size_mb": (_int(1), "an integer > 0 (MB)"),
    "garbage_collection_threshold": (_fraction(low_open=True), "a number between 0 and 1"),
    "roundup_power2_divisions": (_roundup, "a power of 2, or [MB:divisions,…,>:divisions]"),
    "expandable_segments": (_bool, "True or False"),
    "release_lock_on_cudamalloc": (_bool, "True or False"),
    "pinned_use_cuda_host_register": (_bool, "True or False"),
    "pinned_use_background_threads": (_bool, "True or False"),
    "pinned_num_register_threads": (
        lambda v: _power_of_two(v) and int(v) <= 128,
        "a power of 2 up to 128",
    ),
    "pinned_reserve_segment_size_mb": (_int(1), "an integer > 0 (MB)"),
    "pinned_max_cached_size_mb": (_int(0), "an integer (MB)"),
    "pinned_max_round_threshold_mb": (_int(0), "an integer (MB)"),
    "graph_capture_record_stream_reuse": (_bool, "True or False"),
    "per_process_memory_fraction": (_fraction(low_open=False), "a number from 0 to 1"),
}
# Options of the native caching allocator, which cudaMallocAsync ignores.
NATIVE_ONLY = frozenset(
    {
        "max_split_size_mb",
        "max_non_split_rounding_mb",
        "large_segment_size_mb",
        "garbage_collection_threshold",
        "roundup_power2_divisions",
        "expandable_segments",
        "release_lock_on_cudamalloc",
    }
)


def _split_entries(value: str) -> list[str]:
    """Split on commas outside the `[…]` of roundup_power2_divisions."""
    entries, depth, last = [], 0, 0
    for i, c in enumerate(value):
        depth += (c == "[") - (c == "]")
        if c == "," and depth == 0:
            entries.append(value[last:i])
            last = i + 1
    return [*entries, value[last:]]


def parse_alloc_conf(value: str) -> dict[str, str]:
    """`key:value,…` as torch reads it (spaces ignored); BadInput on what torch would reject."""
    conf: dict[str, str] = {}
    for entry in _split_entries(value.replace(" ", "")):
        key, sep, val = entry.partition(":")
        if not sep or not key:
            raise BadInput(f"{ALLOC_CONF}: {entry!r} is not key:value")
        if key not in _KEYS:
            near = difflib.get_close_matches(key, _KEYS, n=3, cutoff=0.5) or list(_KEYS)
            raise BadInput(
                f"{ALLOC_CONF}: unknown option {key!r}", hint=f"known: {', '.join(near)}"
            )
        check, expected = _KEYS[key]
        if not check(val):
            raise BadInput(f"{ALLOC_CONF}: {key} must be {expected}, not {val!r}")
        if key in conf:
            raise BadInput(f"{ALLOC_CONF}: {key} is given twice")
        conf[key] = val
    return conf


def _fast_dynamic_vram(flags: Sequence[str]) -> bool:
    """Whether `--fast` turns on ComfyUI's dynamic VRAM (bare `--fast` enables everything)."""
    if "--fast" not in flags or {"--highvram", "--gpu-only"} & set(flags):
        return False
    values = []
    for token in flags[flags.index("--fast") + 1 :]:
        if token.startswith("-"):
            break
        values.append(token)
    return not values or "dynamic_vram" in values


def check_alloc_conf(value: str, flags: Sequence[str]) -> Report:
    """Validate the value, and say when ComfyUI will make it moot.

    ComfyUI (cuda_malloc.py) appends `backend:cudaMallocAsync` unless the server runs
    `--disable-cuda-malloc`, and with dynamic VRAM it clears the variable altogether."""
    conf = parse_alloc_conf(value)
    report = Report()
    native = sorted(NATIVE_ONLY & conf.keys())
    async_backend = "--disable-cuda-malloc" not in flags or (
        conf.get("backend") == "cudaMallocAsync"
    )
    if native and async_backend:
        report.find(
            f"ComfyUI switches to cudaMallocAsync, which ignores {', '.join(native)}: "
            "add --disable-cuda-malloc to keep the native allocator"
        )
    if _fast_dynamic_vram(flags):
        report.find(f"ComfyUI's dynamic VRAM (--fast dynamic_vram) clears {ALLOC_CONF} at start")
    return report


# --------------------------------------------------------------- TORCH_CUDA_ARCH_LIST

# torch.utils.cpp_extension expands these names before checking the list.
_NAMED_ARCHES = {
    "Kepler+Tesla": "3.7",
    "Kepler": "3.5+PTX",
    "Maxwell+Tegra": "5.3",
    "Maxwell": "5.0;5.2+PTX",
    "Pascal": "6.0;6.1+PTX",
    "Volta+Tegra": "7.2",
    "Volta": "7.0+PTX",
    "Turing": "7.5+PTX",
    "Ampere+Tegra": "8.7",
    "Ampere": "8.0;8.6+PTX",
    "Ada": "8.9+PTX",
    "Hopper": "9.0+PTX",
    "Blackwell+Tegra": "11.0",
    "Blackwell": "10.0;10.3;12.0;12.1+PTX",
}
_ARCH = re.compile(r"(\d+)\.(\d+)[af]?(\+PTX)?")
_CAPABILITY = re.compile(r"\d+\.\d+")
_ONLY_AT_BUILD = (
    f"{ARCH_LIST} only matters when CUDA extensions are compiled at start (JIT/ninja "
    "builds); it does not change how a prebuilt torch runs"
)


def _arches(value: str) -> list[tuple[tuple[int, int], bool]]:
    """(compute capability, with +PTX) of each entry, named arches expanded as torch does."""
    expanded = value.strip().replace(" ", ";")
    for name, arches in _NAMED_ARCHES.items():
        expanded = expanded.replace(name, arches)
    entries = [e for e in expanded.split(";") if e]
    bad = [e for e in entries if not _ARCH.fullmatch(e)]
    if bad or not entries:
        raise BadInput(
            f"{ARCH_LIST}: {bad[0] if bad else value!r} is not a CUDA architecture",
            hint="e.g. 8.9, 8.6;8.9, 9.0+PTX, or auto for the GPU the target sees",
        )
    matches = [m for e in entries if (m := _ARCH.fullmatch(e))]
    return [((int(m.group(1)), int(m.group(2))), bool(m.group(3))) for m in matches]


def _covers(arches: list[tuple[tuple[int, int], bool]], capability: str) -> bool:
    """True when an extension built for `arches` runs on the GPU: its own sm, or PTX of an
    older one that the driver compiles for it."""
    cap = tuple(int(x) for x in capability.split("."))
    return any(arch == cap or (ptx and arch <= cap) for arch, ptx in arches)


def resolve_arch_list(value: str, gpu_capability: str | None) -> tuple[str | None, Report]:
    """The value to export (None: leave the variable out), and what to tell the user.

    `auto` becomes the compute capability of the GPU the target sees ("8.9" for an RTX
    4090/4090D); `gpu_capability` is None when no GPU is visible there."""
    report = Report()
    if gpu_capability is not None and not _CAPABILITY.fullmatch(gpu_capability):
        raise BadInput(f"compute capability {gpu_capability!r} is not of the form 8.9")
    if value.strip() == "auto":
        if gpu_capability is None:
            report.find(f"{ARCH_LIST}=auto: no GPU visible in the target, variable left out")
            resolved = None
        else:
            resolved = gpu_capability
    else:
        arches = _arches(value) if value.strip() != "native" else []
        if gpu_capability and arches and not _covers(arches, gpu_capability):
            report.find(
                f"{ARCH_LIST}={value} does not cover this GPU (compute capability "
                f"{gpu_capability}): extensions compiled at start would not run on it"
            )
        resolved = value
    report.find(_ONLY_AT_BUILD, severity="info")
    return resolved, report


# ----------------------------------------------------------------------------- all


def check_env(
    env: Mapping[str, str], *, flags: Sequence[str], gpu_capability: str | None
) -> tuple[dict[str, str], Report]:
    """The env to export (with `auto` resolved, unresolvable ones left out) and findings.

    `flags` are the flags the server will run with: the launch line's, plus the
    names of the flags being added. Other variables pass through unchecked.
    """
    report = Report()
    resolved: dict[str, str] = {}
    for name, value in env.items():
        if name == ALLOC_CONF:
            report.extend(check_alloc_conf(value, flags))
        elif name == ARCH_LIST:
            arch, found = resolve_arch_list(value, gpu_capability)
            report.extend(found)
            if arch is None:
                continue
            value = arch
        resolved[name] = value
    return resolved, report
