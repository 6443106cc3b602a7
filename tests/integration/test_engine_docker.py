"""apply / verify / rollback against real test-bed containers, through the real CLI in a
subprocess, with faults injected; every fault ends with the original bytes and a healthy
server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docker.models.containers import Container

from qpatch.comfy_api import ComfyAPI
from qpatch.health import wait_healthy
from qpatch.targets.docker import DockerTarget
from tests.conftest import TESTBED_PYTHON, StartContainer

pytestmark = pytest.mark.docker

NODE = "/root/ComfyUI/custom_nodes/comfyui_qwen_image/qwen_image_loader.py"
SCRIPT = "/root/1键启动.sh"
FILES = (NODE, SCRIPT)
REPO = Path(__file__).resolve().parents[2]


def qpatch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qpatch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def bad_tls_patch(folder: Path) -> Path:
    """A patch whose flags stop ComfyUI at start (TLS files that do not exist): the way
    to make a restart fail for real."""
    patch = folder / "bad-tls.yaml"
    patch.write_text(
        "name: bad-tls\ndescription: TLS files that do not exist stop ComfyUI at start\n"
        "version: 1\nsteps:\n  - startup:\n      flags:\n"
        "        - --tls-keyfile=/nonexistent.key\n        - --tls-certfile=/nonexistent.crt\n"
    )
    return patch


def spawn_apply(name: str) -> subprocess.Popen[str]:
    """`qpatch apply NAME` in the background, for faults injected while it runs."""
    return subprocess.Popen(
        [sys.executable, "-m", "qpatch", "apply", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def hashes(container: Container) -> dict[str, str]:
    target = DockerTarget(container.name, require_running=False)
    return {p: hashlib.sha256(target.read_file(p)[0]).hexdigest() for p in FILES}


def healthy(container: Container, timeout: float = 60) -> bool:
    wait_healthy(ComfyAPI(DockerTarget(container.name), TESTBED_PYTHON), timeout=timeout)
    return True


def server_pid(container: Container) -> int:
    procs = DockerTarget(container.name).server_processes()
    assert len(procs) == 1
    return procs[0].pid


def test_round_trip_is_byte_exact_and_a_second_apply_changes_nothing(
    comfy_container: Container,
) -> None:
    before = hashes(comfy_container)

    dry = qpatch("apply", comfy_container.name, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+                output = torch.no_grad()(checkpoint)(self.model" in dry.stdout
    assert hashes(comfy_container) == before
    assert comfy_container.exec_run(["test", "-e", "/var/lib/qpatch"]).exit_code == 1

    applied = qpatch("apply", comfy_container.name, "--json")
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert result["status"] == "applied"
    # the CPU test bed: the allocator edits are no-ops there, so only the loader is written
    assert {f["path"]: f["sha256_before"] for f in result["files"]} == {NODE: before[NODE]}
    after = hashes(comfy_container)
    assert after == {**before, NODE: result["files"][0]["sha256_after"]}
    assert "--disable-cuda-malloc" not in result["argv"]
    assert any("--disable-cuda-malloc skipped: no-op here" in f for f in result["findings"])
    assert healthy(comfy_container)
    pid = server_pid(comfy_container)

    again = qpatch("apply", comfy_container.name, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "already-applied"
    assert server_pid(comfy_container) == pid, "a second apply restarted the server"

    verified = qpatch("verify", comfy_container.name, "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["status"] == "ok"

    rolled = qpatch("rollback", comfy_container.name)
    assert rolled.returncode == 0, rolled.stderr
    assert hashes(comfy_container) == before
    assert healthy(comfy_container)
    assert qpatch("rollback", comfy_container.name).returncode == 0  # nothing to roll back
    assert "rolled-back" in qpatch("status", comfy_container.name).stdout


def test_a_flag_that_stops_the_server_is_rolled_back_automatically(
    comfy_container: Container, tmp_path: Path
) -> None:
    patch = bad_tls_patch(tmp_path)
    before = hashes(comfy_container)
    r = qpatch("apply", comfy_container.name, "--patch", str(patch), "--timeout", "60")
    assert r.returncode == 1, r.stderr
    assert "every file is back as it was" in r.stderr
    assert "load_cert_chain" in r.stderr  # the server's own last log lines say why
    assert hashes(comfy_container) == before
    assert healthy(comfy_container)


def test_container_stopped_during_the_health_wait(comfy_container: Container) -> None:
    before = hashes(comfy_container)
    comfy_container.reload()
    started = comfy_container.attrs["State"]["StartedAt"]
    proc = spawn_apply(comfy_container.name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for qpatch's restart, then stop the container
        comfy_container.reload()
        if comfy_container.attrs["State"]["StartedAt"] != started:
            break
        time.sleep(0.1)
    else:
        pytest.fail("qpatch never restarted the container")
    comfy_container.stop(timeout=0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert hashes(comfy_container) == before
    assert healthy(comfy_container)


def test_kill_9_right_after_the_writes_is_recovered_by_the_next_rollback(
    comfy_container: Container,
) -> None:
    before = hashes(comfy_container)
    r = qpatch("apply", comfy_container.name, env={"QPATCH_FAULT": "after-write"})
    assert r.returncode == -9
    assert hashes(comfy_container) != before  # the writes happened

    rolled = qpatch("rollback", comfy_container.name)
    assert rolled.returncode == 0, rolled.stderr
    assert "interrupted" in rolled.stderr
    assert hashes(comfy_container) == before
    assert healthy(comfy_container)


def test_read_only_file_stops_before_any_write(
    start_container: StartContainer, tmp_path: Path
) -> None:
    node = REPO / "testbed" / "custom_nodes" / "comfyui_qwen_image" / "qwen_image_loader.py"
    copy = tmp_path / "qwen_image_loader.py"
    copy.write_bytes(node.read_bytes())
    c = start_container(volumes={str(copy): {"bind": NODE, "mode": "ro"}})
    assert healthy(c, timeout=120)
    before = hashes(c)
    r = qpatch("apply", c.name)
    assert r.returncode == 2, r.stderr
    assert "not writable" in r.stderr
    assert hashes(c) == before
    assert (
        c.exec_run(["test", "-e", "/var/lib/qpatch/docker-" + c.name + "/ledger.json"]).exit_code
        == 1
    )


def test_drifted_file_refuses_rollback_until_forced_and_keeps_the_copy(
    comfy_container: Container,
) -> None:
    before = hashes(comfy_container)
    assert qpatch("apply", comfy_container.name, "--no-restart").returncode == 0
    comfy_container.exec_run(["sh", "-c", f"echo '# edited by hand' >> {NODE}"])
    drifted = hashes(comfy_container)[NODE]

    v = qpatch("verify", comfy_container.name)
    assert v.returncode == 3 and "drift" in v.stderr
    assert "+# edited by hand" in v.stdout

    refused = qpatch("rollback", comfy_container.name, "--no-restart")
    assert refused.returncode == 3 and NODE in refused.stderr
    assert hashes(comfy_container)[NODE] == drifted

    forced = qpatch("rollback", comfy_container.name, "--no-restart", "--force")
    assert forced.returncode == 0, forced.stderr
    assert hashes(comfy_container) == before
    kept = comfy_container.exec_run(
        ["sh", "-c", f"cat /var/lib/qpatch/docker-{comfy_container.name}/drifted/*"]
    )
    assert hashlib.sha256(kept.output).hexdigest() == drifted


def test_two_applies_at_once_one_is_refused_by_the_lock(comfy_container: Container) -> None:
    lock = f"/var/lib/qpatch/docker-{comfy_container.name}/lock"
    first = spawn_apply(comfy_container.name)
    deadline = time.monotonic() + 60
    while comfy_container.exec_run(["test", "-e", lock]).exit_code != 0:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    second = qpatch("apply", comfy_container.name)
    assert second.returncode == 2
    assert "another qpatch" in second.stderr
    first.communicate(timeout=300)
    assert first.returncode == 0


def test_engine_unreachable_and_missing_container_exit_2() -> None:
    r = qpatch("apply", "whatever", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == 2 and "Docker engine unreachable" in r.stderr
    r = qpatch("apply", "qpatch-no-such-container")
    assert r.returncode == 2 and "no such container" in r.stderr


def test_demo_applies_verifies_rolls_back_and_removes_its_container(docker_client) -> None:
    r = qpatch("demo", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [result[s]["status"] for s in ("apply", "verify", "rollback")] == [
        "applied",
        "ok",
        "rolled-back",
    ]
    assert [f["sha256_before"] for f in result["apply"]["files"]] == [
        f["sha256_before"] for f in result["rollback"]["files"]
    ]
    assert not docker_client.containers.list(all=True, filters={"name": "^qpatch-demo$"})
