"""qpatch.vram against the test bed (our ComfyUI stand-in on --cpu in Docker): the
/system_stats fallback, the honest "not measured", and that a measured run really runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from docker.models.containers import Container

from qpatch.comfy_api import ComfyAPI
from qpatch.vram import NO_GPU, NvmlSource, NvmlUnavailable, compare, measure_workflow
from qpatch.workflow import load_workflow

pytestmark = pytest.mark.docker

WORKFLOWS = Path(__file__).resolve().parents[2] / "examples" / "workflows"
WORKFLOW = WORKFLOWS / "qwen_image_standin.json"
LOAD_LINE = re.compile(r"^\[qwen_image\] load #(\d+) ", re.MULTILINE)


def loads_in_log(container: Container) -> list[int]:
    return [int(n) for n in LOAD_LINE.findall(container.logs().decode("utf-8", "replace"))]


def nvml_here() -> bool:
    try:
        NvmlSource(lambda: []).close()
    except NvmlUnavailable:
        return False
    return True


def test_the_cpu_test_bed_is_measured_through_system_stats_and_not_called_vram(
    comfy_api: ComfyAPI,
) -> None:
    m = measure_workflow(comfy_api, load_workflow(WORKFLOW), timeout=120, workflow=WORKFLOW.name)
    assert m.status == "success"
    assert (m.source, m.device_type) == ("system_stats", "cpu")
    assert not m.vram_measured
    expected = NO_GPU if not nvml_here() else "ComfyUI runs on the CPU"
    assert m.not_measured == expected
    assert str(m) == f"VRAM: not measured ({expected})"
    # the RAM figures are kept, with their source, for whoever wants them
    assert m.target_peak.value and m.target_peak.value > 0
    assert m.device_peak.value and m.device_idle.value
    assert m.device_peak.value >= m.device_idle.value
    assert m.target_peak.source == m.device_peak.source == "system_stats"
    assert m.samples >= 2 and m.wall_s.value and m.wall_s.value > 0
    assert m.wall_s.source == "wall"
    # the node's own report, parsed from its ui text
    assert m.node is not None and m.node["device"] == "cpu"
    assert m.node_step_time.value and m.node_step_time.source == "node"
    assert m.node_peak_allocated.value is None  # torch has no peak to report on a CPU
    assert isinstance(m.node["output_checksum"], float)
    assert m.freed and m.seed_inputs == ["1.seed"]
    json.dumps(m.to_json())


def test_a_second_measurement_really_runs_again(
    comfy_container: Container, comfy_api: ComfyAPI
) -> None:
    prompt = load_workflow(WORKFLOW)
    first = measure_workflow(comfy_api, prompt, timeout=120)
    second = measure_workflow(comfy_api, prompt, timeout=120)
    assert loads_in_log(comfy_container) == [1, 2]
    assert first.node and second.node
    assert second.node["loads"] == first.node["loads"] + 1
    c = compare(first, second)
    assert c.verdict == f"VRAM: not measured ({first.not_measured})"
    assert c.row("node_step_time").ratio is not None
    json.dumps(c.to_json())


def test_free_alone_defeats_the_cache_and_the_same_seed_gives_the_same_output(
    comfy_container: Container, comfy_api: ComfyAPI
) -> None:
    """The same seed both times: only POST /free stands between the prompt and the cache."""
    prompt = load_workflow(WORKFLOW)
    seed = prompt["1"]["inputs"]["seed"]
    first = measure_workflow(comfy_api, prompt, timeout=120, seed=seed)
    second = measure_workflow(comfy_api, prompt, timeout=120, seed=seed)
    assert len(loads_in_log(comfy_container)) == 2, "the second run was served from the cache"
    assert compare(first, second).same_output is True
