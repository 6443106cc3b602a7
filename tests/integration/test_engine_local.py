"""The same round trip on a ComfyUI folder of this host (`local:PATH`), without a restart:
our ComfyUI stand-in answering its own --help, real files, real ledger."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CPU_PATCH

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "testbed" / "comfyui"
NODE = "custom_nodes/comfyui_qwen_image/qwen_image_loader.py"
START = "start.sh"


@pytest.fixture
def comfy_root(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    shutil.copytree(STANDIN, root, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        REPO / "testbed" / "custom_nodes" / "comfyui_qwen_image",
        root / "custom_nodes" / "comfyui_qwen_image",
    )
    (root / START).write_text(
        '#!/bin/bash\ncd "$(dirname "$0")"\npython3 main.py --listen 127.0.0.1 --port 8188 --cpu\n'
    )
    return root


def qpatch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    return subprocess.run(
        [sys.executable, "-m", "qpatch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def hashes(root: Path) -> dict[str, str]:
    return {p: hashlib.sha256((root / p).read_bytes()).hexdigest() for p in (NODE, START)}


def test_local_round_trip_without_restart(comfy_root: Path, tmp_path: Path) -> None:
    target = f"local:{comfy_root}"
    before = hashes(comfy_root)
    mode = (comfy_root / START).stat().st_mode
    try:
        applied = qpatch(tmp_path, "apply", target, "--no-restart", "--json", "--patch", CPU_PATCH)
        assert applied.returncode == 0, applied.stderr
        result = json.loads(applied.stdout)
        assert result["status"] == "applied"
        after = hashes(comfy_root)
        assert after != before
        assert after == {
            str(Path(f["path"]).relative_to(comfy_root)): f["sha256_after"] for f in result["files"]
        }
        assert "(checkpoint)(self.model" in (comfy_root / NODE).read_text()
        assert "--disable-smart-memory" in (comfy_root / START).read_text()
        assert (comfy_root / START).stat().st_mode == mode

        # No server runs here: verify says the files are as written, and that nothing answers.
        verified = qpatch(tmp_path, "verify", "--json")
        assert verified.returncode == 3
        checks = {c["check"]: c["ok"] for c in json.loads(verified.stdout)["checks"]}
        assert checks["healthy"] is False
        assert all(ok for name, ok in checks.items() if name != "healthy")

        rolled = qpatch(tmp_path, "rollback", target, "--no-restart")
        assert rolled.returncode == 0, rolled.stderr
        assert hashes(comfy_root) == before
        assert (comfy_root / START).stat().st_mode == mode
    finally:
        status = qpatch(tmp_path, "status", target, "--json")
        ledger = json.loads(status.stdout).get("ledger")
        if ledger:
            shutil.rmtree(ledger, ignore_errors=True)


def test_a_relative_start_script_is_read_from_the_root(comfy_root: Path, tmp_path: Path) -> None:
    target = f"local:{comfy_root}"
    r = qpatch(
        tmp_path, "apply", target, "--dry-run", "--start-script", START, "--patch", CPU_PATCH
    )
    assert r.returncode == 0, r.stderr
    assert f"--- a{comfy_root / START}" in r.stdout
    missing = qpatch(tmp_path, "apply", target, "--dry-run", "--start-script", "run_comfyui.sh")
    assert missing.returncode == 2
    assert f"start script {comfy_root / 'run_comfyui.sh'}: no such file" in missing.stderr
