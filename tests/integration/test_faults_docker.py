"""Faults the world throws at a run, from outside qpatch, on real test-bed containers: each
ends with every file byte-exact as the last completed command left it, ComfyUI healthy,
and the next command completing.

Killed during the restart: qpatch's own restart stops ComfyUI's python (the one-click
script, PID 1, then ends and the container exits), so a kill right then leaves the
container down. A restart qpatch began is qpatch's to finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from docker.models.containers import Container

from tests.integration.test_engine_docker import hashes, healthy, qpatch

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]


def kill_mid_restart(c: Container, args: list[str]) -> str:
    """Run `qpatch ARGS` and kill it in the middle of its restart, with ComfyUI stopped and
    not yet started again: frozen (SIGSTOP) the moment it says "restarting ComfyUI" (its
    ledger already says so), ComfyUI's python stopped as qpatch's own restart stops it,
    then SIGKILL. Deterministic, where a timed kill races the restart's start."""
    p = subprocess.Popen(
        [sys.executable, "-u", "-m", "qpatch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert p.stdout is not None
    seen: list[str] = []
    for out in p.stdout:
        seen.append(out)
        if "restarting ComfyUI" in out:
            p.send_signal(signal.SIGSTOP)
            break
    else:
        raise AssertionError(f"never reached the restart:\n{''.join(seen)}")
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
