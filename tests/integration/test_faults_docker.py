"""Faults the world throws at a run, from outside qpatch, on real test-bed containers: each
ends with every file byte-exact as the last completed command left it, ComfyUI healthy,
and the next command completing.

Killed during the restart: qpatch's own restart stops ComfyUI's python (the one-click
script, PID 1, then ends and the container exits), so a kill right then leaves the
container down. A restart qpatch began is qpatch's to finish."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from tests.conftest import CPU_PATCH, TEST_LABEL, StartContainer
from tests.integration.test_engine_docker import hashes, healthy, qpatch

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]


def kill_mid_restart(c: Container, args: list[str]) -> str:
    """Run `qpatch ARGS` and kill it in the middle of its restart, with ComfyUI stopped and
    not yet started again: frozen (SIGSTOP) the moment it says "restarting ComfyUI" (its
    ledger already says so), ComfyUI's python stopped as qpatch's own restart stops it,
    then SIGKILL. Deterministic, where a timed kill races the restart's start."""
    p, seen = freeze_at(args, "restarting ComfyUI")
    if status_of(c) == "running":
        c.exec_run(["sh", "-c", "kill -TERM $(pgrep -f 'python main.py')"])
    c.wait(timeout=30)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert status_of(c) == "exited"
    return "".join(seen)


def status_of(c: Container) -> str:
    c.reload()
    return c.status


def test_killed_during_the_apply_restart_the_next_apply_starts_it_and_completes(
    comfy_container: Container,
) -> None:
    before = hashes(comfy_container)
    kill_mid_restart(comfy_container, ["apply", comfy_container.name])

    again = qpatch("apply", comfy_container.name)
    assert again.returncode == 0, again.stderr
    said = again.stdout + again.stderr
    assert "starting it again" in said
    assert "recovered: every file is back as it was before the interrupted run" in said
    assert healthy(comfy_container)
    after = hashes(comfy_container)
    assert after != before  # applied, in full, by the second command

    rolled = qpatch("rollback", comfy_container.name)
    assert rolled.returncode == 0, rolled.stderr
    assert hashes(comfy_container) == before


def test_killed_during_the_rollback_restart_the_next_rollback_brings_it_up(
    comfy_container: Container,
) -> None:
    before = hashes(comfy_container)
    assert qpatch("apply", comfy_container.name).returncode == 0
    kill_mid_restart(comfy_container, ["rollback", comfy_container.name])

    again = qpatch("rollback", comfy_container.name)
    assert again.returncode == 0, again.stderr
    assert "starting it again" in again.stdout + again.stderr
    assert status_of(comfy_container) == "running"
    assert healthy(comfy_container, timeout=5)
    assert hashes(comfy_container) == before


def test_verify_of_a_target_left_down_by_a_kill_brings_it_up_before_reporting(
    comfy_container: Container,
) -> None:
    assert qpatch("apply", comfy_container.name).returncode == 0
    kill_mid_restart(comfy_container, ["rollback", comfy_container.name])
    verified = qpatch("verify", comfy_container.name)
    assert "starting it again" in verified.stdout + verified.stderr
    assert healthy(comfy_container, timeout=5)
    assert verified.returncode == 3  # rolled back: "not applied", said with the server up


# -- paths that leave the ComfyUI root, and links inside it ----------------------------------

LOADER = "/root/ComfyUI/custom_nodes/comfyui_qwen_image/qwen_image_loader.py"


def sh(c: Container, script: str) -> None:
    r = c.exec_run(["sh", "-c", script])
    assert r.exit_code == 0, r.output


def sha(c: Container, path: str) -> str:
    r = c.exec_run(["sha256sum", path])
    assert r.exit_code == 0, r.output
    return r.output.split()[0].decode()


def codemod_patch(folder: Path, file: str) -> Path:
    p = folder / "one-file.yaml"
    p.write_text(
        "name: one-file\ndescription: checkpoint one file's model call\nversion: 1\n"
        f"steps:\n  - codemod: gradient-checkpointing\n    file: {file}\n"
    )
    return p


def test_a_patch_path_through_a_symlinked_folder_out_of_the_root_is_refused(
    comfy_container: Container, tmp_path: Path
) -> None:
    sh(comfy_container, f"mkdir -p /opt/outside && cp {LOADER} /opt/outside/loader.py")
    sh(comfy_container, "ln -s /opt/outside /root/ComfyUI/custom_nodes/linked")
    before = sha(comfy_container, "/opt/outside/loader.py")
    patch = codemod_patch(tmp_path, "custom_nodes/linked/loader.py")
    r = qpatch("apply", comfy_container.name, "--patch", str(patch))
    assert r.returncode == 2, r.stderr
    assert "resolves to /opt/outside/loader.py, outside the ComfyUI root" in r.stderr
    assert sha(comfy_container, "/opt/outside/loader.py") == before
    assert comfy_container.exec_run(["test", "-e", "/var/lib/qpatch"]).exit_code != 0


def test_a_loader_that_is_a_link_out_of_the_root_is_not_even_read(
    comfy_container: Container, tmp_path: Path
) -> None:
    sh(comfy_container, f"mv {LOADER} /tmp/loader.py && ln -s /etc/hostname {LOADER}")
    before = sha(comfy_container, "/etc/hostname")
    r = qpatch("apply", comfy_container.name)
    assert r.returncode == 2, r.stderr
    assert "resolves to /etc/hostname, outside the ComfyUI root" in r.stderr
    assert sha(comfy_container, "/etc/hostname") == before
    assert comfy_container.exec_run(["test", "-L", LOADER]).exit_code == 0


def test_a_link_inside_the_root_stays_a_link_through_apply_and_rollback(
    comfy_container: Container,
) -> None:
    real = LOADER.replace("qwen_image_loader.py", "real_loader.py")
    sh(comfy_container, f"mv {LOADER} {real} && ln -s real_loader.py {LOADER}")
    before = sha(comfy_container, real)
    r = qpatch("apply", comfy_container.name)
    assert r.returncode == 0, r.stderr
    assert f"is a link to {real}: that file is edited, the link stays" in r.stdout + r.stderr
    assert comfy_container.exec_run(["test", "-L", LOADER]).exit_code == 0
    assert sha(comfy_container, real) != before
    rolled = qpatch("rollback", comfy_container.name)
    assert rolled.returncode == 0, rolled.stderr
    assert comfy_container.exec_run(["test", "-L", LOADER]).exit_code == 0
    assert sha(comfy_container, real) == before


# -- full disks and a single-file bind mount ---------------------------------------------------

SCRIPT = "/root/1键启动.sh"


def leftovers(c: Container, folder: str) -> list[str]:
    r = c.exec_run(["find", folder, "-name", ".qpatch-*"])
    return r.output.decode().split()


def test_a_full_ledger_filesystem_is_said_before_anything_is_written(
    start_container: StartContainer,
) -> None:
    c = start_container(tmpfs={"/var/lib/qpatch": "size=32k"})
    assert healthy(c)
    before = hashes(c)
    r = qpatch("apply", c.name, "--patch", CPU_PATCH)
    assert r.returncode == 2, r.stderr
    assert "no space left on /var/lib/qpatch" in r.stderr
    assert "KiB free" in r.stderr and "KiB needed" in r.stderr
    assert hashes(c) == before
    assert leftovers(c, "/var/lib/qpatch") == []
    assert healthy(c)


@pytest.fixture
def small_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A 16 KiB tmpfs-backed named volume: a full filesystem the archive API can reach (a
    container's own --tmpfs mounts are invisible to it)."""
    vol = docker_client.volumes.create(
        name=f"qpatch-test-small-{uuid.uuid4().hex[:8]}",
        driver="local",
        driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=16k"},
        labels={TEST_LABEL: "1"},
    )
    try:
        yield vol.name
    finally:
        with contextlib.suppress(docker.errors.APIError):
            vol.remove(force=True)


def test_a_full_node_folder_is_said_and_leaves_no_temp_file(
    start_container: StartContainer, small_volume: str, tmp_path: Path
) -> None:
    pack = "/root/ComfyUI/custom_nodes/full_pack"
    c = start_container(volumes={small_volume: {"bind": pack, "mode": "rw"}})
    assert healthy(c)
    sh(c, f"cp {LOADER} {pack}/qwen_image_loader.py && head -c 4096 /dev/zero > {pack}/pad")
    before = sha(c, f"{pack}/qwen_image_loader.py")
    patch = codemod_patch(tmp_path, "custom_nodes/full_pack/qwen_image_loader.py")
    r = qpatch("apply", c.name, "--patch", str(patch))
    assert r.returncode == 2, r.stderr
    assert f"no space left on {pack}" in r.stderr
    assert sha(c, f"{pack}/qwen_image_loader.py") == before
    assert leftovers(c, pack) == []
    c.remove(force=True)


def test_a_start_script_bind_mounted_as_a_single_file_is_written_in_place(
    start_container: StartContainer, tmp_path: Path
) -> None:
    host_script = tmp_path / "start.sh"
    host_script.write_bytes((REPO / "testbed" / "1键启动.sh").read_bytes())
    original = host_script.read_bytes()
    c = start_container(volumes={str(host_script): {"bind": SCRIPT, "mode": "rw"}})
    assert healthy(c)
    r = qpatch("apply", c.name, "--patch", CPU_PATCH)
    assert r.returncode == 0, r.stderr
    assert f"{SCRIPT} is a mount point (a single-file bind mount)" in r.stdout + r.stderr
    assert host_script.read_bytes() != original  # the host's file, through the mount
    assert b"--disable-smart-memory" in host_script.read_bytes()
    assert leftovers(c, "/root") == []
    rolled = qpatch("rollback", c.name)
    assert rolled.returncode == 0, rolled.stderr
    assert host_script.read_bytes() == original
    assert healthy(c)


# -- docker pause ------------------------------------------------------------------------------


def freeze_at(args: list[str], line: str, env: dict[str, str] | None = None):
    """Start `qpatch ARGS`, freeze it (SIGSTOP) when it prints `line`; the process and what
    it printed so far. The caller acts on the target, then SIGCONTs it."""
    p = subprocess.Popen(
        [sys.executable, "-u", "-m", "qpatch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert p.stdout is not None
    seen: list[str] = []
    for out in p.stdout:
        seen.append(out)
        if line in out:
            p.send_signal(signal.SIGSTOP)
            return p, seen
    raise AssertionError(f"never printed {line!r}:\n{''.join(seen)}")


def finish(p: subprocess.Popen[str], seen: list[str]) -> str:
    assert p.stdout is not None
    seen.extend(p.stdout)
    p.wait(timeout=300)
    return "".join(seen)


def test_a_pause_during_the_restart_is_waited_out(comfy_container: Container) -> None:
    p, seen = freeze_at(["apply", comfy_container.name], "restarting ComfyUI")
    comfy_container.pause()
    p.send_signal(signal.SIGCONT)
    time.sleep(3)
    comfy_container.unpause()
    said = finish(p, seen)
    assert p.returncode == 0, said
    assert healthy(comfy_container)
    assert qpatch("verify", comfy_container.name).returncode == 0


def test_a_pause_never_undone_after_a_write_exits_4_then_the_next_command_recovers(
    comfy_container: Container,
) -> None:
    before = hashes(comfy_container)
    env = {"QPATCH_PAUSE_WAIT_S": "3"}
    p, seen = freeze_at(["apply", comfy_container.name], "wrote " + LOADER, env)
    comfy_container.pause()
    p.send_signal(signal.SIGCONT)
    said = finish(p, seen)
    comfy_container.unpause()
    assert p.returncode == 4, said  # never 2 ("nothing changed") after a write
    assert "is paused (docker pause)" in said
    assert f"docker unpause {comfy_container.name}" in said

    again = qpatch("rollback", comfy_container.name)
    assert again.returncode == 0, again.stderr
    assert hashes(comfy_container) == before
    assert healthy(comfy_container)


# -- a container that runs as another user ----------------------------------------------------


def test_a_container_running_as_a_user_is_patched_as_root_keeping_owner_and_mode(
    start_container: StartContainer,
) -> None:
    """The loader is root's (0644) and the container's user is 1000: file work runs as
    root, and the owner and mode stay exactly as they were."""
    c = start_container(user="1000:1000", command=["sleep", "infinity"])
    stat = ["stat", "-c", "%u:%g %a", LOADER, SCRIPT]
    owners = c.exec_run(stat, user="0").output
    before = hashes(c)
    r = qpatch("apply", c.name, "--no-restart")
    assert r.returncode == 0, r.stderr
    assert hashes(c) != before
    assert c.exec_run(stat, user="0").output == owners
    rolled = qpatch("rollback", c.name, "--no-restart")
    assert rolled.returncode == 0, rolled.stderr
    assert hashes(c) == before
    assert c.exec_run(stat, user="0").output == owners
