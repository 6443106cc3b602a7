"""The flag check asks the target's own ComfyUI (its `main.py --help`, run inside it), and
refuses the post's flags before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.models.containers import Container

from qpatch.comfy_flags import parse_help
from tests.integration.test_engine_docker import hashes, qpatch

pytestmark = pytest.mark.docker


def test_help_of_the_targets_own_main_py_parses(comfy_container: Container) -> None:
    r = comfy_container.exec_run(
        ["/root/venv/bin/python", "main.py", "--help"], workdir="/root/ComfyUI"
    )
    assert r.exit_code == 0
    cli = parse_help(r.output.decode())
    names = {o.name for o in cli.options}
    assert {"--lowvram", "--disable-cuda-malloc", "--bf16-unet", "--async-offload"} <= names
    assert "--cpu-offload" not in names and "--fp16" not in names
    assert any({"--cpu", "--lowvram", "--novram"} <= g for g in cli.groups)


def test_the_posts_flags_are_refused_with_suggestions_and_nothing_written(
    comfy_container: Container, tmp_path: Path
) -> None:
    patch = tmp_path / "post.yaml"
    patch.write_text(
        "name: post-literal\ndescription: the post's step 3.3 taken literally\nversion: 1\n"
        "steps:\n  - startup:\n      flags: [--fp16, --cpu-offload]\n"
    )
    before = hashes(comfy_container)
    r = qpatch("apply", comfy_container.name, "--patch", str(patch))
    assert r.returncode == 2, r.stderr
    assert "--fp16" in r.stderr and "--force-fp16" in r.stderr and "--fp16-unet" in r.stderr
    assert "--cpu-offload" in r.stderr and "--lowvram" in r.stderr
    assert "--novram" in r.stderr and "--async-offload" in r.stderr
    assert hashes(comfy_container) == before
    assert comfy_container.exec_run(["test", "-e", "/var/lib/qpatch"]).exit_code == 1
