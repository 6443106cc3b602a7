"""Fleets against real test-bed containers, through the real CLI: `--all --filter label=…`
patches eight at once; one that refuses is the only one reported failed, and stays
byte-identical; `--max-failures` starts no other; `rollback --all` brings every file back.

The eight containers are started once for the module. The one made to refuse drops
CAP_DAC_OVERRIDE, so once its loader is `chmod 444` root inside it is refused writing it,
and qpatch's `test -w` says so before anything is written; its name sorts first."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from qpatch.targets.engines import Engine
from tests.conftest import CPU_PATCH, TEST_LABEL
from tests.integration.test_engine_docker import NODE, hashes, healthy, qpatch, server_pid

pytestmark = pytest.mark.docker

COUNT = 8
FLEET_LABEL = "org.qpatch.fleet-test"


@dataclass
class Fleet:
    label: str  # KEY=VALUE, for --filter label=…
    refuses: Container  # sorted first
    others: list[Container]

    @property
    def all(self) -> list[Container]:
        return [self.refuses, *self.others]

    def run(self, command: str, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
        """`qpatch COMMAND --all --filter label=… ARGS --json`: the process and its object."""
        t0 = time.monotonic()
        r = qpatch(command, "--all", "--filter", f"label={self.label}", *args, "--json")
        # each step's time, shown with pytest -s: the file's CI budget is tight
        print(f"{time.monotonic() - t0:6.1f} s  qpatch {command} --all {' '.join(args)}")
        try:
            return r, json.loads(r.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"qpatch {command} printed no JSON (exit {r.returncode}):\n{r.stderr}")

    def by_name(self, out: dict[str, Any]) -> dict[str, dict[str, Any]]:
        targets = out["targets"]
        assert [t["target"] for t in targets] == [c.name for c in self.all], "not in name order"
        return {t["target"]: t for t in targets}


@pytest.fixture(scope="module")
def fleet(docker_client: docker.DockerClient, testbed_image: str) -> Iterator[Fleet]:
    run = uuid.uuid4().hex[:10]
    prefix = f"qpatch-fleet-{run}"
    labels = {TEST_LABEL: "1", FLEET_LABEL: run}
    started: list[Container] = []
    try:
        for i in range(COUNT):
            refusing = i == 0
            started.append(
                docker_client.containers.run(
                    testbed_image,
                    name=f"{prefix}-{i}-refuses" if refusing else f"{prefix}-{i}",
                    detach=True,
                    labels=labels,
                    cap_drop=["DAC_OVERRIDE"] if refusing else None,
                )
            )
        for c in started:
            assert healthy(c, timeout=120)
        yield Fleet(f"{FLEET_LABEL}={run}", started[0], started[1:])
    finally:
        for c in started:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=True)


def assert_all(targets: dict[str, dict[str, Any]], status: str, code: int = 0) -> None:
    bad = {n: (t["status"], t["exit_code"]) for n, t in targets.items()}
    assert all(t["status"] == status and t["exit_code"] == code for t in targets.values()), bad


def patched(c: Container, before: dict[str, str]) -> bool:
    """Every file of the patch differs from what it was, and the server answers."""
    after = hashes(c)
    assert all(after[p] != before[p] for p in after), c.name
    return healthy(c)


def test_a_fleet_refuses_alone_stops_applies_verifies_and_rolls_back(fleet: Fleet) -> None:
    before = {c.name: hashes(c) for c in fleet.all}
    assert len(set(map(str, before.values()))) == 1  # eight of the same
    assert fleet.refuses.exec_run(["chmod", "444", NODE]).exit_code == 0

    # --max-failures 1, one at a time, the refusing one first: no other starts
    pids = {c.name: server_pid(c) for c in fleet.others}
    r, out = fleet.run("apply", "--patch", CPU_PATCH, "--parallel", "1", "--max-failures", "1")
    assert r.returncode == 2, r.stderr
    assert (out["status"], out["exit_code"]) == ("failed", 2)
    first, *rest = out["targets"]
    assert first["target"] == fleet.refuses.name
    assert (first["status"], first["exit_code"]) == ("error", 2)
    assert "is not writable" in first["error"]
    assert [(t["target"], t["status"], t["exit_code"]) for t in rest] == [
        (c.name, "not-started", None) for c in fleet.others
    ]
    assert {t["reason"] for t in rest} == {"--max-failures 1 reached"}
    assert "not started: --max-failures 1 reached" in r.stderr
    assert {c.name: hashes(c) for c in fleet.all} == before
    assert {c.name: server_pid(c) for c in fleet.others} == pids  # not even restarted

    # all eight at once: only that one fails, untouched, and the fleet exits as it did
    r, out = fleet.run("apply", "--patch", CPU_PATCH, "--parallel", "8")
    targets = fleet.by_name(out)
    refused = targets.pop(fleet.refuses.name)
    assert (refused["status"], refused["exit_code"]) == ("error", 2)
    assert_all(targets, "applied")
    assert {t["engine"] for t in targets.values()} == {Engine().label}
    assert r.returncode == out["exit_code"] == refused["exit_code"] == 2, r.stderr
    assert out["status"] == "failed"
    assert "8 at a time" in r.stderr
    assert "7 of 8 target(s) succeeded; exit status 2 (the worst)" in r.stderr
    assert f"{fleet.refuses.name} (" in r.stderr and "is not writable" in r.stderr
    assert hashes(fleet.refuses) == before[fleet.refuses.name]
    assert healthy(fleet.refuses)
    for c in fleet.others:
        assert patched(c, before[c.name])
        written = {f["path"]: f["sha256_after"] for f in targets[c.name]["files"]}
        assert written == hashes(c)

    # writable again: the fleet is all patched, and verify passes on all eight
    assert fleet.refuses.exec_run(["chmod", "644", NODE]).exit_code == 0
    r, out = fleet.run("apply", "--patch", CPU_PATCH, "--parallel", "8")
    assert r.returncode == 0, r.stderr
    assert (out["status"], out["exit_code"]) == ("done", 0)
    targets = fleet.by_name(out)
    assert targets.pop(fleet.refuses.name)["status"] == "applied"
    assert_all(targets, "already-applied")
    for c in fleet.all:
        assert patched(c, before[c.name])
    r, out = fleet.run("verify", "--parallel", "8")
    assert r.returncode == 0, r.stderr
    assert_all(fleet.by_name(out), "ok")

    # and every file back, byte-exact
    r, out = fleet.run("rollback", "--parallel", "8")
    assert r.returncode == 0, r.stderr
    assert_all(fleet.by_name(out), "rolled-back")
    assert {c.name: hashes(c) for c in fleet.all} == before
    for c in fleet.all:
        assert healthy(c)
