"""Each env and flag edit judged on the ComfyUI it lands on, from that server's own evidence,
on both stand-in profiles: 0.14.1 and current upstream (COMFYUI_STANDIN_PROFILE=current).

The test bed runs `--cpu`: there the allocator edits do nothing, and the bundled patch says
so and leaves them out; `--bf16-unet` over fp8 weights is refused on either version; a
`when:` picks the edit meant for each version."""

from __future__ import annotations

import json
import struct
import textwrap
from pathlib import Path

import pytest
from docker.models.containers import Container

from qpatch.comfy_api import ComfyAPI
from qpatch.health import wait_healthy
from qpatch.targets.docker import DockerTarget
from tests.conftest import TESTBED_PYTHON, StartContainer
from tests.integration.test_engine_docker import hashes, qpatch

pytestmark = pytest.mark.docker

PROFILES = {"0.14.1": "0.14.1", "current": "0.38.1"}  # profile -> the version it reports
WEIGHTS = "/root/ComfyUI/models/diffusion_models/qwen_image_fp8_e4m3fn.safetensors"


@pytest.fixture(params=list(PROFILES))
def profiled(request: pytest.FixtureRequest, start_container: StartContainer) -> Container:
    c = start_container(environment={"COMFYUI_STANDIN_PROFILE": request.param})
    wait_healthy(ComfyAPI(DockerTarget(c.name), TESTBED_PYTHON), timeout=120)
    c.profile = request.param  # type: ignore[attr-defined]
    return c


def patch_file(folder: Path, body: str) -> Path:
    path = folder / "p.yaml"
    path.write_text("name: p\ndescription: test\nversion: 1\n" + textwrap.dedent(body))
    return path


def put_weights(c: Container, path: str = WEIGHTS, dtype: str = "F8_E4M3") -> None:
    """A real safetensors file (header and bytes), fp8 as the official qwen_image_fp8_e4m3fn
    is by default, only small."""
    size = 64 * (1 if dtype.startswith("F8") else 2)
    table = {"w": {"dtype": dtype, "shape": [64], "data_offsets": [0, size]}}
    header = json.dumps(table).encode()
    data = struct.pack("<Q", len(header)) + header + bytes(size)
    write = "import sys; open(sys.argv[1], 'wb').write(bytes.fromhex(sys.argv[2]))"
    r = c.exec_run(["mkdir", "-p", path.rsplit("/", 1)[0]])
    assert r.exit_code == 0
    r = c.exec_run([TESTBED_PYTHON, "-c", write, path, data.hex()])
    assert r.exit_code == 0, r.output


def test_dry_run_lists_every_edit_with_its_effect_and_evidence(profiled: Container) -> None:
    r = qpatch("apply", profiled.name, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    evidence = result["evidence"]
    assert evidence["comfyui"] == {"value": PROFILES[profiled.profile], "source": "/system_stats"}
    assert evidence["device"]["value"] == "cpu"
    assert evidence["dynamic_vram"]["value"] is False
    effects = {e["edit"]: e for e in result["effects"]}
    for edit in effects.values():
        assert edit["effect"] in ("effective", "no-op", "harmful", "unknown")
        assert edit["why"] and edit["evidence"]
    assert effects["TORCH_CUDA_ARCH_LIST=auto"]["effect"] == "no-op"
    if profiled.profile == "0.14.1":
        assert effects["--disable-cuda-malloc"]["effect"] == "no-op"
        assert "device cpu (/system_stats)" in effects["--disable-cuda-malloc"]["evidence"]
    else:  # meant for versions before 0.15: not even judged, and the report says why
        assert "--disable-cuda-malloc" not in effects
        assert any(
            "--disable-cuda-malloc skipped: its `when: comfyui: <0.15`" in f
            for f in result["findings"]
        )
    # nothing idle is written: the start script is not in the plan's changed files
    changed = {f["path"] for f in result["files"] if f["sha256_before"] != f["sha256_after"]}
    assert changed == {"/root/ComfyUI/custom_nodes/comfyui_qwen_image/qwen_image_loader.py"}
    human = qpatch("apply", profiled.name, "--dry-run")
    assert "skipped: no-op here: the server runs on the CPU" in human.stdout + human.stderr


def test_bf16_unet_over_fp8_weights_is_refused_with_the_reason(
    profiled: Container, tmp_path: Path
) -> None:
    put_weights(profiled)
    before = hashes(profiled)
    patch = patch_file(tmp_path, "steps:\n  - startup:\n      flags: [--bf16-unet]\n")
    r = qpatch("apply", profiled.name, "--patch", str(patch))
    assert r.returncode == 2, r.stderr
    assert "harmful on this server; nothing was changed" in r.stderr
    assert "--bf16-unet: harmful: ComfyUI then keeps a bf16 copy of the fp8 weights" in r.stderr
    assert "weights dtype fp8_e4m3fn (safetensors header of qwen_image_fp8_e4m3fn" in r.stderr
    assert hashes(profiled) == before
    refused = json.loads(qpatch("apply", profiled.name, "--patch", str(patch), "--json").stdout)
    assert refused["status"] != "applied" and "harmful" in refused["error"]
    assert refused["effects"][0]["effect"] == "harmful"
    assert refused["evidence"]["weights_dtype"]["value"] == "fp8_e4m3fn"
    allowed = patch_file(
        tmp_path,
        "steps:\n  - startup:\n      flags: [{flag: --bf16-unet, allow_harmful: true}]\n",
    )
    for args in (["--patch", str(allowed)], ["--patch", str(patch), "--allow-harmful"]):
        r = qpatch("apply", profiled.name, *args, "--dry-run", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["effects"][0]["effect"] == "harmful"
    assert hashes(profiled) == before


def test_the_workflow_names_the_weights_that_decide(profiled: Container, tmp_path: Path) -> None:
    """fp8 weights lie in the folder, but the workflow loads a bf16 file: --bf16-unet is a
    no-op for it, left out, not refused."""
    put_weights(profiled)
    bf16 = WEIGHTS.replace("qwen_image_fp8_e4m3fn", "qwen_image_bf16")
    put_weights(profiled, bf16, "BF16")
    workflow = tmp_path / "wf.json"
    loader = {"unet_name": "qwen_image_bf16.safetensors", "weight_dtype": "default"}
    workflow.write_text(json.dumps({"1": {"class_type": "UNETLoader", "inputs": loader}}))
    patch = patch_file(tmp_path, "steps:\n  - startup:\n      flags: [--bf16-unet]\n")
    r = qpatch(
        "apply",
        profiled.name,
        "--patch",
        str(patch),
        "--workflow",
        str(workflow),
        "--dry-run",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["evidence"]["weights_dtype"] == {
        "value": "bf16",
        "source": "safetensors header of qwen_image_bf16.safetensors",
    }
    assert result["effects"][0]["effect"] == "no-op"


def test_when_picks_the_edit_meant_for_each_version(profiled: Container, tmp_path: Path) -> None:
    patch = patch_file(
        tmp_path,
        """\
        steps:
          - startup:
              flags:
                - {flag: --reserve-vram, value: "1.5", when: {comfyui: ">=0.15"}}
                - {flag: --disable-smart-memory, when: {comfyui: "<0.15"}}
        """,
    )
    r = qpatch("apply", profiled.name, "--patch", str(patch), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    edits = [e["edit"] for e in json.loads(r.stdout)["effects"]]
    expected = (
        ["--reserve-vram 1.5"] if profiled.profile == "current" else ["--disable-smart-memory"]
    )
    assert edits == expected
