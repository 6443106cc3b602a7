"""Patch files: the bundled one loads and applies to the test bed; each error names file and key."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from qpatch import comfy_flags, envcheck, startup
from qpatch.codemods import Option
from qpatch.comfy_flags import FlagRequest
from qpatch.errors import BadInput
from qpatch.patchspec import (
    PATCHES_DIR as PATCHES,
)
from qpatch.patchspec import (
    CodemodStep,
    list_patches,
    load_patch,
    parse_patch,
)

DATA = Path(__file__).parent / "data"
LOADER = "custom_nodes/comfyui_qwen_image/qwen_image_loader.py"


class Wrap:
    DESCRIPTION = "Wrap a call."
    OPTIONS = {"call": str, "reentrant": False, "ratio": 0.5}


class Plain:
    DESCRIPTION = "No options."
    OPTIONS: dict[str, object] = {}


class Declared:
    DESCRIPTION = "Options declared the way qpatch.codemods declares them."
    OPTIONS = {"models": Option(list, None, str), "use_reentrant": Option(bool, False)}


REGISTRY = {"wrap": Wrap, "plain": Plain, "declared": Declared}


def parse(body: str, registry: dict[str, type] | None = None):
    head = "name: t\ndescription: test\nversion: 1\n"
    return parse_patch(head + textwrap.dedent(body), "t.yaml", codemods=registry or {})


def test_bundled_patch_loads() -> None:
    patch = load_patch("qwen-image-2512")
    assert (patch.name, patch.version, patch.allow_harmful) == ("qwen-image-2512", "2", False)
    assert patch.codemods == (
        CodemodStep("gradient-checkpointing", LOADER, {}),
        CodemodStep("is-changed", LOADER, {}),
    )
    step = patch.startup
    assert step is not None and step.when is None
    assert step.env == {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "TORCH_CUDA_ARCH_LIST": "auto",
    }
    assert step.env_request("PYTORCH_CUDA_ALLOC_CONF").when.text == "comfyui: <0.15"
    assert step.env_request("TORCH_CUDA_ARCH_LIST").when is None
    flags = {f.flag: (f.on_conflict, f.when.text if f.when else None) for f in step.flags}
    assert flags == {
        "--disable-cuda-malloc": ("error", "comfyui: <0.15"),
        "--bf16-unet": ("error", "weights_dtype: fp16 or fp32"),
        "--lowvram": ("skip", "dynamic_vram: false"),
    }


def test_when_and_allow_harmful_where_a_patch_may_write_them() -> None:
    patch = parse(
        """\
        allow_harmful: true
        steps:
          - codemod: plain
            file: a.py
            when: {comfyui: ">=0.15"}
          - startup:
              env:
                A: "1"
                B: {value: "2", when: {dynamic_vram: true}, allow_harmful: true}
              flags:
                - {flag: --x, when: {not: {device: cpu}}, allow_harmful: true}
        """,
        REGISTRY,
    )
    assert patch.allow_harmful is True
    assert patch.steps[0].when.text == "comfyui: >=0.15"
    step = patch.startup
    assert step.env == {"A": "1", "B": "2"}
    assert step.env_request("B").allow_harmful and step.env_request("B").when.text == (
        "dynamic_vram: true"
    )
    assert step.flags[0].when.text == "not (device: cpu)" and step.flags[0].allow_harmful


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "steps:\n  - startup:\n      flags: [{flag: --x, when: {comfy: 1}}]\n",
            "t.yaml: steps[0].startup.flags[0].when.comfy: unknown condition",
        ),
        (
            "steps:\n  - startup:\n      env: {A: {value: '1', when: {comfyui: 'new'}}}\n",
            "t.yaml: steps[0].startup.env.A.when.comfyui: 'new' is not like '>=0.15'",
        ),
        (
            "allow_harmful: yes please\nsteps:\n  - startup: {flags: [--x]}\n",
            "t.yaml: allow_harmful: expected true or false",
        ),
        (
            "steps:\n  - startup:\n      env: {A: {when: {dynamic_vram: true}}}\n",
            "t.yaml: steps[0].startup.env.A.value: missing",
        ),
    ],
)
def test_bad_when_and_allow_harmful(body: str, message: str) -> None:
    with pytest.raises(BadInput) as raised:
        parse(body)
    assert str(raised.value).startswith(message)


def test_list_patches() -> None:
    assert [name for name, _ in list_patches()] == ["qwen-image-2512"]
    assert "Qwen-Image-2512" in dict(list_patches())["qwen-image-2512"]


def test_load_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndescription: d\nversion: '2'\nsteps:\n- startup: {}\n")
    assert load_patch(str(path)).version == "2"


def test_unknown_bundled_name() -> None:
    with pytest.raises(BadInput, match="no bundled patch 'qwen' \\(bundled: qwen-image-2512\\)"):
        load_patch("qwen")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="cannot read patch file"):
        load_patch(str(tmp_path / "nope.yaml"))


def test_flag_items_in_both_forms() -> None:
    patch = parse(
        """
        steps:
        - startup:
            flags: ["--port=9000", "--cpu", {flag: --lowvram, value: "1", on_conflict: replace}]
        """
    )
    assert patch.startup and patch.startup.flags == (
        FlagRequest("--port", "9000"),
        FlagRequest("--cpu"),
        FlagRequest("--lowvram", "1", "replace"),
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ("steps: [{startup: {}}]\nauthor: me\n", "t.yaml: author: unknown key"),
        ("stepz: [{startup: {}}]\n", "t.yaml: stepz: unknown key \\(did you mean 'steps'\\?\\)"),
        ("", "t.yaml: steps: missing"),
        ("steps: []\n", "t.yaml: steps: expected a non-empty list"),
        ("steps: {startup: {}}\n", "t.yaml: steps: expected a non-empty list"),
        ("steps: [startup]\n", "t.yaml: steps\\[0\\]: a step is a mapping with `codemod:`"),
        (
            "steps: [{codemod: plain}]\n",
            "t.yaml: steps\\[0\\].file: missing",
        ),
        (
            "steps: [{codemod: plain, file: a.py, files: b.py}]\n",
            "t.yaml: steps\\[0\\].files: unknown key \\(did you mean 'file'\\?\\)",
        ),
        (
            "steps: [{codemod: plain, file: /root/a.py}]\n",
            "t.yaml: steps\\[0\\].file: must be relative",
        ),
        (
            "steps: [{codemod: plain, file: ../a.py}]\n",
            "t.yaml: steps\\[0\\].file: must be relative",
        ),
        (
            "steps: [{codemod: plain, file: a.py, options: [x]}]\n",
            "t.yaml: steps\\[0\\].options: expected a mapping, got a list",
        ),
        ("steps: [{startup: {flag: [--cpu]}}]\n", "t.yaml: steps\\[0\\].startup.flag: unknown"),
        (
            "steps: [{startup: {env: [X]}}]\n",
            "t.yaml: steps\\[0\\].startup.env: expected a mapping, got a list",
        ),
        (
            "steps: [{startup: {env: {X: true}}}]\n",
            "t.yaml: steps\\[0\\].startup.env.X: expected a non-empty string, got true/false",
        ),
        (
            "steps: [{startup: {env: {X: 128}}}]\n",
            "t.yaml: steps\\[0\\].startup.env.X: expected a non-empty string, got a number",
        ),
        (
            "steps: [{startup: {env: {1X: a}}}]\n",
            "t.yaml: steps\\[0\\].startup.env.1X: not a valid variable name",
        ),
        (
            "steps: [{startup: {flags: --cpu}}]\n",
            "t.yaml: steps\\[0\\].startup.flags: expected a list, got a string",
        ),
        (
            "steps: [{startup: {flags: [cpu]}}]\n",
            "t.yaml: steps\\[0\\].startup.flags\\[0\\]: 'cpu' is not a flag",
        ),
        (
            "steps: [{startup: {flags: [{value: '1'}]}}]\n",
            "t.yaml: steps\\[0\\].startup.flags\\[0\\].flag: missing",
        ),
        (
            "steps: [{startup: {flags: [{flag: --cpu, on_conflict: ignore}]}}]\n",
            "t.yaml: steps\\[0\\].startup.flags\\[0\\].on_conflict: must be one of error, skip",
        ),
        (
            "steps: [{startup: {flags: [{flag: --port, value: 8188}]}}]\n",
            "t.yaml: steps\\[0\\].startup.flags\\[0\\].value: expected a non-empty string",
        ),
        (
            "steps: [{startup: {}}, {startup: {}}]\n",
            "t.yaml: steps: only one startup step",
        ),
    ],
)
def test_schema_errors_name_file_and_key(body: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse(body)


@pytest.mark.parametrize(
    "text, message",
    [
        ("- a\n- b\n", "t.yaml: top level: expected a mapping, got a list"),
        ("name: t\nversion: 1\nsteps: [{startup: {}}]\n", "t.yaml: description: missing"),
        ("name: T!\ndescription: d\nversion: 1\nsteps: [{startup: {}}]\n", "t.yaml: name: use"),
        ("name: 7\ndescription: d\nversion: 1\nsteps: [{startup: {}}]\n", "t.yaml: name: expected"),
        ("name: t\ndescription: d\nversion: yes\nsteps: [{startup: {}}]\n", "t.yaml: version"),
        ("name: t\ndescription: [d\n", "t.yaml: not valid YAML"),
    ],
)
def test_top_level_errors(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_patch(text, "t.yaml", codemods={})


def test_codemod_options_checked_against_the_codemod() -> None:
    patch = parse(
        "steps:\n"
        "- {codemod: wrap, file: 'x/*.py', options: {call: self.model, ratio: 1}}\n"
        "- {codemod: declared, file: a.py, options: {models: [self.model]}}\n",
        REGISTRY,
    )
    assert [c.options for c in patch.codemods] == [
        {"call": "self.model", "ratio": 1},
        {"models": ["self.model"]},
    ]


def test_bundled_patch_validates_against_the_real_codemods() -> None:
    from qpatch.codemods import CODEMODS

    text = (PATCHES / "qwen-image-2512.yaml").read_text()
    assert parse_patch(text, "x.yaml", codemods=CODEMODS).name == "qwen-image-2512"


@pytest.mark.parametrize(
    "step, message",
    [
        ("{codemod: wrapp, file: a.py}", "steps\\[0\\].codemod: no codemod 'wrapp' \\(known: wrap"),
        (
            "{codemod: wrap, file: a.py, options: {call: f, depth: 2}}",
            "steps\\[0\\].options.depth: unknown option \\(known: call, reentrant, ratio\\)",
        ),
        (
            "{codemod: wrap, file: a.py, options: {call: f, reentrant: 'no'}}",
            "steps\\[0\\].options.reentrant: expected bool, got a string",
        ),
        (
            "{codemod: wrap, file: a.py, options: {call: 1}}",
            "steps\\[0\\].options.call: expected str, got a number",
        ),
        ("{codemod: wrap, file: a.py}", "t.yaml: steps\\[0\\].options.call: missing"),
        (
            "{codemod: declared, file: a.py, options: {models: self.model}}",
            "options.models: must be a list of .* or null, got a string",
        ),
        (
            "{codemod: declared, file: a.py, options: {use_reentrant: null}}",
            "options.use_reentrant: must be true or false, got nothing",
        ),
        (
            "{codemod: plain, file: a.py, options: {x: 1}}",
            "options.x: unknown option \\(known: none",
        ),
    ],
)
def test_codemod_errors(step: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse(f"steps: [{step}]\n", REGISTRY)


def test_bundled_patch_applies_cleanly_to_the_test_bed(tmp_path: Path) -> None:
    """The whole pure path the engine takes, on the real 0.14.1 help and the test-bed script."""
    script = (DATA.parents[2] / "testbed" / "1键启动.sh").read_bytes()
    cli = comfy_flags.parse_help((DATA / "comfyui-0.14.1-help.txt").read_text())
    step = load_patch("qwen-image-2512").startup
    assert step is not None
    (launch,) = startup.find_launches(script)

    edits, flag_report = comfy_flags.plan_flags(cli, step.flags, launch.flags)
    final_flags = [*launch.flags, *(e.name for e in edits)]
    env, env_report = envcheck.check_env(step.env, flags=final_flags, gpu_capability=None)
    new, report = startup.edit_start_script(
        script, patch_name="qwen-image-2512", env=env, flags=edits
    )

    assert new.endswith(
        b"# >>> qpatch qwen-image-2512 >>>\n"
        b"export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n"
        b"# <<< qpatch <<<\n"
        b"python main.py --listen 0.0.0.0 --port 8188 --cpu --disable-cuda-malloc --bf16-unet\n"
    )
    warnings = [f.message for r in (flag_report, env_report) for f in r.findings]
    assert warnings[:2] == [
        "--lowvram not added: the server runs --cpu",
        "TORCH_CUDA_ARCH_LIST=auto: no GPU visible in the target, variable left out",
    ]
    assert warnings[2].startswith("TORCH_CUDA_ARCH_LIST only matters when CUDA extensions")
    assert not any("cudaMallocAsync" in w for w in warnings)
    (tmp_path / "start.sh").write_bytes(new)
    assert subprocess.run(["bash", "-n", str(tmp_path / "start.sh")]).returncode == 0
    again, report = startup.edit_start_script(
        new, patch_name="qwen-image-2512", env=env, flags=edits
    )
    assert again == new and report.already_applied
