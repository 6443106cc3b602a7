"""The case users come with, on the test bed: a workflow that runs out of memory unpatched
(the stand-in node's autograd budget raises torch's own OutOfMemoryError, as a GPU would)
and completes patched; `qpatch measure` changing nothing; a saved baseline that verify
compares with; what a refused or failed apply says about each file. And the series every
measurement now is: a cold run apart and N warm runs with their spread, a run killed under
the measurement (the server's python killed mid-run), and the host RAM of the target's
processes, measured from this host and "not measured" from another PID namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docker.models.containers import Container

from qpatch.comfy_api import ComfyAPI
from qpatch.targets.docker import DockerTarget
from tests.conftest import CPU_PATCH, TESTBED_PYTHON
from tests.integration.test_engine_docker import (
    REPO,
    bad_tls_patch,
    hashes,
    healthy,
    qpatch,
    server_pid,
)

pytestmark = pytest.mark.docker

WORKFLOWS = Path(__file__).resolve().parents[2] / "examples" / "workflows"
OOM = str(WORKFLOWS / "qwen_image_standin_oom.json")
TINY = str(WORKFLOWS / "qwen_image_standin.json")


def run_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    r = qpatch(*args, "--json", env=env)
    return r.returncode, json.loads(r.stdout), r.stderr


def test_measure_changes_nothing_and_reports_out_of_memory_as_a_result(
    comfy_container: Container, tmp_path: Path
) -> None:
    before = hashes(comfy_container)
    code, result, err = run_json("measure", comfy_container.name, "--workflow", OOM)
    assert code == 0, err
    assert result["status"] == "out-of-memory"
    m = result["measurement"]
    assert m["outcome"] == "out-of-memory"
    assert "CUDA out of memory" in m["error"]
    assert m["summary"].startswith("out of memory (3 of 3 warm runs)")
    # the default: a cold run and three warm ones, each one's outcome reported
    assert m["series"]["outcomes"] == {"cold": "out-of-memory", "warm": ["out-of-memory"] * 3}
    assert "runs: cold out of memory; warm: out of memory ×3" in err
    assert hashes(comfy_container) == before
    assert "ledger" not in result  # nothing of qpatch's was left either
    probe = comfy_container.exec_run(["test", "-e", "/var/lib/qpatch"])
    assert probe.exit_code != 0


def test_an_out_of_memory_baseline_is_a_result_and_the_patch_goes_on(
    comfy_container: Container,
) -> None:
    code, result, err = run_json("apply", comfy_container.name, "--measure", OOM, "--runs", "1")
    assert code == 0, err
    comparison = result["comparison"]
    assert comparison["before_outcome"] == "out-of-memory"
    assert comparison["after_outcome"] == "completed"
    assert comparison["fixes_oom"] is True
    assert comparison["verdict"].startswith("before: out of memory")
    assert "after: completes" in comparison["verdict"]
    assert result["measurements"]["baseline"]["outcome"] == "out-of-memory"
    assert all(f["outcome"] == "written" for f in result["files"])

    code, verified, err = run_json(
        "verify", comfy_container.name, "--workflow", OOM, "--expect-saving", "50", "--runs", "2"
    )
    assert code == 0, err
    vram = next(c for c in verified["checks"] if c["check"] == "vram")
    assert vram["ok"] and vram["detail"].startswith("before: out of memory")
    assert verified["comparison"]["runs"] == {"before": 1, "after": 2}
    assert "spread unknown (1 run)" in verified["comparison"]["rule"]


def test_a_saved_baseline_is_what_verify_compares_with(
    comfy_container: Container, tmp_path: Path
) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    code, measured, err = run_json(
        "measure",
        comfy_container.name,
        "--workflow",
        TINY,
        "--runs",
        "2",
        "--save",
        "tiny",
        env=env,
    )
    assert code == 0, err
    assert measured["status"] == "measured"
    series = measured["measurement"]["series"]
    assert series["cold"] is not None and len(series["warm"]) == 2
    assert {m["seed"] for m in [series["cold"], *series["warm"]]} == {
        measured["measurement"]["seed"]
    }, "every run of a series uses one seed"
    saved = json.loads((tmp_path / "state" / "qpatch" / "baselines" / "tiny.json").read_text())
    assert saved["measurement"]["seed"] == measured["measurement"]["seed"]
    assert saved["measurement"]["series"] == series  # --save keeps the series

    assert qpatch("apply", comfy_container.name, env=env).returncode == 0
    code, verified, err = run_json(
        "verify", comfy_container.name, "--workflow", TINY, "--baseline", "tiny", env=env
    )
    assert code == 0, err
    assert verified["comparison"]["same_output"] is True  # same seed as the saved run
    assert verified["comparison"]["runs"] == {"before": 2, "after": 3}

    code, missing, _ = run_json(
        "verify", comfy_container.name, "--workflow", TINY, "--baseline", "nope", env=env
    )
    assert code == 2
    assert "no saved baseline 'nope' (saved: tiny)" in missing["error"]


def test_a_bad_baseline_name_is_refused_before_any_work(comfy_container: Container) -> None:
    code, result, _ = run_json(
        "measure", comfy_container.name, "--workflow", TINY, "--save", "../x"
    )
    assert code == 2
    assert "baseline name '../x'" in result["error"]


def test_another_baseline_failure_still_refuses_and_says_each_file_is_unchanged(
    comfy_container: Container, tmp_path: Path
) -> None:
    broken = json.loads(Path(TINY).read_text())
    broken["1"]["inputs"].update(width=60, heads=7)  # 60 is not divisible by 7: the node fails
    workflow = tmp_path / "broken.json"
    workflow.write_text(json.dumps(broken))
    before = hashes(comfy_container)
    code, result, err = run_json("apply", comfy_container.name, "--measure", str(workflow))
    assert code == 3, err
    assert "the workflow failed while being measured" in result["error"]
    assert [f["outcome"] for f in result["files"]] == ["unchanged", "unchanged"]
    assert all("sha256_after" not in f for f in result["files"])
    assert hashes(comfy_container) == before


def test_a_failed_apply_says_each_file_was_restored(
    comfy_container: Container, tmp_path: Path
) -> None:
    patch = bad_tls_patch(tmp_path)
    before = hashes(comfy_container)
    code, result, err = run_json(
        "apply", comfy_container.name, "--patch", str(patch), "--timeout", "60"
    )
    assert code == 1, err
    assert [f["outcome"] for f in result["files"]] == ["restored"]
    assert all("sha256_after" not in f for f in result["files"])
    assert hashes(comfy_container) == before
    assert healthy(comfy_container)


def test_the_interpreter_named_is_the_one_the_server_runs(comfy_container: Container) -> None:
    """The one-click script activates the venv and runs a bare `python`: /proc's exe is
    the venv's base interpreter, the server runs the venv's bin/python."""
    r = qpatch("apply", comfy_container.name, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "python /root/venv/bin/python" in r.stdout + r.stderr


def test_a_relative_start_script_is_read_from_the_comfyui_root(
    comfy_container: Container,
) -> None:
    r = qpatch(
        "apply",
        comfy_container.name,
        "--dry-run",
        "--start-script",
        "../1键启动.sh",
        "--patch",
        CPU_PATCH,
    )
    assert r.returncode == 0, r.stderr
    assert "--- a/root/1键启动.sh" in r.stdout
    missing = qpatch("apply", comfy_container.name, "--start-script", "run_comfyui.sh")
    assert missing.returncode == 2
    assert "--start-script run_comfyui.sh: no such file in container " in missing.stderr
    assert "(read as /root/ComfyUI/run_comfyui.sh, from the ComfyUI root)" in missing.stderr


# -- series, killed runs, host RAM ------------------------------------------------------------


def test_verify_compares_two_series_row_by_row_against_their_spread(
    comfy_container: Container, tmp_path: Path
) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    code, applied, err = run_json("apply", comfy_container.name, "--measure", TINY, env=env)
    assert code == 0, err
    baseline = applied["measurements"]["baseline"]["series"]
    assert baseline["warm_runs"] == 3 and baseline["spread_known"] is True

    code, verified, human = run_json(
        "verify", comfy_container.name, "--workflow", TINY, "--runs", "3", env=env
    )
    assert code == 0, human
    print(human)  # the tables, for whoever reads the test's output (pytest -s)
    header = next(line for line in human.splitlines() if "before min" in line)
    assert header.split() == [
        *("before", "min", "median", "max", "after", "min", "median", "max"),
        *("ratio", "verdict", "source"),
    ]
    assert "saving / cost: the medians differ by more than the noise" in human
    assert "runs after: cold completed; warm: completed ×3" in human
    c = verified["comparison"]
    assert c["runs"] == {"before": 3, "after": 3} and c["spread_known"] is True
    rows = {row["key"]: row for row in c["rows"]}
    wall = rows["wall_s"]
    assert wall["before_runs"]["n"] == wall["after_runs"]["n"] == 3
    assert wall["spread"] == max(wall["before_runs"]["spread"], wall["after_runs"]["spread"])
    assert wall["threshold"] >= wall["spread"]
    assert wall["verdict"] in ("saving", "cost", "within noise")
    # the host RAM of the container's processes, read from this host's /proc
    host = rows["host_ram_peak"]
    assert host["before"]["source"] == host["after"]["source"] == "proc"
    assert host["after_runs"]["min"] > 0 and host["verdict"] != "n/a"
    series = verified["measurement"]["series"]
    assert len(series["warm"]) == 3 and series["cold"]["host_ram_peak"]["source"] == "proc"


def long_workflow(folder: Path) -> Path:
    """The stand-in, made to run for many seconds on a CPU: time to kill it mid-run."""
    workflow = json.loads(Path(TINY).read_text())
    workflow["1"]["inputs"].update(steps=1000, tokens=512, width=128, blocks=4)
    path = folder / "long.json"
    path.write_text(json.dumps(workflow))
    return path


def wait_until_running(container: Container, timeout: float = 60) -> None:
    api = ComfyAPI(DockerTarget(container.name), TESTBED_PYTHON)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.get("/queue")
        if r.ok and r.json().get("queue_running"):
            return
        time.sleep(0.2)
    raise AssertionError("the workflow never started running")


def test_a_server_killed_mid_run_is_a_killed_run_said_at_once(
    comfy_container: Container, tmp_path: Path
) -> None:
    """The OOM killer's way: SIGKILL to ComfyUI's python while it runs the prompt. The
    one-click script, PID 1, ends with it, so the container stops: the measurement says
    so within seconds (not at the 600 s limit), reports the run as killed, exits 3."""
    p = subprocess.Popen(
        [sys.executable, "-m", "qpatch", "measure", comfy_container.name]
        + ["--workflow", str(long_workflow(tmp_path)), "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_running(comfy_container)
        killed_at = time.monotonic()
        comfy_container.exec_run(["kill", "-9", str(server_pid(comfy_container))])
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert time.monotonic() - killed_at < 60, err
    assert p.returncode == 3, err
    result = json.loads(out)
    assert result["status"] == "killed"
    assert result["error"].startswith("the cold run (as it is) was killed: the server stopped")
    m = result["measurement"]
    assert m["outcome"] == "killed"
    assert m["series"]["outcomes"] == {"cold": "killed", "warm": []}
    assert m["series"]["cold"]["error"].startswith("the server stopped during the run (exited")
    assert "runs: cold killed; warm: none" in err


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_host_ram_from_another_pid_namespace_is_not_measured_with_the_reason(
    comfy_container: Container,
) -> None:
    """qpatch in a PID namespace of its own sees none of the container's host PIDs, as a
    remote engine's PIDs name nothing here: the figure is "not measured", with why."""
    r = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "qpatch"]
        + ["measure", comfy_container.name, "--workflow", TINY, "--runs", "1", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0 and "unshare" in r.stderr and "Operation not permitted" in r.stderr:
        pytest.skip("no permission for a PID namespace here")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["measurement"]
    assert m["host_ram_peak"]["value"] is None
    assert m["host_ram_not_measured"].startswith("the target's processes (PIDs ")
    assert m["host_ram_not_measured"].endswith(
        "are not visible from this host: a remote engine or another PID namespace"
    )
    assert "host RAM: not measured (the target's processes (PIDs " in r.stderr
