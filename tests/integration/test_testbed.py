"""The test bed is our ComfyUI stand-in (as upstream 0.14.1) in a one-click layout: pin what
qpatch relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from docker.models.containers import Container

from qpatch.comfy_api import ComfyAPI
from qpatch.workflow import load_workflow, run_workflow
from tests.conftest import TESTBED_PYTHON, StartContainer

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "workflows" / "qwen_image_standin.json"
LOAD_LINE = re.compile(r"^\[qwen_image\] load #\d+ ", re.MULTILINE)


def loads_in_log(container: Container) -> int:
    return len(LOAD_LINE.findall(container.logs().decode("utf-8", "replace")))


def test_system_stats_through_exec_reports_the_real_version(comfy_api: ComfyAPI) -> None:
    stats = comfy_api.system_stats()
    assert stats is not None
    assert stats["system"]["comfyui_version"] == "0.14.1"
    assert "--cpu" in stats["system"]["argv"]
    assert stats["devices"][0]["type"] == "cpu"


def test_one_click_layout(comfy_container: Container) -> None:
    assert comfy_container.attrs["Config"]["Cmd"] == ["bash", "/root/1键启动.sh"]
    out = comfy_container.exec_run(
        ["ls", "/root/ComfyUI/custom_nodes/comfyui_qwen_image/qwen_image_loader.py"]
    )
    assert out.exit_code == 0


def test_workflow_runs_and_an_identical_prompt_is_served_from_cache(
    comfy_container: Container, comfy_api: ComfyAPI
) -> None:
    prompt = load_workflow(WORKFLOW)
    first = run_workflow(comfy_api, prompt, timeout=120)
    assert first.status == "success", first.messages
    report = json.loads(first.ui_texts()[0])
    assert report["steps"] >= 1 and report["device"] == "cpu"
    assert loads_in_log(comfy_container) == 1

    second = run_workflow(comfy_api, prompt, timeout=120)
    assert second.status == "success"
    assert second.outputs == first.outputs
    assert loads_in_log(comfy_container) == 1, "the second identical prompt reloaded the model"


def test_the_posts_flags_stop_comfyui_with_exit_status_2(start_container: StartContainer) -> None:
    c = start_container(
        command=[TESTBED_PYTHON, "main.py", "--cpu", "--fp16", "--cpu-offload"],
        working_dir="/root/ComfyUI",
    )
    assert c.wait(timeout=60)["StatusCode"] == 2
    log = c.logs().decode("utf-8", "replace")
    assert "main.py: error: ambiguous option: --fp16 could match" in log
