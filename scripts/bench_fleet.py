#!/usr/bin/env python3
"""Benchmark a fleet against one container, the ratio measured in one run.

1. `qpatch apply ONE --patch tests/integration/cpu-patch.yaml` on one test-bed container
   (plan, back up, write, restart, health gate), then rolled back.
2. `qpatch apply --all --filter label=… --parallel P` on all N containers (the same
   patch), then rolled back.

3. The floor, without qpatch: the same restart (SIGTERM to ComfyUI, start) and health
   wait through the SDK, on one container and then on all N at once (threads).

Target: fleet / one <= 3 for N = 16 on a 2-core machine. The floor's ratio is what the
machine itself allows: N servers importing torch at once on 2 cores. The containers are this run's
own (a unique label), started before and removed after, also on Ctrl-C or a failure.
Needs the Docker engine and the test-bed image (scripts/ensure-docker,
scripts/build-testbed; the tag from QPATCH_TESTBED_IMAGE, else built or reused here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker.errors  # noqa: E402

from qpatch.comfy_api import ComfyAPI  # noqa: E402
from qpatch.health import wait_healthy  # noqa: E402
from qpatch.targets.docker import DockerTarget, connect  # noqa: E402

PYTHON = "/root/venv/bin/python"
PATCH = str(REPO / "tests" / "integration" / "cpu-patch.yaml")
TEST_LABEL = "org.qpatch.test"  # scripts/test removes what an interrupted run left
BENCH_LABEL = "org.qpatch.bench-fleet"
TARGET_RATIO = 3.0
T = TypeVar("T")


def qpatch(*args: str) -> dict[str, object] | None:
    """Run the CLI; exit with its stderr when it fails. Its --json object, if asked for."""
    r = subprocess.run(
        [sys.executable, "-m", "qpatch", *args], capture_output=True, text=True, cwd=REPO
    )
    if r.returncode != 0:
        raise SystemExit(f"qpatch {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return json.loads(r.stdout) if "--json" in args else None


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def summary(name: str, xs: list[float]) -> str:
    return (
        f"{name:<52} median {statistics.median(xs):6.2f} s  "
        f"(min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"
    )


def restart(name: str) -> None:
    target = DockerTarget(name)
    target.restart()
    wait_healthy(ComfyAPI(target, PYTHON), timeout=300)


def restart_all(names: list[str]) -> None:
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(restart, names))


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so the containers are removed as on Ctrl-C


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=16, help="containers in the fleet (16)")
    parser.add_argument("--parallel", type=int, default=16, help="the fleet's --parallel (16)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements of each (1)")
    args = parser.parse_args()
    if args.count < 1 or args.parallel < 1 or args.repeat < 1:
        parser.error("--count, --parallel and --repeat are at least 1")
    signal.signal(signal.SIGTERM, _terminated)

    client = connect()
    image = os.environ.get("QPATCH_TESTBED_IMAGE")
    if not image:
        from qpatch.testbed import ensure_image

        image = ensure_image(client=client)
    run = uuid.uuid4().hex[:8]
    label = f"{BENCH_LABEL}={run}"
    every = ["--all", "--filter", f"label={label}", "--parallel", str(args.parallel)]
    started = []
    try:
        t0 = time.perf_counter()
        for i in range(args.count):
            started.append(
                client.containers.run(
                    image,
                    name=f"qpatch-bench-fleet-{run}-{i:02d}",
                    detach=True,
                    labels={TEST_LABEL: "1", BENCH_LABEL: run},
                )
            )
        for c in started:
            wait_healthy(ComfyAPI(DockerTarget(c.name), PYTHON), timeout=300)
        healthy_s = time.perf_counter() - t0
        print(f"{args.count} containers healthy in {healthy_s:.1f} s", file=sys.stderr)
        one = started[0].name

        one_s, fleet_s, per_target, floor_one, floor_all = [], [], [], [], []
        load_before = os.getloadavg()[0]
        for i in range(args.repeat):
            seconds, _ = timed(lambda: qpatch("apply", one, "--patch", PATCH))
            one_s.append(seconds)
            qpatch("rollback", one)
            seconds, out = timed(lambda: qpatch("apply", *every, "--patch", PATCH, "--json"))
            fleet_s.append(seconds)
            targets = (out or {}).get("targets")
            if not isinstance(targets, list) or len(targets) != args.count:
                raise SystemExit(f"the fleet's apply reported no {args.count} targets: {out}")
            bad = [t["target"] for t in targets if t.get("status") != "applied"]
            if bad:
                raise SystemExit(f"the fleet's apply did not apply to {', '.join(bad)}")
            per_target += [float(t["elapsed_s"]) for t in targets]
            qpatch("rollback", *every)
            floor_one.append(timed(lambda: restart(one))[0])
            floor_all.append(timed(lambda: restart_all([c.name for c in started]))[0])
            print(f"run {i + 1}/{args.repeat} done", file=sys.stderr)
        load_after = os.getloadavg()[0]
    finally:  # this run's own, by its label: also one created but never started
        for c in client.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=True)

    m = statistics.median
    ratio = m(fleet_s) / m(one_s)
    cores = len(os.sched_getaffinity(0))
    at_once = min(args.parallel, args.count)
    print(summary("qpatch apply ONE (plan+backup+write+restart+healthy)", one_s))
    print(summary(f"qpatch apply --all on {args.count}, {at_once} at a time", fleet_s))
    print(summary("  each target's own time in the fleet", per_target))
    print(
        f"ratio fleet / one (medians):  {ratio:.2f}  "
        f"(min {min(f / o for f, o in zip(fleet_s, one_s, strict=True)):.2f} per run; "
        f"{args.count} targets, {cores} cores, load average {load_before:.1f} → {load_after:.1f})"
    )
    floor = m(floor_all) / m(floor_one)
    print(summary("floor: restart + health of ONE, no qpatch", floor_one))
    print(summary(f"floor: restart + health of all {args.count} at once, no qpatch", floor_all))
    print(f"floor ratio (the machine's own):  {floor:.2f}")
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"target ratio <= {TARGET_RATIO:g}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
