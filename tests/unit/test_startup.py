"""Start-script editing: each script before and after, run twice, and checked by bash -n."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qpatch.errors import BadInput
from qpatch.startup import FlagEdit, Launch, edit_start_script, find_launches

ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
FLAGS = [FlagEdit("--bf16-unet")]
BLOCK = (
    "# >>> qpatch qwen-image-2512 >>>\n"
    "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n"
    "# <<< qpatch <<<\n"
)


def edit(data: bytes, env: dict[str, str] = ENV, flags: list[FlagEdit] = FLAGS):
    return edit_start_script(data, patch_name="qwen-image-2512", env=env, flags=flags)


def bash_n(tmp_path: Path, data: bytes) -> None:
    script = tmp_path / "start.sh"
    script.write_bytes(data)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Each: (before, after) with ENV and FLAGS.
GOLDEN = {
    "one-click": (
        "#!/bin/bash\n"
        "# 一键启动 ComfyUI（Qwen-Image-2512）\n"
        "source /root/venv/bin/activate\n"
        "cd /root/ComfyUI\n"
        "# 启动服务\n"
        "python main.py --listen 0.0.0.0 --port 8188\n",
        "#!/bin/bash\n"
        "# 一键启动 ComfyUI（Qwen-Image-2512）\n"
        "source /root/venv/bin/activate\n"
        "cd /root/ComfyUI\n"
        "# 启动服务\n"
        f"{BLOCK}"
        "python main.py --listen 0.0.0.0 --port 8188 --bf16-unet\n",
    ),
    "nohup-log-background-tail": (
        "cd /root/ComfyUI\n"
        "nohup python3 main.py --listen > /root/comfyui.log 2>&1 &\n"
        "tail -f /root/comfyui.log\n",
        "cd /root/ComfyUI\n"
        f"{BLOCK}"
        "nohup python3 main.py --listen --bf16-unet > /root/comfyui.log 2>&1 &\n"
        "tail -f /root/comfyui.log\n",
    ),
    "exec-continuations": (
        "#!/bin/sh\n"
        "cd /opt/ComfyUI || exit 1\n"
        "exec /opt/venv/bin/python -u main.py \\\n"
        "    --listen 0.0.0.0 \\\n"
        "    --port 8188\n",
        "#!/bin/sh\n"
        "cd /opt/ComfyUI || exit 1\n"
        f"{BLOCK}"
        "exec /opt/venv/bin/python -u main.py \\\n"
        "    --listen 0.0.0.0 \\\n"
        "    --port 8188 --bf16-unet\n",
    ),
    "venv-dot-source": (
        ". /root/ComfyUI/venv/bin/activate\npython /root/ComfyUI/main.py\n",
        f". /root/ComfyUI/venv/bin/activate\n{BLOCK}python /root/ComfyUI/main.py --bf16-unet\n",
    ),
    "conda-run": (
        "conda run -n comfy --no-capture-output python main.py --port 8188\n",
        f"{BLOCK}conda run -n comfy --no-capture-output python main.py --port 8188 --bf16-unet\n",
    ),
    "env-prefix": (
        "env CUDA_VISIBLE_DEVICES=0 python3.11 main.py\n",
        f"{BLOCK}env CUDA_VISIBLE_DEVICES=0 python3.11 main.py --bf16-unet\n",
    ),
    "env-prefix-sets-the-variable": (
        "env PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128 python main.py\n",
        "env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python main.py --bf16-unet\n",
    ),
    "sudo-u-preserving-env": (
        "sudo -u comfy -E /home/comfy/venv/bin/python -s /home/comfy/ComfyUI/main.py\n",
        f"{BLOCK}sudo -u comfy -E /home/comfy/venv/bin/python -s /home/comfy/ComfyUI/main.py"
        " --bf16-unet\n",
    ),
    "post-exports-updated-in-place": (
        "#!/bin/bash\n"
        'export TORCH_CUDA_ARCH_LIST="8.6"  # 适配 4090D\n'
        'export PYTORCH_CUDA_ALLOC_CONF="max_split_size_mb:128"\n'
        "cd /root/ComfyUI\n"
        "python main.py --listen 0.0.0.0\n",
        "#!/bin/bash\n"
        'export TORCH_CUDA_ARCH_LIST="8.6"  # 适配 4090D\n'
        "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n"
        "cd /root/ComfyUI\n"
        "python main.py --listen 0.0.0.0 --bf16-unet\n",
    ),
    "bare-assignment-updated-and-exported": (
        "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128\npython main.py\n",
        f"PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n{BLOCK}python main.py --bf16-unet\n",
    ),
    "two-launch-lines": (
        "python main.py --port 8188 --cuda-device 0 > gpu0.log 2>&1 &\n"
        "python main.py --port 8189 --cuda-device 1 > gpu1.log 2>&1 &\n"
        "wait\n",
        f"{BLOCK}"
        "python main.py --port 8188 --cuda-device 0 --bf16-unet > gpu0.log 2>&1 &\n"
        "python main.py --port 8189 --cuda-device 1 --bf16-unet > gpu1.log 2>&1 &\n"
        "wait\n",
    ),
    "launches-in-if-else": (
        'if [ "$1" = cpu ]; then\n    python main.py --cpu\nelse\n    python main.py\nfi\n',
        f"{BLOCK}"
        'if [ "$1" = cpu ]; then\n'
        "    python main.py --cpu --bf16-unet\n"
        "else\n"
        "    python main.py --bf16-unet\n"
        "fi\n",
    ),
    "restart-loop-in-function": (
        "start() {\n  while true; do\n    python main.py\n    sleep 5\n  done\n}\nstart\n",
        f"{BLOCK}start() {{\n  while true; do\n    python main.py --bf16-unet\n    sleep 5\n"
        "  done\n}\nstart\n",
    ),
    "indented-launch": (
        "cd /root/ComfyUI\n  python main.py\n",
        "cd /root/ComfyUI\n"
        "  # >>> qpatch qwen-image-2512 >>>\n"
        "  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n"
        "  # <<< qpatch <<<\n"
        "  python main.py --bf16-unet\n",
    ),
    "cd-and-launch-chained-over-lines": (
        "cd /root/ComfyUI && \\\n  python main.py | tee -a comfy.log\n",
        f"{BLOCK}cd /root/ComfyUI && \\\n  python main.py --bf16-unet | tee -a comfy.log\n",
    ),
    "tee-pipe-and-inline-comment": (
        "python -s main.py --port 8188 2>&1 | tee -a comfy.log  # 日志\n",
        f"{BLOCK}python -s main.py --port 8188 --bf16-unet 2>&1 | tee -a comfy.log  # 日志\n",
    ),
    "passes-its-arguments-on": (
        'exec python main.py "$@"\n',
        f'{BLOCK}exec python main.py "$@" --bf16-unet\n',
    ),
    "main-py-in-comment-echo-and-heredoc-too": (
        "# python main.py --old\n"
        'echo "starting python main.py"\n'
        "cat <<'EOF'\npython main.py --in-heredoc\nEOF\n"
        "python main.py\n",
        "# python main.py --old\n"
        'echo "starting python main.py"\n'
        "cat <<'EOF'\npython main.py --in-heredoc\nEOF\n"
        f"{BLOCK}python main.py --bf16-unet\n",
    ),
    "chinese-comments-everywhere": (
        "#!/bin/bash\n# 作者：某人\n# 显存优化\ncd /root/ComfyUI  # 进入目录\n"
        "python main.py --listen 0.0.0.0  # 启动\n# 结束\n",
        "#!/bin/bash\n# 作者：某人\n# 显存优化\ncd /root/ComfyUI  # 进入目录\n"
        f"{BLOCK}python main.py --listen 0.0.0.0 --bf16-unet  # 启动\n# 结束\n",
    ),
}

BYTES_GOLDEN = {
    "crlf": (
        b"#!/bin/bash\r\ncd /root/ComfyUI\r\npython main.py --port 8188\r\n",
        b"#!/bin/bash\r\ncd /root/ComfyUI\r\n"
        + BLOCK.replace("\n", "\r\n").encode()
        # the flag goes before the \r, on a line that keeps its CRLF
        + b"python main.py --port 8188 --bf16-unet\r\n",
    ),
    "utf8-bom": (
        "\ufeff# 启动脚本\ncd /root/ComfyUI\npython main.py\n".encode(),
        f"\ufeff# 启动脚本\ncd /root/ComfyUI\n{BLOCK}python main.py --bf16-unet\n".encode(),
    ),
    "no-final-newline": (
        b"cd /root/ComfyUI\npython main.py --port 8188",
        b"cd /root/ComfyUI\n" + BLOCK.encode() + b"python main.py --port 8188 --bf16-unet",
    ),
    "gbk-comment-kept-byte-exact": (
        "# 启动\n".encode("gbk") + b"python main.py\n",
        "# 启动\n".encode("gbk") + BLOCK.encode() + b"python main.py --bf16-unet\n",
    ),
}

CASES = {k: (a.encode(), b.encode()) for k, (a, b) in GOLDEN.items()} | BYTES_GOLDEN


@pytest.mark.parametrize("before, after", CASES.values(), ids=CASES.keys())
def test_golden(before: bytes, after: bytes, tmp_path: Path) -> None:
    out, report = edit(before)
    assert out == after
    assert not report.already_applied and report.changes
    bash_n(tmp_path, out)


@pytest.mark.parametrize("after", [a for _, a in CASES.values()], ids=CASES.keys())
def test_second_run_changes_nothing(after: bytes) -> None:
    out, report = edit(after)
    assert out == after
    assert report.already_applied and not report.changes


@pytest.mark.parametrize(
    "script",
    [
        "#!/bin/bash\ncd /root/ComfyUI\necho done\n",
        "# python main.py --listen\n",
        'echo "run: python main.py"\necho python main.py\n',
        "python -m comfy.main\n",
        "cat <<EOF\npython main.py\nEOF\n",
    ],
    ids=["none", "only-in-comment", "only-in-echo", "python-m", "only-in-heredoc"],
)
def test_no_launch_is_bad_input(script: str) -> None:
    assert find_launches(script.encode()) == []
    with pytest.raises(BadInput, match="no ComfyUI launch command"):
        edit(script.encode())


def test_flag_value_replaced_in_both_spellings(tmp_path: Path) -> None:
    before = b"python main.py --port 8188 --preview-method=none --cpu\n"
    flags = [FlagEdit("--port", "9000"), FlagEdit("--preview-method", "auto")]
    out, report = edit(before, env={}, flags=flags)
    assert out == b"python main.py --port 9000 --preview-method=auto --cpu\n"
    assert [c.detail for c in report.changes] == [
        "--port 8188 → --port 9000",
        "--preview-method=none → --preview-method=auto",
    ]
    bash_n(tmp_path, out)


def test_flag_present_is_not_duplicated() -> None:
    before = b"python main.py --bf16-unet --listen\n"
    out, report = edit(before, env={}, flags=[FlagEdit("--bf16-unet"), FlagEdit("--listen")])
    assert out == before and report.already_applied


def test_replace_swaps_the_group_member_in_place(tmp_path: Path) -> None:
    before = b"exec python main.py --listen 0.0.0.0 --cpu --port 8188\n"
    out, report = edit(before, env={}, flags=[FlagEdit("--lowvram", replaces=("--cpu",))])
    assert out == b"exec python main.py --listen 0.0.0.0 --lowvram --port 8188\n"
    assert [c.detail for c in report.changes] == ["--cpu → --lowvram"]
    bash_n(tmp_path, out)


def test_replace_drops_a_member_with_its_value() -> None:
    before = b"python main.py --cache-lru 10 --port 8188\n"
    out, _ = edit(before, env={}, flags=[FlagEdit("--cache-none", replaces=("--cache-lru",))])
    assert out == b"python main.py --cache-none --port 8188\n"


def test_value_needing_quotes_is_quoted(tmp_path: Path) -> None:
    out, _ = edit(b"python main.py\n", env={"X": "a b;c"}, flags=[FlagEdit("--user", "/a b")])
    assert b"export X='a b;c'\n" in out
    assert out.endswith(b"python main.py --user '/a b'\n")
    bash_n(tmp_path, out)


def test_block_of_an_earlier_run_is_updated_where_it_is() -> None:
    first, _ = edit(b"python main.py\n")
    out, report = edit(first, env={"PYTORCH_CUDA_ALLOC_CONF": "backend:native"})
    assert out == first.replace(b"expandable_segments:True", b"backend:native")
    assert [c.detail for c in report.changes] == [
        "PYTORCH_CUDA_ALLOC_CONF: expandable_segments:True → backend:native"
    ]


def test_sudo_without_preserve_env_is_a_finding() -> None:
    _, report = edit(b"sudo -u comfy python main.py\n")
    assert "sudo resets the environment" in report.findings[0].message


def test_report_names_old_and_new_for_in_place_update() -> None:
    _, report = edit(b'export PYTORCH_CUDA_ALLOC_CONF="max_split_size_mb:128"\npython main.py\n')
    assert report.changes[0].line == 1
    assert report.changes[0].detail == (
        "PYTORCH_CUDA_ALLOC_CONF: max_split_size_mb:128 → expandable_segments:True"
    )


def test_find_launches_gives_what_the_engine_runs() -> None:
    script = (
        b"#!/bin/bash\n"
        b"cd /root/ComfyUI\n"
        b"nohup conda run -n comfy python -s -u main.py --listen 0.0.0.0 --cpu > log 2>&1 &\n"
        b"exec /root/venv/bin/python3 /root/ComfyUI/main.py --port 8189\n"
    )
    assert find_launches(script) == [
        Launch(
            line=3,
            interpreter="python",
            script="main.py",
            flags=("--listen", "0.0.0.0", "--cpu"),
            python_options=("-s", "-u"),
            runner=("conda", "run", "-n", "comfy"),
        ),
        Launch(4, "/root/venv/bin/python3", "/root/ComfyUI/main.py", ("--port", "8189")),
    ]
    assert find_launches(script)[0].help_argv() == [
        *("conda", "run", "-n", "comfy", "python", "-s", "-u", "main.py", "--help")
    ]
