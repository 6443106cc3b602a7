"""What qpatch relies on ComfyUI to do, checked against our stand-in by default and against
any running ComfyUI on request, so anyone can compare the two:

    QPATCH_COMFYUI_URL=http://127.0.0.1:8188   a running ComfyUI (install
        tests/integration/comfyui_conformance_nodes/qpatch_conformance into its
        custom_nodes/ for the execution checks; they are skipped without it)
    QPATCH_COMFYUI_HELP=help.txt               its `python main.py --help` output

Without them the stand-in runs in a test-bed container with the conformance nodes and a
node package that fails to import, its port published on 127.0.0.1 only. Checks of the
process itself (exit status of bad flags, signals, the start-up log) need the process and
run against the stand-in only.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from qpatch import comfy_flags
from tests.conftest import TEST_LABEL, TESTBED_PYTHON

pytestmark = pytest.mark.docker

NODES = Path(__file__).parent / "comfyui_conformance_nodes"
ROOT = "/root/ComfyUI"
EXTERNAL_URL = os.environ.get("QPATCH_COMFYUI_URL")
EXTERNAL_HELP = os.environ.get("QPATCH_COMFYUI_HELP")
standin_only = pytest.mark.skipif(
    EXTERNAL_URL is not None, reason="checks the stand-in's process (QPATCH_COMFYUI_URL is set)"
)


# -- plumbing --------------------------------------------------------------------------------


@dataclass
class Comfy:
    url: str
    container: Container | None  # None: a ComfyUI we did not start

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, json.loads(raw) if raw.strip() else None

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    def run(self, prompt: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """POST /prompt, then the /history entry once the prompt is done."""
        status, body = self.request("POST", "/prompt", {"prompt": prompt, "client_id": "qpatch"})
        assert status == 200, body
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry["status"]["status_str"] in ("success", "error"):
                return entry
            time.sleep(0.1)
        raise AssertionError(f"prompt {prompt_id} not done within {timeout} s")


def _node_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for pkg in ("qpatch_conformance", "qpatch_broken"):
            tar.add(
                NODES / pkg, arcname=pkg, filter=lambda i: None if "__pycache__" in i.name else i
            )
    return buf.getvalue()


def _wait_answering(url: str, container: Container | None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/system_stats", timeout=2):
                return
        except OSError:
            if container is not None:
                container.reload()
                assert container.status == "running", container.logs().decode()[-2000:]
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer /system_stats within {timeout} s")


def start_standin(client: docker.DockerClient, image: str) -> Container:
    """A test-bed container with the conformance nodes, its port on 127.0.0.1 only."""
    c = client.containers.create(
        image,
        name=f"qpatch-test-conformance-{uuid.uuid4().hex[:8]}",
        labels={TEST_LABEL: "1"},
        ports={"8188/tcp": ("127.0.0.1", None)},
    )
    c.put_archive(f"{ROOT}/custom_nodes", _node_tar())
    c.start()
    c.reload()
    return c


def url_of(c: Container) -> str:
    port = c.attrs["NetworkSettings"]["Ports"]["8188/tcp"][0]["HostPort"]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def comfy(request: pytest.FixtureRequest) -> Iterator[Comfy]:
    if EXTERNAL_URL:
        _wait_answering(EXTERNAL_URL.rstrip("/"), None, timeout=10)
        yield Comfy(EXTERNAL_URL.rstrip("/"), None)
        return
    client = request.getfixturevalue("docker_client")
    c = start_standin(client, request.getfixturevalue("testbed_image"))
    try:
        _wait_answering(url_of(c), c)
        yield Comfy(url_of(c), c)
    finally:
        c.remove(force=True, v=True)


@pytest.fixture(scope="module")
def conformance_nodes(comfy: Comfy) -> None:
    if "QpatchCounter" not in comfy.get("/object_info"):
        pytest.skip(f"install {NODES / 'qpatch_conformance'} into that ComfyUI's custom_nodes/")


@pytest.fixture(scope="module")
def help_text(comfy: Comfy) -> str:
    if EXTERNAL_HELP:
        return Path(EXTERNAL_HELP).read_text()
    if comfy.container is None:
        pytest.skip("set QPATCH_COMFYUI_HELP to that ComfyUI's `main.py --help` output")
    return _main_py(comfy.container, "--help").output


@dataclass
class MainRun:
    code: int
    output: str
    seconds: float


def _main_py(c: Container, *flags: str) -> MainRun:
    t0 = time.monotonic()
    r = c.exec_run([TESTBED_PYTHON, "main.py", *flags], workdir=ROOT)
    return MainRun(r.exit_code, r.output.decode("utf-8", "replace"), time.monotonic() - t0)


def tag() -> str:
    return uuid.uuid4().hex[:12]


def report(entry: dict[str, Any], node_id: str = "1") -> dict[str, Any]:
    return json.loads(entry["outputs"][node_id]["text"][0])


def one(class_type: str, tag_: str, value: int = 1) -> dict[str, Any]:
    return {"1": {"class_type": class_type, "inputs": {"tag": tag_, "value": value}}}


# -- command line (from the help text: works for any ComfyUI) --------------------------------


def test_help_lists_the_flags_qpatch_writes(help_text: str) -> None:
    cli = comfy_flags.parse_help(help_text)
    for flag in (
        "--listen",
        "--port",
        "--cpu",
        "--lowvram",
        "--novram",
        "--disable-cuda-malloc",
        "--bf16-unet",
        "--disable-smart-memory",
        "--reserve-vram",
    ):
        assert cli.exact(flag) is not None, flag
    assert help_text.startswith("usage: main.py")


def test_help_shows_upstreams_exclusive_groups(help_text: str) -> None:
    cli = comfy_flags.parse_help(help_text)
    assert {"--cpu", "--lowvram", "--novram", "--highvram", "--gpu-only"} <= cli.group_of("--cpu")
    assert cli.group_of("--cuda-malloc") == {"--cuda-malloc", "--disable-cuda-malloc"}
    assert "--fp16-unet" in cli.group_of("--bf16-unet")


def test_the_posts_flags_are_ambiguous_or_unknown(help_text: str) -> None:
    cli = comfy_flags.parse_help(help_text)
    assert cli.exact("--fp16") is None
    assert {o.name for o in cli.prefix_matches("--fp16")} == {
        "--fp16-unet",
        "--fp16-vae",
        "--fp16-text-enc",
    }
    assert cli.prefix_matches("--cpu-offload") == []


# -- the process (stand-in only) -------------------------------------------------------------


@standin_only
def test_help_answers_fast_with_exit_0(comfy: Comfy) -> None:
    assert comfy.container is not None
    run = _main_py(comfy.container, "--help")
    assert run.code == 0
    assert run.seconds < 5, f"--help took {run.seconds:.1f} s: it must not import torch"


@standin_only
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--fp16"],
            "error: ambiguous option: --fp16 could match --fp16-unet, --fp16-vae, --fp16-text-enc",
        ),
        (["--cpu-offload"], "error: unrecognized arguments: --cpu-offload"),
        (["--cpu", "--lowvram"], "error: argument --lowvram: not allowed with argument --cpu"),
        (["--port", "eighty"], "error: argument --port: invalid int value: 'eighty'"),
    ],
)
def test_bad_flags_end_the_process_with_exit_status_2(
    comfy: Comfy, flags: list[str], message: str
) -> None:
    assert comfy.container is not None
    run = _main_py(comfy.container, *flags)
    assert run.code == 2
    assert f"main.py: {message}" in run.output


@standin_only
def test_prefixes_are_accepted(comfy: Comfy) -> None:
    assert comfy.container is not None
    run = _main_py(comfy.container, "--cpu", "--quick-test-for-ci", "--disable-all-cust")
    assert run.code == 0, run.output


@standin_only
def test_a_node_package_that_fails_to_import_is_logged_and_skipped(comfy: Comfy) -> None:
    assert comfy.container is not None
    log = comfy.container.logs().decode("utf-8", "replace")
    assert "Cannot import /root/ComfyUI/custom_nodes/qpatch_broken module for custom nodes" in log
    assert "(IMPORT FAILED): /root/ComfyUI/custom_nodes/qpatch_broken" in log
    assert "QwenImageLoader" in comfy.get("/object_info")


@standin_only
def test_start_up_log_names_the_device_and_allocator(comfy: Comfy) -> None:
    assert comfy.container is not None
    log = comfy.container.logs().decode("utf-8", "replace")
    assert "Device: cpu" in log
    assert "Set vram state to: DISABLED" in log
    assert "To see the GUI go to: http://" in log


@standin_only
def test_sigterm_ends_it_within_a_second(docker_client: docker.DockerClient, testbed_image: str):
    c = start_standin(docker_client, testbed_image)
    try:
        _wait_answering(url_of(c), c)
        pid = _server_pid(c)
        t0 = time.monotonic()
        c.exec_run(["kill", "-TERM", pid])
        c.wait(timeout=30)
        assert time.monotonic() - t0 < 1.0
    finally:
        c.remove(force=True, v=True)


@standin_only
def test_sigint_stops_the_server_and_says_so(
    docker_client: docker.DockerClient, testbed_image: str
) -> None:
    c = start_standin(docker_client, testbed_image)
    try:
        _wait_answering(url_of(c), c)
        c.exec_run(["kill", "-INT", _server_pid(c)])
        assert c.wait(timeout=30)["StatusCode"] == 0
        assert "Stopped server" in c.logs().decode("utf-8", "replace")
    finally:
        c.remove(force=True, v=True)


def _server_pid(c: Container) -> str:
    r = c.exec_run(["sh", "-c", "pgrep -f 'python main.py' | head -n 1"])
    pid = r.output.decode().strip()
    assert pid.isdigit(), r.output
    return pid


# -- HTTP API (any ComfyUI) ------------------------------------------------------------------


def test_system_stats_has_upstreams_shape(comfy: Comfy) -> None:
    stats = comfy.get("/system_stats")
    system = stats["system"]
    for key in (
        "os",
        "ram_total",
        "ram_free",
        "comfyui_version",
        "python_version",
        "pytorch_version",
        "embedded_python",
        "argv",
    ):
        assert key in system, key
    assert isinstance(system["argv"], list) and system["argv"][0].endswith("main.py")
    device = stats["devices"][0]
    for key in (
        "name",
        "type",
        "index",
        "vram_total",
        "vram_free",
        "torch_vram_total",
        "torch_vram_free",
    ):
        assert key in device, key
    assert all(isinstance(device[k], int) for k in ("vram_total", "vram_free"))
    assert 0 <= device["vram_free"] <= device["vram_total"]
    if comfy.container is not None:
        assert system["comfyui_version"] == "0.14.1"
        assert "--cpu" in system["argv"]
        assert (device["name"], device["type"], device["index"]) == ("cpu", "cpu", None)


def test_object_info_describes_every_node(comfy: Comfy, conformance_nodes: None) -> None:
    info = comfy.get("/object_info")["QpatchCounter"]
    assert info["input"]["required"]["value"][0] == "INT"
    assert info["output"] == ["INT"]
    assert info["output_node"] is True
    assert comfy.get("/object_info/QpatchCounter")["QpatchCounter"]["name"] == "QpatchCounter"


def test_queue_has_running_and_pending(comfy: Comfy) -> None:
    queue = comfy.get("/queue")
    assert set(queue) >= {"queue_running", "queue_pending"}


def test_an_unknown_node_is_refused_with_400(comfy: Comfy) -> None:
    status, body = comfy.request("POST", "/prompt", {"prompt": one("QpatchNoSuchNode", "x")})
    assert status == 400
    assert body["error"]["type"] in ("missing_node_type", "invalid_prompt")
    assert "node_errors" in body


def test_a_missing_input_is_refused_with_node_errors(comfy: Comfy, conformance_nodes: None):
    prompt = {"7": {"class_type": "QpatchCounter", "inputs": {"tag": "x"}}}
    status, body = comfy.request("POST", "/prompt", {"prompt": prompt})
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"]["7"]["errors"]
    assert errors[0]["type"] == "required_input_missing"
    assert errors[0]["details"] == "value"


def test_a_value_out_of_range_is_refused(comfy: Comfy, conformance_nodes: None) -> None:
    status, body = comfy.request("POST", "/prompt", {"prompt": one("QpatchCounter", "x", 5000)})
    assert status == 400
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"


def test_a_prompt_without_outputs_is_refused(comfy: Comfy, conformance_nodes: None) -> None:
    prompt = {"1": {"class_type": "QpatchAdd", "inputs": {"value": 1}}}
    status, body = comfy.request("POST", "/prompt", {"prompt": prompt})
    assert status == 400
    assert body["error"]["type"] == "prompt_no_outputs"


def test_a_prompt_runs_and_its_history_has_the_outputs(comfy: Comfy, conformance_nodes: None):
    status, body = comfy.request("POST", "/prompt", {"prompt": one("QpatchCounter", tag())})
    assert status == 200
    assert set(body) >= {"prompt_id", "number", "node_errors"}
    entry = comfy.run(one("QpatchCounter", tag(), 3))
    assert entry["status"]["status_str"] == "success"
    assert entry["status"]["completed"] is True
    assert report(entry)["value"] == 3
    events = [m[0] for m in entry["status"]["messages"]]
    assert events[0] == "execution_start" and events[-1] == "execution_success"


def test_a_linked_input_carries_the_value(comfy: Comfy, conformance_nodes: None) -> None:
    t = tag()
    prompt = {
        "1": {"class_type": "QpatchCounter", "inputs": {"tag": t, "value": ["2", 0]}},
        "2": {"class_type": "QpatchAdd", "inputs": {"value": 41}},
    }
    assert report(comfy.run(prompt))["value"] == 42


def test_nodes_run_under_inference_mode(comfy: Comfy, conformance_nodes: None) -> None:
    r = report(comfy.run(one("QpatchCounter", tag())))
    assert r["inference_mode"] is True
    assert r["grad_enabled"] is False


def test_a_node_error_is_in_the_history(comfy: Comfy, conformance_nodes: None) -> None:
    t = tag()
    entry = comfy.run(one("QpatchRaises", t))
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "QpatchRaises"
    assert f"qpatch conformance failure {t}" in errors[0]["exception_message"]


def test_out_of_memory_is_reported_as_torchs_error(comfy: Comfy, conformance_nodes: None):
    entry = comfy.run(one("QpatchOutOfMemory", tag()))
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert "CUDA out of memory" in error["exception_message"]


# -- caching and IS_CHANGED (any ComfyUI) ----------------------------------------------------


def _runs_twice(comfy: Comfy, class_type: str) -> tuple[int, int]:
    prompt = one(class_type, tag())
    return report(comfy.run(prompt))["runs"], report(comfy.run(prompt))["runs"]


def test_an_identical_prompt_is_served_from_the_cache(comfy: Comfy, conformance_nodes: None):
    assert _runs_twice(comfy, "QpatchCounter") == (1, 1)


def test_is_changed_returning_nan_reruns_the_node_every_time(
    comfy: Comfy, conformance_nodes: None
) -> None:
    assert _runs_twice(comfy, "QpatchNaNChanged") == (1, 2)


def test_a_stable_classmethod_is_changed_keeps_the_cache(comfy: Comfy, conformance_nodes: None):
    assert _runs_twice(comfy, "QpatchConstantChanged") == (1, 1)


def test_is_changed_without_classmethod_reruns_the_node(comfy: Comfy, conformance_nodes: None):
    assert _runs_twice(comfy, "QpatchInstanceChanged") == (1, 2)


def test_other_inputs_run_the_node_again(comfy: Comfy, conformance_nodes: None) -> None:
    t = tag()
    assert report(comfy.run(one("QpatchCounter", t, 1)))["runs"] == 1
    assert report(comfy.run(one("QpatchCounter", t, 2)))["runs"] == 2


def test_free_memory_drops_the_cache(comfy: Comfy, conformance_nodes: None) -> None:
    prompt = one("QpatchCounter", tag())
    assert report(comfy.run(prompt))["runs"] == 1
    status, _ = comfy.request("POST", "/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    time.sleep(1.0)  # the worker acts on /free between prompts
    assert report(comfy.run(prompt))["runs"] == 2
