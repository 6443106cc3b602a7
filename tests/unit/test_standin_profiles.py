"""The stand-in's two profiles (COMFYUI_STANDIN_PROFILE): `0.14.1`, the default and unchanged,
and `current`, upstream master (0.38.1) where qpatch's rules depend on it: its flags and
groups, Dynamic VRAM, `--lowvram` doing nothing under it, and the allocator variable.

The flag table upstream has is transcribed in tests/unit/data/standin_current/ (names and
value shapes only); the decisions are pure functions of comfy/profile.py, tested without a
GPU; a few runs of main.py check that the pieces are wired in, on this CPU-only machine."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from qpatch import comfy_flags

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "testbed" / "comfyui"
DATA = Path(__file__).parent / "data"
UPSTREAM = json.loads((DATA / "standin_current" / "upstream-cli.json").read_text())
REAL_0141_HELP = (DATA / "comfyui-0.14.1-help.txt").read_text()

#: `python main.py --help` as a user runs it, then whether torch was imported on the way.
_HELP_PROBE = """
import runpy, sys
sys.argv = ["main.py", "--help"]
sys.path.insert(0, ".")
try:
    runpy.run_path("main.py", run_name="__main__")
except SystemExit as e:
    print("exit", e.code, "torch" in sys.modules, file=sys.stderr)
"""


def _env(profile: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_STANDIN_PROFILE",)}
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    if profile is not None:
        env["COMFYUI_STANDIN_PROFILE"] = profile
    env.update(extra)
    return env


def _run(code: str, profile: str | None, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=STANDIN,
        env=_env(profile, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def helps() -> dict[str | None, subprocess.CompletedProcess[str]]:
    return {p: _run(_HELP_PROBE, p) for p in (None, "0.14.1", "current")}


@pytest.fixture(scope="module")
def current_cli() -> Iterator[ModuleType]:
    """comfy/cli_args_current.py and comfy/profile.py, imported by path; neither has side
    effects but reading the profile variable. Forgotten afterwards, so that no other test
    finds a `comfy` package (the node's get_device() would take it for ComfyUI)."""
    sys.path.insert(0, str(STANDIN))
    try:
        import comfy.cli_args_current as module

        yield module
    finally:
        sys.path.remove(str(STANDIN))
        for name in [n for n in sys.modules if n == "comfy" or n.startswith("comfy.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def profile(current_cli: ModuleType) -> ModuleType:
    import comfy.profile as module

    return module


def parse(cli: ModuleType, *argv: str) -> argparse.Namespace:
    parser = cli.build_parser()
    return cli.finish(parser, parser.parse_args(list(argv)))


# ---------------------------------------------------------------------------------- help


@pytest.mark.parametrize("profile_name", [None, "0.14.1", "current"])
def test_help_exits_0_without_importing_torch(
    helps: dict[str | None, subprocess.CompletedProcess[str]], profile_name: str | None
) -> None:
    probe = helps[profile_name]
    assert probe.stderr.strip().splitlines()[-1] == "exit 0 False", probe.stderr


def test_0141_is_the_default_and_unchanged(
    helps: dict[str | None, subprocess.CompletedProcess[str]],
) -> None:
    assert helps["0.14.1"].stdout == helps[None].stdout
    assert helps[None].stdout.split("\n\n", 1)[0] == REAL_0141_HELP.split("\n\n", 1)[0]


def test_current_has_upstream_masters_flags_shapes_and_groups(
    helps: dict[str | None, subprocess.CompletedProcess[str]],
) -> None:
    cli = comfy_flags.parse_help(helps["current"].stdout)
    shapes = {
        "switch": (False, False),
        "value": (True, False),
        "optional": (True, True),
    }
    want = {
        name: (
            *shapes[kind],
            tuple(UPSTREAM["choices"][name]) if name in UPSTREAM["choices"] else None,
        )
        for name, kind in UPSTREAM["options"].items()
    }
    got = {o.name: (o.takes_value, o.value_optional, o.choices) for o in cli.options}
    assert got == want
    assert set(cli.groups) == {frozenset(g) for g in UPSTREAM["groups"]}


def test_current_help_names_the_new_memory_flags_and_the_lowvram_no_op(
    helps: dict[str | None, subprocess.CompletedProcess[str]],
) -> None:
    text = helps["current"].stdout
    for flag in (
        "--disable-dynamic-vram",
        "--enable-dynamic-vram",
        "--vram-headroom VRAM_HEADROOM",
        "--reserve-vram RESERVE_VRAM",
        "--async-offload [NUM_STREAMS]",
        "--disable-pinned-memory",
        "--disable-nvml-pressure",
    ):
        assert f"  {flag}" in text, flag
    lowvram = text.split("  --lowvram", 1)[1].split("  --novram", 1)[0]
    assert "Does nothing under Dynamic VRAM" in " ".join(lowvram.split())
    for gone in UPSTREAM["removed_since_0_14_1"]:
        assert gone not in text and gone in helps[None].stdout


# ---------------------------------------------------------------- current command line


def test_current_defaults_and_consts_are_upstreams(current_cli: ModuleType) -> None:
    parser = current_cli.build_parser()
    actions = {a.option_strings[-1]: a for a in parser._actions if a.option_strings}
    for flag, default in UPSTREAM["defaults"].items():
        assert actions[flag].default == default, flag
    for flag, const in UPSTREAM["consts"].items():
        assert actions[flag].const == const, flag
    assert [f.value for f in current_cli.PerformanceFeature] == UPSTREAM["fast_features"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--normalvram"],  # gone upstream: an unknown flag stops the server
        ["--cpu", "--lowvram"],  # one exclusive group
        ["--cache-ram", "1", "2", "3"],  # at most two values
        ["--fast", "dynamic_vram"],  # no longer a --fast feature
        ["--verbose", "LOUD"],
    ],
)
def test_current_refuses_as_upstream_does(current_cli: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse(current_cli, *argv)
    assert stopped.value.code == 2


def test_current_values_are_read_as_upstream_reads_them(current_cli: ModuleType) -> None:
    args = parse(
        current_cli, "--cuda-device", "0,1", "--verbose", "--verbose", "WARNING", "/tmp/x.log"
    )
    assert args.cuda_device == "0,1"
    assert args.verbose == [("DEBUG", None), ("WARNING", "/tmp/x.log")]
    assert current_cli.console_log_level(args.verbose) == "DEBUG"
    assert current_cli.file_log_outputs(args.verbose) == [("WARNING", "/tmp/x.log")]
    assert current_cli.console_log_level(parse(current_cli).verbose) == "INFO"
    assert parse(current_cli, "--async-offload").async_offload == 2
    assert parse(current_cli, "--cache-ram").cache_ram == []
    assert parse(current_cli, "--high-ram").cache_classic
    assert parse(current_cli, "--disable-api-nodes").disable_partner_nodes
    assert parse(current_cli, "--fast").fast == set(current_cli.PerformanceFeature)


# ----------------------------------------------------------------------- Dynamic VRAM


NVIDIA = ("nvidia", (2, 13), None)
OLD_TORCH = ("nvidia", (2, 7), None)
AMD_NEW = ("amd", (2, 13), (7, 14))
AMD_OLD = ("amd", (2, 13), (6, 4))
CPU = ("cpu", (2, 13), None)

ENABLED = (True, logging.INFO, "DynamicVRAM support detected and enabled")
NO_AIMDO = (False, logging.WARNING, "No working comfy-aimdo install detected.")
TOO_OLD = (False, logging.WARNING, "Unsupported Pytorch detected.")


def off(reason: str) -> tuple[bool, int, str]:
    return (False, logging.INFO, f"[stand-in] DynamicVRAM off: {reason}")


@pytest.mark.parametrize(
    ("argv", "device", "want"),
    [
        ([], NVIDIA, ENABLED),  # on by default on NVIDIA
        (["--lowvram"], NVIDIA, ENABLED),  # lowvram leaves it on
        (["--reserve-vram", "2", "--vram-headroom", "1"], NVIDIA, ENABLED),
        (["--novram"], NVIDIA, off("--novram")),
        (["--highvram"], NVIDIA, off("--highvram")),
        (["--gpu-only"], NVIDIA, off("--gpu-only")),
        (["--cpu"], NVIDIA, off("--cpu")),
        (["--disable-dynamic-vram"], NVIDIA, off("--disable-dynamic-vram")),
        ([], OLD_TORCH, TOO_OLD),  # torch before 2.8
        (["--enable-dynamic-vram"], OLD_TORCH, ENABLED),  # forced: no torch check
        ([], AMD_NEW, ENABLED),  # ROCm 7.14 and later
        ([], AMD_OLD, off("not supported on this device")),
        (["--enable-dynamic-vram"], AMD_OLD, ENABLED),
        ([], CPU, off("not supported on this device")),
        (["--cpu"], CPU, off("--cpu")),  # the test bed
        (["--cpu", "--enable-dynamic-vram"], CPU, NO_AIMDO),  # forced where aimdo hooks nothing
        (["--highvram", "--enable-dynamic-vram"], NVIDIA, ENABLED),
    ],
)
def test_dynamic_vram_decision(
    current_cli: ModuleType,
    profile: ModuleType,
    argv: list[str],
    device: tuple[Any, ...],
    want: tuple[bool, int, str],
) -> None:
    args = parse(current_cli, *argv)
    decision = profile.decide_dynamic_vram(args, profile.DeviceFacts(*device))
    assert decision.enabled is want[0]
    ((level, message),) = decision.messages
    assert level == want[1]
    assert message.startswith(want[2])
    assert profile.lowvram_effective(args, decision.enabled) is (
        args.lowvram and not decision.enabled
    )


def test_lowvram_does_nothing_under_dynamic_vram(
    current_cli: ModuleType, profile: ModuleType
) -> None:
    args = parse(current_cli, "--lowvram")
    assert not profile.lowvram_effective(args, dynamic_vram=True)
    assert profile.lowvram_effective(args, dynamic_vram=False)


def test_disable_flag_warning_is_upstreams(current_cli: ModuleType, profile: ModuleType) -> None:
    assert profile.disable_flag_warning(parse(current_cli)) is None
    warning = profile.disable_flag_warning(parse(current_cli, "--disable-dynamic-vram"))
    assert warning.startswith("Dynamic vram disabled with argument. If you have any issues")
    assert warning.endswith("will be faster even if they are larger than your memory.")


@pytest.mark.parametrize(
    ("argv", "vendor", "streams"),
    [
        ([], "nvidia", 2),
        ([], "amd", 2),
        ([], "cpu", 0),
        (["--async-offload"], "cpu", 2),
        (["--async-offload", "4"], "nvidia", 4),
        (["--disable-async-offload"], "nvidia", 0),
    ],
)
def test_async_offload_streams(
    current_cli: ModuleType, profile: ModuleType, argv: list[str], vendor: str, streams: int
) -> None:
    assert profile.async_offload_streams(parse(current_cli, *argv), vendor) == streams


GIB = 1024**3


@pytest.mark.parametrize(
    ("ram", "swap", "line"),
    [
        (128 * GIB, 0, "Enabled pinned memory 114688"),  # ram + swap - 16 GiB
        (32 * GIB, 0, "Enabled pinned memory 16384"),
        (16 * GIB, 0, "Enabled pinned memory 6553.0"),  # the float 40% wins
        (32 * GIB, 16 * GIB, "Enabled pinned memory 28672"),  # ram - 4 GiB
    ],
)
def test_pinned_memory_line(
    current_cli: ModuleType, profile: ModuleType, ram: int, swap: int, line: str
) -> None:
    args = parse(current_cli)
    assert profile.pinned_memory_line(args, "nvidia", ram, swap) == line
    assert profile.pinned_memory_line(args, "cpu", ram, swap) is None
    assert (
        profile.pinned_memory_line(
            parse(current_cli, "--disable-pinned-memory"), "nvidia", ram, swap
        )
        is None
    )


def test_disk_swap_leaves_zram_out(profile: ModuleType) -> None:
    swaps = (
        "Filename\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/swapfile  file  8388604  0  -2\n"
        "/dev/zram0  partition  4194300  0  100\n"
    )
    assert profile.disk_swap_total(swaps) == 8388604 * 1024


# ------------------------------------------------------------------------- allocator


@pytest.mark.parametrize(
    ("value", "cuda_malloc", "want"),
    [
        (None, False, None),
        ("", False, None),  # an empty variable is unset
        (None, True, "backend:cudaMallocAsync"),
        ("expandable_segments:True", False, None),
        ("expandable_segments:True", True, "backend:cudaMallocAsync"),
        ("expandable_segments:True,max_split_size_mb:128", False, "max_split_size_mb:128"),
        (
            "max_split_size_mb:128,expandable_segments:True",
            True,
            "max_split_size_mb:128,backend:cudaMallocAsync",
        ),
        ("a:1,expandable_segments:True,b:2", False, "a:1,,b:2"),  # upstream's plain replace
        ("expandable_segments:False", False, "expandable_segments:False"),
        ("max_split_size_mb:128", True, "max_split_size_mb:128,backend:cudaMallocAsync"),
    ],
)
def test_current_alloc_conf(
    profile: ModuleType, value: str | None, cuda_malloc: bool, want: str | None
) -> None:
    assert profile.alloc_conf_current(value, cuda_malloc) == want


def _names(*names: str):
    return lambda: list(names)


def _never():
    raise AssertionError("nvidia-smi asked for no reason")


@pytest.mark.parametrize(
    ("argv", "torch_version", "gpu_names", "want"),
    [
        ([], "2.13.0+cpu", _never, False),
        ([], "2.9.1+cu128", _names("GPU 0: NVIDIA H200"), True),
        ([], "2.9.1+cu128", _names("GPU 0: NVIDIA GeForce GTX 1650"), False),
        ([], "2.10.0+cu130", _never, True),  # CUDA 13: no card check
        ([], "2.9.1", _never, False),  # not a +cu build (conda, NGC)
        ([], "1.13.1+cu117", _never, False),
        (["--fast", "autotune"], "2.9.1+cu128", _never, False),
        (["--cpu"], "2.9.1+cu128", _names(), True),  # --cpu no longer matters here
        (["--cuda-malloc"], "2.13.0+cpu", _never, True),
        (["--disable-cuda-malloc"], "2.10.0+cu130", _never, False),
    ],
)
def test_current_cuda_malloc_choice(
    current_cli: ModuleType,
    profile: ModuleType,
    argv: list[str],
    torch_version: str,
    gpu_names: Any,
    want: bool,
) -> None:
    assert profile.cuda_malloc_current(parse(current_cli, *argv), torch_version, gpu_names) is want


#: cuda_malloc.configure() end to end in a fresh process per profile: each case's flags,
#: variable and torch version string (torch_build and nvidia-smi stubbed), then the variable.
_ALLOC_PROBE = """
import json, sys
sys.path.insert(0, ".")
from comfy import cli_args, profile
import cuda_malloc
out = []
for argv, value, version in json.loads(sys.argv[1]):
    args = cli_args.parser.parse_args(argv)
    if profile.CURRENT:
        from comfy import cli_args_current
        args = cli_args_current.finish(cli_args.parser, args)
    cuda_malloc.args = args
    cuda_malloc.torch_build = lambda: (version, "12.8" if "+cu" in version else None)
    cuda_malloc.gpu_names = lambda: ["GPU 0: NVIDIA H200"]
    env = {} if value is None else {"PYTORCH_CUDA_ALLOC_CONF": value}
    cuda_malloc.configure(env)
    out.append(env.get("PYTORCH_CUDA_ALLOC_CONF"))
print(json.dumps(out))
"""

ALLOC_CASES = [
    ([], None, "2.9.1+cu128"),
    ([], "expandable_segments:True", "2.9.1+cu128"),
    (["--disable-cuda-malloc"], "expandable_segments:True", "2.9.1+cu128"),
    (["--disable-cuda-malloc"], "expandable_segments:True,max_split_size_mb:128", "2.9.1+cu128"),
    (["--cpu"], "max_split_size_mb:128", "2.9.1+cu128"),
    ([], "expandable_segments:True", "2.13.0+cpu"),
]


@pytest.mark.parametrize(
    ("profile_name", "want"),
    [
        (
            "0.14.1",
            [
                "backend:cudaMallocAsync",
                "expandable_segments:True,backend:cudaMallocAsync",  # kept, and now inert
                "expandable_segments:True",
                "expandable_segments:True,max_split_size_mb:128",
                "max_split_size_mb:128",  # --cpu: no backend
                "expandable_segments:True",
            ],
        ),
        (
            "current",
            [
                "backend:cudaMallocAsync",
                "backend:cudaMallocAsync",  # expandable segments taken out
                None,  # ... and the variable unset when nothing is left
                "max_split_size_mb:128",
                "max_split_size_mb:128,backend:cudaMallocAsync",  # --cpu no longer matters
                None,
            ],
        ),
    ],
)
def test_cuda_malloc_configure_per_profile(profile_name: str, want: list[str | None]) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _ALLOC_PROBE, json.dumps(ALLOC_CASES)],
        cwd=STANDIN,
        env=_env(profile_name),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == want


def test_pytorch_alloc_conf_is_left_alone(profile: ModuleType) -> None:
    env = {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    profile.apply_alloc_conf(env, profile.alloc_conf_current(None, cuda_malloc=False))
    assert env == {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}


# ------------------------------------------------------------ versions and start-up


_STATS_PROBE = """
import json, sys
sys.path.insert(0, ".")
import server
print(json.dumps(server.system_stats()["system"]["comfyui_version"]))
"""


@pytest.mark.parametrize(("profile_name", "version"), [(None, "0.14.1"), ("current", "0.38.1")])
def test_system_stats_reports_the_profiles_version(profile_name: str | None, version: str) -> None:
    probe = _run(_STATS_PROBE, profile_name)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout.splitlines()[-1]) == version


def test_an_unknown_profile_stops_at_once() -> None:
    probe = _run(_HELP_PROBE, "0.40")
    assert "exit 2 False" in probe.stderr
    assert "unknown stand-in profile" in probe.stderr


def _start(profile_name: str | None, tmp_path: Path, *flags: str, **env: str) -> str:
    ran = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--base-directory",
            str(tmp_path),
            *flags,
            "--quick-test-for-ci",
        ],
        cwd=STANDIN,
        env=_env(profile_name, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stderr


def test_current_start_up_on_the_test_bed(tmp_path: Path) -> None:
    log = _start(
        "current",
        tmp_path,
        "--cpu",
        "--disable-dynamic-vram",
        PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True,max_split_size_mb:128",
    ).splitlines()
    assert "Set vram state to: DISABLED" in log  # --cpu wins, as upstream
    assert "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128" in log
    dyn = log.index("[stand-in] DynamicVRAM off: --disable-dynamic-vram")
    version = log.index("ComfyUI version: 0.38.1")
    assert log.index("Device: cpu") < dyn < version
    assert log[version + 1].startswith("Dynamic vram disabled with argument.")


def test_0141_start_up_is_unchanged(tmp_path: Path) -> None:
    log = _start(None, tmp_path, "--cpu", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    lines = log.splitlines()
    assert lines[0] == "ComfyUI version: 0.14.1"
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in lines
    assert "DynamicVRAM" not in log
