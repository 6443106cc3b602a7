"""A non-editable install and a built wheel carry the bundled patches (package data).

A fresh venv sees the already-installed dependencies (--system-site-packages), so no
network is needed. It is made --without-pip: the system's pip and setuptools then do the
build, where ensurepip's own older setuptools would shadow them (and fail the
`setuptools>=68` this project builds with, which --no-build-isolation leaves to whatever
is importable). qpatch itself is installed into it from a copy of this checkout (the
build writes build/ and *.egg-info next to the sources, and a stale build/ in the checkout
could hide a missing file). The checkout is also installed editable in the system
site-packages: every check first proves that the venv's own copy is the one running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATCH = "qwen-image-2512"
BUNDLED = sorted(p.name for p in (REPO / "qpatch" / "patches").glob("*.yaml"))
NOT_SOURCES = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".whl", ".device",
    ".pytest_cache", ".ruff_cache",
)  # fmt: skip


def _env() -> dict[str, str]:
    """This environment, minus anything that could put the checkout on the venv's path
    or let pip reach an index."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("QPATCH_DEBUG", None)
    return env | {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(argv: list[str | Path], cwd: Path) -> str:
    r = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"{argv} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A venv with qpatch installed non-editable, and a wheel, both from a copy of the sources."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCES)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", src], cwd=tmp)
    wheels = tmp / "wheels"
    _run(
        [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src],
        cwd=tmp,
    )
    elsewhere = tmp / "elsewhere"  # a cwd outside the checkout and the copy
    elsewhere.mkdir()
    return {"venv": venv, "python": python, "wheels": wheels, "cwd": elsewhere}


def test_sources_have_the_bundled_patch() -> None:
    assert f"{PATCH}.yaml" in BUNDLED


def test_the_venv_runs_its_own_non_editable_copy(built: dict[str, Path]) -> None:
    code = (
        "import json, qpatch, qpatch.patchspec as s; "
        f"p = s.load_patch({PATCH!r}); "
        "print(json.dumps({'file': qpatch.__file__, 'name': p.name, 'steps': len(p.steps), "
        "'listed': [n for n, _ in s.list_patches()]}))"
    )
    got = json.loads(_run([built["python"], "-c", code], cwd=built["cwd"]))
    site = Path(got["file"]).resolve()
    assert site.is_relative_to(built["venv"].resolve()), site
    assert "site-packages" in site.parts
    assert not site.is_relative_to(REPO)
    assert got["name"] == PATCH
    assert got["steps"] > 0
    assert got["listed"] == [Path(n).stem for n in BUNDLED]


def test_qpatch_patches_lists_the_bundled_patch(built: dict[str, Path]) -> None:
    out = _run([built["venv"] / "bin" / "qpatch", "patches", "--json"], cwd=built["cwd"])
    obj = json.loads(out)
    assert obj["exit_code"] == 0
    names = [p["name"] for p in obj["patches"]]
    assert PATCH in names
    assert names == [Path(n).stem for n in BUNDLED]


def test_the_wheel_carries_every_bundled_patch(built: dict[str, Path]) -> None:
    (wheel,) = built["wheels"].glob("qpatch-*.whl")
    with zipfile.ZipFile(wheel) as z:
        inside = sorted(n for n in z.namelist() if n.startswith("qpatch/patches/"))
        assert inside == [f"qpatch/patches/{n}" for n in BUNDLED]
        for name in BUNDLED:
            assert z.read(f"qpatch/patches/{name}") == (REPO / "qpatch/patches" / name).read_bytes()
