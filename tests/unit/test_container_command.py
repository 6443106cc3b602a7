"""The new Env and command of a container that starts main.py itself (apply --recreate)."""

from __future__ import annotations

import pytest

from qpatch.container_command import find_launch, merge_env, plan_change
from qpatch.errors import BadInput
from qpatch.startup import FlagEdit

FLAGS = [FlagEdit("--disable-cuda-malloc"), FlagEdit("--bf16-unet")]
ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
PATH = "PATH=/usr/bin:/bin"


def change(entrypoint, cmd, env_list=(PATH,), env=ENV, flags=FLAGS):
    return plan_change(
        entrypoint=entrypoint,
        cmd=cmd,
        env_list=list(env_list),
        env=env,
        flags=flags,
        patch_name="qwen-image-2512",
    )


def test_sh_c_string_gets_the_flags_like_a_start_script() -> None:
    cmd = ["sh", "-c", "cd /root/ComfyUI && python main.py --listen $HOST --port $PORT"]
    c = change(None, cmd)
    assert c.entrypoint is None
    assert c.cmd == [
        "sh",
        "-c",
        "cd /root/ComfyUI && python main.py --listen $HOST --port $PORT "
        "--disable-cuda-malloc --bf16-unet",
    ]
    assert c.env == [PATH, "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"]


def test_exec_form_argv_gets_the_flags_as_words() -> None:
    c = change(None, ["/root/venv/bin/python", "main.py", "--listen", "0.0.0.0", "--cpu"])
    assert c.cmd == [
        "/root/venv/bin/python",
        "main.py",
        "--listen",
        "0.0.0.0",
        "--cpu",
        "--disable-cuda-malloc",
        "--bf16-unet",
    ]


def test_a_value_with_spaces_survives_the_round_trip() -> None:
    c = change(None, ["python", "main.py"], flags=[FlagEdit("--output-directory", "/my out")])
    assert c.cmd == ["python", "main.py", "--output-directory", "/my out"]


def test_a_rival_flag_is_replaced_in_the_argv() -> None:
    c = change(
        None, ["python", "main.py", "--cpu"], flags=[FlagEdit("--lowvram", None, ("--cpu",))]
    )
    assert c.cmd == ["python", "main.py", "--lowvram"]


def test_entrypoint_is_kept_when_the_flags_go_into_the_cmd() -> None:
    c = change(["tini", "--", "python", "main.py"], ["--listen"])
    assert c.entrypoint == ["tini", "--", "python", "main.py"]
    assert c.cmd == ["--listen", "--disable-cuda-malloc", "--bf16-unet"]


def test_entrypoint_with_every_flag_gets_a_cmd_appended() -> None:
    c = change(["python", "main.py", "--cpu"], None)
    assert c.entrypoint == ["python", "main.py", "--cpu"]
    assert c.cmd == ["--disable-cuda-malloc", "--bf16-unet"]


def test_a_second_plan_over_the_result_changes_nothing() -> None:
    first = change(None, ["sh", "-c", "python main.py --cpu"])
    second = change(first.entrypoint, first.cmd, first.env)
    assert first.changed and not second.changed


def test_env_is_updated_where_it_stands_not_duplicated() -> None:
    merged, report = merge_env(["A=1", "PYTORCH_CUDA_ALLOC_CONF=x", "B=2"], ENV)
    assert merged == ["A=1", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", "B=2"]
    assert "x → expandable_segments:True" in str(report.changes[0])


def test_an_assignment_in_the_shell_string_is_reported() -> None:
    c = change(None, ["sh", "-c", "PYTORCH_CUDA_ALLOC_CONF=x python main.py"])
    assert any("overrides the container's Env" in f.message for f in c.report.findings)


def test_bash_lc_and_the_launch_it_runs() -> None:
    launch = find_launch(["/bin/bash", "-lc", "exec /opt/venv/bin/python -u main.py --cpu"])
    assert (launch.interpreter, launch.python_options, launch.flags) == (
        "/opt/venv/bin/python",
        ("-u",),
        ("--cpu",),
    )


@pytest.mark.parametrize(
    "argv",
    [["bash", "/root/start.sh"], ["python", "-m", "http.server"], ["sh", "-c", "sleep 1"]],
)
def test_a_command_that_does_not_start_main_py_is_refused(argv: list[str]) -> None:
    with pytest.raises(BadInput, match="does not start ComfyUI's main.py"):
        find_launch(argv)
