#!/usr/bin/env python3
"""Benchmark the engine on a real test-bed container, ratios measured in one run.

1. `qpatch apply` (plan, back up, write, restart, health gate) against the naive way:
   `docker restart` + the same health wait. Target: ratio <= 1.0 (our restart, SIGTERM to
   ComfyUI's python, beats Docker's 10 s stop timeout).
2. The restart alone: qpatch's against `docker restart`, each + the same health wait.
3. `qpatch apply --dry-run`, a whole CLI process. Target: <= 1 s.

`--only dry-run` measures the third alone (no apply, restart or rollback in between).
Needs the Docker engine and the test-bed image (scripts/ensure-docker, scripts/build-testbed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qpatch.comfy_api import ComfyAPI  # noqa: E402
from qpatch.health import wait_healthy  # noqa: E402
from qpatch.targets.docker import DockerTarget, connect  # noqa: E402
from qpatch.testbed import ensure_image  # noqa: E402

PYTHON = "/root/venv/bin/python"


def qpatch(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "qpatch", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"qpatch {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(name: str, xs: list[float]) -> str:
    return (
        f"{name:<44} median {statistics.median(xs):6.2f} s  "
        f"(min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--only",
        choices=["dry-run"],
        help="measure only this part (dry-run: `qpatch apply --dry-run`, nothing written)",
    )
    args = parser.parse_args()
    dry_only = args.only == "dry-run"
    client = connect()
    image = ensure_image(client=client)
    name = f"qpatch-bench-{uuid.uuid4().hex[:8]}"
    container = client.containers.run(
        image, name=name, detach=True, labels={"org.qpatch.test": "1"}
    )
    try:
        target = DockerTarget(name)
        api = ComfyAPI(target, PYTHON)
        wait_healthy(api, timeout=180)

        def naive() -> None:
            container.restart()
            wait_healthy(ComfyAPI(DockerTarget(name), PYTHON), timeout=180)

        def ours_restart() -> None:
            target.restart()
            wait_healthy(api, timeout=180)

        apply_s, naive_s, restart_s, dry_s = [], [], [], []
        for i in range(args.runs):
            if not dry_only:
                apply_s.append(timed(lambda: qpatch("apply", name)))
                # files back; the next apply restarts again
                qpatch("rollback", name, "--no-restart")
                naive_s.append(timed(naive))
                restart_s.append(timed(ours_restart))
            dry_s.append(timed(lambda: qpatch("apply", name, "--dry-run")))
            print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
        if not dry_only:
            qpatch("rollback", name)
    finally:
        container.remove(force=True)

    m = statistics.median
    if dry_only:
        print(summary("qpatch apply --dry-run (whole process)", dry_s))
        print(f"dry run median:                     {m(dry_s):.2f} s  (target <= 1 s)")
        return 0
    print(summary("qpatch apply (plan+backup+write+restart+healthy)", apply_s))
    print(summary("docker restart + health wait", naive_s))
    print(summary("qpatch's restart + health wait", restart_s))
    print(summary("qpatch apply --dry-run (whole process)", dry_s))
    print(f"ratio apply / naive restart:        {m(apply_s) / m(naive_s):.2f}  (target <= 1.0)")
    print(f"ratio our restart / docker restart: {m(restart_s) / m(naive_s):.2f}")
    print(f"dry run median:                     {m(dry_s):.2f} s  (target <= 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
