"""The evidence parsers: /system_stats, the start-up log of each profile, /proc environ,
safetensors headers and a workflow's model files; pure, on texts and bytes."""

from __future__ import annotations

import json
import struct

import pytest

from qpatch import evidence as ev
from qpatch.evidence import Fact

STATS = {
    "system": {
        "comfyui_version": "0.38.1",
        "pytorch_version": "2.13.0+cu128",
        "argv": ["main.py", "--listen"],
    },
    "devices": [{"name": "cuda:0 NVIDIA H200 : cudaMallocAsync", "type": "cuda"}],
}
OLD_LOG = """\
[START] Security scan
Total VRAM 143771 MB, total RAM 2051906 MB
pytorch version: 2.13.0+cu128
Set vram state to: NORMAL_VRAM
Device: cuda:0 NVIDIA H200 : cudaMallocAsync
Python version: 3.11.7
ComfyUI version: 0.14.1
"""
CURRENT_LOG = """\
Total VRAM 143771 MB, total RAM 2051906 MB
pytorch version: 2.13.0+cu128
DynamicVRAM support detected and enabled
Set vram state to: LOW_VRAM
Device: cuda:0 NVIDIA H200 : cudaMallocAsync
Using async weight offloading with 2 streams
"""
CPU_LOG = """\
Total VRAM 24000 MB, total RAM 24000 MB
pytorch version: 2.13.0+cpu
Set vram state to: DISABLED
Device: cpu
"""


def test_system_stats() -> None:
    facts = ev.from_system_stats(STATS)
    assert facts["comfyui"] == Fact("ComfyUI", "0.38.1", "/system_stats")
    assert facts["torch"].value == "2.13.0+cu128" and facts["device"].value == "cuda"
    assert facts["argv"].value == ("main.py", "--listen")


def test_no_system_stats_is_unknown_with_the_reason() -> None:
    facts = ev.from_system_stats(None)
    assert all(f.value is None for f in facts.values())
    assert facts["comfyui"].source == "the server did not answer /system_stats"


def test_old_log() -> None:
    facts = ev.from_log(OLD_LOG, Fact("ComfyUI", "0.14.1", "s"))
    assert facts["allocator"].value == "cudaMallocAsync"
    assert facts["vram_state"].value == "NORMAL_VRAM"
    assert facts["dynamic_vram"] == Fact("Dynamic VRAM", False, "ComfyUI 0.14.1 predates it (0.15)")


def test_current_log_with_dynamic_vram() -> None:
    facts = ev.from_log(CURRENT_LOG, Fact("ComfyUI", "0.38.1", "s"))
    assert facts["dynamic_vram"].value is True
    assert "DynamicVRAM support detected and enabled" in facts["dynamic_vram"].source


def test_current_log_without_the_line_is_off() -> None:
    log = CURRENT_LOG.replace("DynamicVRAM support detected and enabled\n", "")
    facts = ev.from_log(log, Fact("ComfyUI", "0.38.1", "s"))
    assert facts["dynamic_vram"].value is False


def test_the_last_start_counts() -> None:
    facts = ev.from_log(CURRENT_LOG + "...\n" + OLD_LOG, Fact("ComfyUI", "0.38.1", "s"))
    assert facts["dynamic_vram"].value is False and facts["vram_state"].value == "NORMAL_VRAM"


def test_cpu_log_and_a_log_without_a_start() -> None:
    facts = ev.from_log(CPU_LOG, Fact("ComfyUI", "0.14.1", "s"))
    assert facts["allocator"].value == "none"
    empty = ev.from_log("got prompt\n", Fact("ComfyUI", "0.38.1", "s"))
    assert empty["dynamic_vram"].value is None
    assert empty["allocator"].source == "no start-up lines in the server's log"
    old = ev.from_log("", Fact("ComfyUI", "0.14.1", "s"))  # the version alone tells this one
    assert old["dynamic_vram"].value is False and old["allocator"].value is None


def test_environ_keeps_only_the_allocator_variables() -> None:
    raw = b"HF_TOKEN=secret\0PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\0PATH=/bin\0"
    fact = ev.from_environ(raw, "/proc/7/environ")
    assert fact.value == (("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),)
    assert "secret" not in json.dumps(fact.to_json())


def safetensors(tensors: dict[str, tuple[str, int]]) -> bytes:
    """A header as the format writes it: 8 bytes of length, then JSON (no tensor bytes)."""
    table, at = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, size) in tensors.items():
        table[name] = {"dtype": dtype, "shape": [size], "data_offsets": [at, at + size]}
        at += size
    header = json.dumps(table).encode()
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    ("tensors", "dtype"),
    [
        ({"a": ("F8_E4M3", 1000), "norm": ("BF16", 20)}, "fp8_e4m3fn"),
        ({"a": ("BF16", 1000)}, "bf16"),
        ({"a": ("F16", 10), "b": ("F32", 1000)}, "fp32"),
        ({}, None),
    ],
)
def test_weights_dtype_is_where_most_bytes_are(tensors: dict, dtype: str | None) -> None:
    assert ev.weights_dtype(safetensors(tensors)) == dtype


@pytest.mark.parametrize("head", [b"", b"\x00" * 8, b"\xff" * 8, struct.pack("<Q", 5) + b"{nope"])
def test_not_a_safetensors_header(head: bytes) -> None:
    assert ev.weights_dtype(head) is None


def test_dtype_fact_of_several_files() -> None:
    one = ev.dtype_fact({"/m/a.safetensors": "bf16", "/m/b.safetensors": "bf16"}, "x")
    assert (
        one.value == "bf16" and one.source == "safetensors header of a.safetensors, b.safetensors"
    )
    mixed = ev.dtype_fact({"/m/a.safetensors": "bf16", "/m/b.safetensors": "fp8_e4m3fn"}, "x")
    assert mixed.value == ("bf16", "fp8_e4m3fn")
    assert ev.dtype_fact({"/m/a.safetensors": None}, "x").value is None


def test_workflow_weights_and_casts() -> None:
    prompt = {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "q.safetensors", "weight_dtype": "fp8_e4m3fn"},
        },
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd.safetensors"}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1}},
        "4": {"class_type": "UNETLoader", "inputs": {"unet_name": ["1", 0]}},  # linked
    }
    files, casts = ev.workflow_weights(prompt)
    assert files == [
        ("q.safetensors", ("diffusion_models", "unet")),
        ("sd.safetensors", ("checkpoints",)),
    ]
    assert casts == {"q.safetensors": "fp8_e4m3fn"}
