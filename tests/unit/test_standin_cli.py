"""The stand-in's command line against the `--help` of a real ComfyUI 0.14.1 (captured in
tests/unit/data): the same flags, value shapes and exclusive groups, and an answer to
`--help` without importing torch. qpatch's flag checks are only as good as this match."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qpatch import comfy_flags

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "testbed" / "comfyui"
REAL_HELP = (Path(__file__).parent / "data" / "comfyui-0.14.1-help.txt").read_text()

#: Runs main.py's --help the way `python main.py --help` does, then says whether torch
#: was imported on the way.
_PROBE = """
import runpy, sys
sys.argv = ["main.py", "--help"]
sys.path.insert(0, ".")
try:
    runpy.run_path("main.py", run_name="__main__")
except SystemExit as e:
    print("exit", e.code, "torch" in sys.modules, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def probe() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=STANDIN, capture_output=True, text=True, timeout=60
    )


def test_help_exits_0_without_importing_torch(probe: subprocess.CompletedProcess[str]) -> None:
    assert probe.stderr.strip().splitlines()[-1] == "exit 0 False", probe.stderr


def test_usage_line_is_the_real_ones(probe: subprocess.CompletedProcess[str]) -> None:
    def usage(text: str) -> str:
        return text.split("\n\n", 1)[0]

    assert usage(probe.stdout) == usage(REAL_HELP)


def test_same_flags_value_shapes_and_groups(probe: subprocess.CompletedProcess[str]) -> None:
    ours, real = comfy_flags.parse_help(probe.stdout), comfy_flags.parse_help(REAL_HELP)

    def shape(cli: comfy_flags.ComfyCli) -> dict[str, tuple[object, ...]]:
        return {
            o.name: (o.spellings, o.takes_value, o.value_optional, o.choices) for o in cli.options
        }

    assert shape(ours) == shape(real)
    assert set(ours.groups) == set(real.groups)
