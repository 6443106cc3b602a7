"""PYTORCH_CUDA_ALLOC_CONF and TORCH_CUDA_ARCH_LIST checks."""

from __future__ import annotations

import pytest

from qpatch.envcheck import check_env, parse_alloc_conf, resolve_arch_list
from qpatch.errors import BadInput

ONLY_AT_BUILD = "only matters when CUDA extensions are compiled at start"


@pytest.mark.parametrize(
    "value, parsed",
    [
        ("max_split_size_mb:128", {"max_split_size_mb": "128"}),
        ("expandable_segments:True", {"expandable_segments": "True"}),
        (
            "garbage_collection_threshold:0.6, max_split_size_mb:512",
            {"garbage_collection_threshold": "0.6", "max_split_size_mb": "512"},
        ),
        ("roundup_power2_divisions:4", {"roundup_power2_divisions": "4"}),
        (
            "roundup_power2_divisions:[256:1,512:2,1024:4,>:8],backend:native",
            {"roundup_power2_divisions": "[256:1,512:2,1024:4,>:8]", "backend": "native"},
        ),
        ("backend:cudaMallocAsync", {"backend": "cudaMallocAsync"}),
        (
            "pinned_use_cuda_host_register:True,pinned_num_register_threads:8",
            {"pinned_use_cuda_host_register": "True", "pinned_num_register_threads": "8"},
        ),
        ("release_lock_on_cudamalloc:False", {"release_lock_on_cudamalloc": "False"}),
    ],
)
def test_valid_alloc_conf(value: str, parsed: dict[str, str]) -> None:
    assert parse_alloc_conf(value) == parsed


@pytest.mark.parametrize(
    "value, message",
    [
        ("max_split_mb:128", "unknown option 'max_split_mb'"),
        ("max_split_size_mb:128mb", "max_split_size_mb must be an integer >= 20"),
        ("max_split_size_mb:10", "max_split_size_mb must be an integer >= 20"),
        ("expandable_segments:true", "expandable_segments must be True or False"),
        ("garbage_collection_threshold:1.0", "between 0 and 1"),
        ("roundup_power2_divisions:3", "roundup_power2_divisions must be a power of 2"),
        ("roundup_power2_divisions:[300:1]", "roundup_power2_divisions must be"),
        ("backend:async", "backend must be native or cudaMallocAsync"),
        ("pinned_num_register_threads:256", "a power of 2 up to 128"),
        ("expandable_segments", "is not key:value"),
        ("backend:native,backend:native", "backend is given twice"),
    ],
)
def test_invalid_alloc_conf(value: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_alloc_conf(value)


def test_unknown_key_hint_suggests_the_nearest() -> None:
    with pytest.raises(BadInput) as e:
        parse_alloc_conf("expandable_segment:True")
    assert e.value.hint and e.value.hint.startswith("known: expandable_segments")


def test_native_options_without_disable_cuda_malloc_warn() -> None:
    env, report = check_env(
        {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, flags=["--port"], gpu_capability=None
    )
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    (finding,) = report.findings
    assert finding.severity == "warning"
    assert finding.message.startswith(
        "ComfyUI switches to cudaMallocAsync, which ignores max_split_size_mb"
    )


def test_native_options_with_disable_cuda_malloc_are_quiet() -> None:
    _, report = check_env(
        {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
        flags=["--listen", "--disable-cuda-malloc"],
        gpu_capability="8.9",
    )
    assert report.findings == []


def test_backend_only_needs_no_warning() -> None:
    _, report = check_env(
        {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}, flags=[], gpu_capability=None
    )
    assert report.findings == []


@pytest.mark.parametrize("flags", [["--fast"], ["--fast", "dynamic_vram", "--port", "1"]])
def test_dynamic_vram_clears_the_variable(flags: list[str]) -> None:
    _, report = check_env(
        {"PYTORCH_CUDA_ALLOC_CONF": "backend:native"}, flags=flags, gpu_capability=None
    )
    assert "clears PYTORCH_CUDA_ALLOC_CONF" in report.findings[0].message


def test_fast_without_dynamic_vram_keeps_the_variable() -> None:
    _, report = check_env(
        {"PYTORCH_CUDA_ALLOC_CONF": "backend:native"},
        flags=["--fast", "fp16_accumulation"],
        gpu_capability=None,
    )
    assert report.findings == []


def test_auto_resolves_to_the_gpu() -> None:
    value, report = resolve_arch_list("auto", "8.9")
    assert value == "8.9"
    assert [(f.severity, ONLY_AT_BUILD in f.message) for f in report.findings] == [("info", True)]


def test_auto_without_a_gpu_leaves_the_variable_out() -> None:
    env, report = check_env(
        {"TORCH_CUDA_ARCH_LIST": "auto", "X": "1"}, flags=[], gpu_capability=None
    )
    assert env == {"X": "1"}
    assert "no GPU visible in the target, variable left out" in report.findings[0].message
    assert ONLY_AT_BUILD in report.findings[1].message


@pytest.mark.parametrize("value", ["8.9", "8.6;8.9", "8.6 8.9", "9.0+PTX", "9.0a", "Ada", "native"])
def test_explicit_arch_lists_are_accepted(value: str) -> None:
    assert resolve_arch_list(value, None)[0] == value


@pytest.mark.parametrize("value", ["sm_89", "8", "8.9+ptx", "Ampre", ";"])
def test_bad_arch_lists_are_refused(value: str) -> None:
    with pytest.raises(BadInput, match="TORCH_CUDA_ARCH_LIST"):
        resolve_arch_list(value, "8.9")


def test_the_posts_8_6_on_an_ada_card_warns() -> None:
    _, report = resolve_arch_list("8.6", "8.9")
    assert report.findings[0].severity == "warning"
    assert "does not cover this GPU (compute capability 8.9)" in report.findings[0].message


@pytest.mark.parametrize("value", ["8.9", "8.6;8.9", "8.0+PTX", "Ada"])
def test_lists_that_cover_the_gpu_do_not_warn(value: str) -> None:
    _, report = resolve_arch_list(value, "8.9")
    assert [f.severity for f in report.findings] == ["info"]


def test_a_malformed_capability_is_refused() -> None:
    with pytest.raises(BadInput, match="compute capability"):
        resolve_arch_list("auto", "sm_89")
