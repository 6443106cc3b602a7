"""The Docker engine restarted under a running apply (named to run last: it restarts the
engine every other test uses). Only where the engine is ours to restart: started by
scripts/ensure-docker, which leaves /run/qpatch-dockerd-ours; a system's own dockerd is
never touched.

qpatch must wait for the engine (bounded), then finish or undo: the container the engine
stopped comes back with every file byte-exact as one completed command left it, never a
requests traceback and never "bad input"."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from docker.models.containers import Container

from tests.integration.test_engine_docker import hashes, healthy, qpatch
from tests.integration.test_faults_docker import finish, freeze_at

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
OURS = Path(os.environ.get("QPATCH_DOCKERD_MARK", "/run/qpatch-dockerd-ours"))


def dockerd_alive() -> bool:
    return subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0


@pytest.mark.skipif(not OURS.exists(), reason="the engine is not ours to restart")
def test_the_engine_restarting_mid_apply_ends_restored_or_applied(
    comfy_container: Container,
) -> None:
    before = hashes(comfy_container)
    p, seen = freeze_at(["apply", comfy_container.name], "restarting ComfyUI")
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=True)
    p.send_signal(signal.SIGCONT)  # it meets an engine that is going, then gone
    deadline = time.monotonic() + 90  # the engine stops its containers first (10 s each)
    while dockerd_alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not dockerd_alive(), "dockerd did not stop"
    subprocess.run([str(REPO / "scripts" / "ensure-docker")], check=True)
    said = finish(p, seen)
    assert p.returncode in (0, 1), said
    assert "Traceback" not in said
    assert healthy(comfy_container, timeout=120)
    after = hashes(comfy_container)
    if p.returncode == 1:
        assert after == before, said
        assert "every file is back as it was" in said
    else:
        assert after != before
        assert qpatch("rollback", comfy_container.name).returncode == 0
        assert hashes(comfy_container) == before
