"""Flag checks against the real `main.py --help` of ComfyUI 0.14.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from qpatch.comfy_flags import CliOption, ComfyCli, FlagRequest, parse_help, plan_flags
from qpatch.errors import BadInput
from qpatch.patchspec import load_patch
from qpatch.startup import FlagEdit, find_launches

HELP = (Path(__file__).parent / "data" / "comfyui-0.14.1-help.txt").read_text()
TEST_BED_LINE = ["--listen", "0.0.0.0", "--port", "8188", "--cpu"]


@pytest.fixture(scope="module")
def cli() -> ComfyCli:
    return parse_help(HELP)


def test_options_and_value_shapes(cli: ComfyCli) -> None:
    assert len(cli.options) == 92
    assert cli.exact("-h") == CliOption("--help", ("-h", "--help"))
    assert cli.exact("--lowvram") == CliOption("--lowvram", ("--lowvram",))
    assert cli.exact("--port") == CliOption("--port", ("--port",), takes_value=True)
    assert cli.exact("--listen") == CliOption("--listen", ("--listen",), True, value_optional=True)
    assert cli.exact("--fast") == CliOption("--fast", ("--fast",), True, value_optional=True)
    paths = cli.exact("--extra-model-paths-config")  # "PATH [PATH ...]": one or more
    assert paths and paths.takes_value and not paths.value_optional
    hashing = cli.exact("--default-hashing-function")
    assert hashing and hashing.choices == ("md5", "sha1", "sha256", "sha512")
    # EnumAction's literal metavar "[none,auto,…]": a required choice, not an optional value
    preview = cli.exact("--preview-method")
    assert preview == CliOption(
        "--preview-method",
        ("--preview-method",),
        True,
        False,
        ("none", "auto", "latent2rgb", "taesd"),
    )
    assert cli.exact("--models-directory") is None  # not in this version


def test_exclusive_groups_from_the_usage_line(cli: ComfyCli) -> None:
    assert cli.group_of("--lowvram") == {
        "--gpu-only",
        "--highvram",
        "--normalvram",
        "--lowvram",
        "--novram",
        "--cpu",
    }
    assert cli.group_of("--disable-cuda-malloc") == {"--cuda-malloc", "--disable-cuda-malloc"}
    assert cli.group_of("--cache-ram") == {
        "--cache-classic",
        "--cache-lru",
        "--cache-none",
        "--cache-ram",
    }
    assert cli.group_of("--port") == frozenset()
    assert len(cli.groups) == 10


def test_help_that_is_not_comfyui_is_refused() -> None:
    with pytest.raises(BadInput, match="does not look like ComfyUI"):
        parse_help("usage: other.py [-h] [--x X]\n\noptions:\n  -h, --help  show help\n")


def test_fp16_is_refused_with_its_real_neighbours(cli: ComfyCli) -> None:
    with pytest.raises(BadInput) as e:
        plan_flags(cli, [FlagRequest("--fp16")], TEST_BED_LINE)
    message = str(e.value)
    assert "--fp16 is ambiguous" in message
    assert "could be --fp16-unet, --fp16-vae, --fp16-text-enc" in message
    assert "nearest: --force-fp16, --fp16-unet (" in message
    assert "bf16" in message


def test_cpu_offload_is_refused_with_its_real_neighbours(cli: ComfyCli) -> None:
    with pytest.raises(BadInput) as e:
        plan_flags(cli, [FlagRequest("--cpu-offload")], TEST_BED_LINE)
    assert "--cpu-offload is not a flag of this ComfyUI" in str(e.value)
    assert "nearest: --lowvram, --novram, --async-offload (" in str(e.value)


def test_the_posts_flags_are_refused_together(cli: ComfyCli) -> None:
    with pytest.raises(BadInput) as e:
        plan_flags(cli, [FlagRequest("--fp16"), FlagRequest("--cpu-offload")], [])
    assert "--fp16 is ambiguous" in str(e.value) and "--cpu-offload is not" in str(e.value)


def test_a_typo_gets_difflib_suggestions(cli: ComfyCli) -> None:
    with pytest.raises(BadInput, match="nearest: --highvram"):
        plan_flags(cli, [FlagRequest("--highvam")], [])


def test_unique_prefix_is_written_in_full(cli: ComfyCli) -> None:
    edits, report = plan_flags(cli, [FlagRequest("--lowv")], ["--port", "8188"])
    assert edits == [FlagEdit("--lowvram")]
    assert report.findings[0].message == "--lowv is short for --lowvram; written in full"


def test_abbreviation_on_the_line_is_replaced_by_the_full_name(cli: ComfyCli) -> None:
    edits, _ = plan_flags(cli, [FlagRequest("--lowvram")], ["--lowv"])
    assert edits == [FlagEdit("--lowvram", replaces=("--lowv",))]


def test_conflict_error_names_both(cli: ComfyCli) -> None:
    with pytest.raises(BadInput, match="--lowvram is not allowed with --cpu, which the launch"):
        plan_flags(cli, [FlagRequest("--lowvram")], TEST_BED_LINE)


def test_conflict_skip_is_a_finding(cli: ComfyCli) -> None:
    edits, report = plan_flags(cli, [FlagRequest("--lowvram", on_conflict="skip")], TEST_BED_LINE)
    assert edits == []
    assert [f.message for f in report.findings] == ["--lowvram not added: the server runs --cpu"]


def test_conflict_replace_swaps(cli: ComfyCli) -> None:
    edits, _ = plan_flags(cli, [FlagRequest("--lowvram", on_conflict="replace")], TEST_BED_LINE)
    assert edits == [FlagEdit("--lowvram", replaces=("--cpu",))]


def test_conflict_with_an_abbreviated_member_on_the_line(cli: ComfyCli) -> None:
    with pytest.raises(BadInput, match="not allowed with --highv,"):
        plan_flags(cli, [FlagRequest("--lowvram")], ["--highv"])


def test_two_requests_from_one_group_are_refused(cli: ComfyCli) -> None:
    with pytest.raises(BadInput, match="both --bf16-unet and --fp16-unet"):
        plan_flags(cli, [FlagRequest("--bf16-unet"), FlagRequest("--fp16-unet")], [])


@pytest.mark.parametrize(
    "request_, message",
    [
        (FlagRequest("--lowvram", "1"), "--lowvram takes no value"),
        (FlagRequest("--port"), "--port needs a value"),
        (FlagRequest("--preview-method", "fast"), "'fast' is not one of none, auto"),
    ],
)
def test_values_are_checked(cli: ComfyCli, request_: FlagRequest, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        plan_flags(cli, [request_], [])


def test_values_pass(cli: ComfyCli) -> None:
    requests = [FlagRequest("--port", "9000"), FlagRequest("--listen"), FlagRequest("--fast")]
    edits, _ = plan_flags(cli, requests, [])
    assert edits == [FlagEdit("--port", "9000"), FlagEdit("--listen"), FlagEdit("--fast")]


def test_unknown_flag_already_on_the_line_is_a_finding(cli: ComfyCli) -> None:
    _, report = plan_flags(cli, [], ["--cpu-offload", "--listen", "0.0.0.0"])
    assert "--cpu-offload, which this ComfyUI does not accept" in report.findings[0].message


def test_bundled_patch_against_the_test_bed(cli: ComfyCli) -> None:
    script = (Path(__file__).resolve().parents[2] / "testbed" / "1键启动.sh").read_bytes()
    (launch,) = find_launches(script)
    assert list(launch.flags) == TEST_BED_LINE
    startup = load_patch("qwen-image-2512").startup
    assert startup is not None
    edits, report = plan_flags(cli, startup.flags, launch.flags)
    assert edits == [FlagEdit("--disable-cuda-malloc"), FlagEdit("--bf16-unet")]
    assert [f.message for f in report.findings] == ["--lowvram not added: the server runs --cpu"]
