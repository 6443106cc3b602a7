"""The case users come with, on the test bed: a workflow that runs out of memory unpatched
(the stand-in node's autograd budget raises torch's own OutOfMemoryError, as a GPU would)
and completes patched; `qpatch measure` changing nothing; a saved baseline that verify
compares with; and what a refused or failed apply says about each file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from docker.models.containers import Container

from tests.integration.test_engine_docker import bad_tls_patch, hashes, healthy, qpatch

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
    assert m["summary"].startswith("out of memory")
    assert hashes(comfy_container) == before
    assert "ledger" not in result  # nothing of qpatch's was left either
    probe = comfy_container.exec_run(["test", "-e", "/var/lib/qpatch"])
    assert probe.exit_code != 0


def test_an_out_of_memory_baseline_is_a_result_and_the_patch_goes_on(
    comfy_container: Container,
) -> None:
    code, result, err = run_json("apply", comfy_container.name, "--measure", OOM)
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
        "verify", comfy_container.name, "--workflow", OOM, "--expect-saving", "50"
    )
    assert code == 0, err
    vram = next(c for c in verified["checks"] if c["check"] == "vram")
    assert vram["ok"] and vram["detail"].startswith("before: out of memory")


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
    assert len(measured["measurements"]["runs"]) == 2
    saved = json.loads((tmp_path / "state" / "qpatch" / "baselines" / "tiny.json").read_text())
    assert saved["measurement"]["seed"] == measured["measurement"]["seed"]

    assert qpatch("apply", comfy_container.name, env=env).returncode == 0
    code, verified, err = run_json(
        "verify", comfy_container.name, "--workflow", TINY, "--baseline", "tiny", env=env
    )
    assert code == 0, err
    assert verified["comparison"]["same_output"] is True  # same seed as the saved run

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
    r = qpatch("apply", comfy_container.name, "--dry-run", "--start-script", "../1键启动.sh")
    assert r.returncode == 0, r.stderr
    assert "--- a/root/1键启动.sh" in r.stdout
    missing = qpatch("apply", comfy_container.name, "--start-script", "run_comfyui.sh")
    assert missing.returncode == 2
    assert "--start-script run_comfyui.sh: no such file in container " in missing.stderr
    assert "(read as /root/ComfyUI/run_comfyui.sh, from the ComfyUI root)" in missing.stderr
