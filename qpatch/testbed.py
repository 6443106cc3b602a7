"""Build the test-bed image: our ComfyUI stand-in (testbed/comfyui) in the layout of the
one-click images our users run, from scratch, because no container registry can be reached.

Three layers, each tagged by a hash of its own inputs, so a change to our node or to the
stand-in rebuilds only the top layer and never reinstalls torch:

    qpatch-testbed/base:<h>     debootstrap bookworm (minbase + python3 ...), docker import
    qpatch-testbed/deps:<h>     + /root/venv with the CPU torch and its locked dependencies,
                                installed offline
    qpatch-testbed/comfyui:<h>  + /root/ComfyUI (the stand-in), our node, /root/1键启动.sh as CMD

The hashes cover contents and the executable bit only (what git keeps), never the
checkout's path, umask or files the stand-in writes when run, so every clone of one
commit names the same images.

Used by scripts/build-testbed, the test fixtures and `qpatch demo`.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests

from qpatch.errors import QpatchError
from qpatch.targets.docker import connect

REPO = Path(__file__).resolve().parents[1]
TESTBED = REPO / "testbed"
LOCK = TESTBED / "requirements.lock"
NODE_DIR = TESTBED / "custom_nodes" / "comfyui_qwen_image"
START_SCRIPT = TESTBED / "1键启动.sh"
STANDIN = TESTBED / "comfyui"
#: What the stand-in writes into its own root when run (models, outputs, ...): never an input.
RUNTIME_FOLDERS = frozenset({"models", "output", "input", "temp", "user"})
#: The interpreter of Debian bookworm's python3, for which the wheels are fetched.
IMAGE_PYTHON = ("3.11", "cp311")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "procps", "ca-certificates")
REPO_NAME = "qpatch-testbed"
# Bump when a build step changes in a way its inputs do not show.
RECIPE_VERSION = "2"

# Constant scripts run inside the build containers: no user input ever reaches them.
VENV_INSTALL = """set -eu
python3 -m venv /root/venv
/root/venv/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \
    --find-links /wheels -r /wheels/requirements.lock
/root/venv/bin/pip check
"""
FINAL_DOCKERFILE = """FROM {deps}
COPY ComfyUI /root/ComfyUI
COPY comfyui_qwen_image /root/ComfyUI/custom_nodes/comfyui_qwen_image
COPY start.sh /root/1键启动.sh
RUN chmod 755 /root/1键启动.sh
LABEL org.qpatch.testbed={tag}
WORKDIR /root
CMD ["bash", "/root/1键启动.sh"]
"""


class BuildError(QpatchError):
    """A build step failed; the message says what to do about it (exit status 1: nothing
    of the user's was touched, a rerun resumes from the layers already built)."""

    exit_code = 1


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("QPATCH_TESTBED_CACHE", base / "qpatch-testbed"))


def log(msg: str) -> None:
    print(f"build-testbed: {msg}", file=sys.stderr, flush=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    log(f"{title} ...")
    t0 = time.monotonic()
    yield
    log(f"{title}: done in {time.monotonic() - t0:.1f} s")


# ----------------------------------------------------------------------------- hashing


def _inputs(root: Path) -> Iterator[Path]:
    """The files of a tree that go into the image, in a stable order: no VCS or caches,
    no folder the stand-in writes when run."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(p in (".git", "__pycache__", ".pytest_cache") for p in rel.parts):
            continue
        if rel.parts[0] in RUNTIME_FOLDERS or path.suffix == ".pyc" or not path.is_file():
            continue
        yield path


def _mode(path: Path) -> int:
    """0o755 or 0o644: the executable bit is all git keeps, so all that may count."""
    return 0o755 if path.stat().st_mode & 0o100 else 0o644


def hash_tree(root: Path, h: hashlib._Hash | None = None) -> hashlib._Hash:
    """Relative paths, normalised modes and contents of every input file."""
    h = h or hashlib.sha256()
    for path in _inputs(root):
        h.update(f"{path.relative_to(root).as_posix()}\0{_mode(path):o}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Layers:
    """The tags of the three layers for the inputs as they are now."""

    base_tag: str
    deps_tag: str
    final_tag: str


def layers(testbed: Path = TESTBED) -> Layers:
    base = _digest(RECIPE_VERSION, SUITE, MIRROR, *BASE_PACKAGES)
    deps = _digest(base, (testbed / LOCK.name).read_bytes(), VENV_INSTALL, *IMAGE_PYTHON)
    final_inputs = [deps, FINAL_DOCKERFILE, (testbed / START_SCRIPT.name).read_bytes()]
    final_inputs.append(hash_tree(testbed / STANDIN.name).hexdigest())
    final_inputs.append(hash_tree(testbed / NODE_DIR.relative_to(TESTBED)).hexdigest())
    return Layers(
        base_tag=f"{REPO_NAME}/base:{base}",
        deps_tag=f"{REPO_NAME}/deps:{deps}",
        final_tag=f"{REPO_NAME}/comfyui:{_digest(*final_inputs)}",
    )


# ----------------------------------------------------------------------------- steps


def _run(argv: list[str], what: str, **kw: object) -> None:
    try:
        subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as e:
        raise BuildError(f"{what}: {argv[0]} not found") from e
    except subprocess.CalledProcessError as e:
        raise BuildError(f"{what} failed with exit status {e.returncode} (output above)") from e


def ensure_tool(command: str, package: str) -> None:
    """Install the Debian package that provides `command` when it is missing, as
    scripts/ensure-docker does for docker.io: a fresh machine has neither, and a build that
    stops on a missing tool after minutes of work helps nobody."""
    if shutil.which(command):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BuildError(
            f"{command} is not installed and this is not a root Debian machine: "
            f"install the {package} package, then run the build again",
            hint=f"apt-get install {package}",
        )
    with step(f"installing Debian's {package} (for {command})"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        quiet = {"stdout": subprocess.DEVNULL, "env": env}
        _run(["apt-get", "update", "-qq"], "apt-get update", **quiet)
        _run(["apt-get", "install", "-y", "-qq", package], f"apt-get install {package}", **quiet)
    if not shutil.which(command):
        raise BuildError(f"apt-get installed {package}, but {command} is still not on PATH")


# ----------------------------------------------------------------------------- layers


def _has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_base(client: docker.DockerClient, p: Layers) -> None:
    tarball = cache_dir() / f"{p.base_tag.rsplit(':', 1)[1]}-rootfs.tar"
    if not tarball.is_file():
        ensure_tool("debootstrap", "debootstrap")
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            rootfs = Path(tmp) / "rootfs"
            with step(f"debootstrap {SUITE} (minbase + {', '.join(BASE_PACKAGES)})"):
                _run(
                    [
                        "debootstrap",
                        "--variant=minbase",
                        f"--include={','.join(BASE_PACKAGES)}",
                        SUITE,
                        str(rootfs),
                        MIRROR,
                    ],
                    "debootstrap",
                    stdout=subprocess.DEVNULL,
                )
                for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
                    deb.unlink()
            with step("packing the root filesystem"):
                part = tarball.with_suffix(".part")
                _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(part), "."], "tar")
                part.rename(tarball)
    with step(f"docker import -> {p.base_tag}"):
        repo, tag = p.base_tag.rsplit(":", 1)
        client.api.import_image(src=str(tarball), repository=repo, tag=tag)


def wheel_download_argv(wheels: Path) -> list[str]:
    """pip download of exactly the locked wheels for the image's python (bookworm's 3.11),
    whatever python runs the build. pip's own configuration is kept: on the developers'
    machines it is what finds the CPU torch wheel on local disk."""
    version, abi = IMAGE_PYTHON
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    argv += ["--only-binary=:all:", "--python-version", version, "--implementation", "cp"]
    argv += ["--abi", abi, "--abi", "abi3", "--abi", "none"]
    for platform in WHEEL_PLATFORMS:
        argv += ["--platform", platform]
    return [*argv, "-d", str(wheels), "-r", str(LOCK)]


def ensure_wheels() -> Path:
    """Download the locked wheels once; a stamp per lock content makes reruns offline."""
    wheels = cache_dir() / "wheels"
    stamp = wheels / f".complete-{_digest(LOCK.read_bytes(), *IMAGE_PYTHON)}"
    if stamp.is_file():
        return wheels
    wheels.mkdir(parents=True, exist_ok=True)
    with step("downloading the locked wheels (CPU torch and its dependencies)"):
        _run(wheel_download_argv(wheels), "pip download")
    stamp.touch()
    return wheels


def build_deps(client: docker.DockerClient, p: Layers) -> None:
    wheels = ensure_wheels()
    shutil.copyfile(LOCK, wheels / "requirements.lock")
    with step("installing the locked packages into /root/venv (offline)"):
        container = client.containers.run(
            p.base_tag,
            ["sh", "-c", VENV_INSTALL],
            volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}},
            network_mode="none",
            detach=True,
        )
        try:
            result = container.wait()
            if result["StatusCode"] != 0:
                tail = container.logs(tail=30).decode(errors="replace")
                raise BuildError(f"pip install in the image failed:\n{tail}")
            with step(f"docker commit -> {p.deps_tag}"):
                repo, tag = p.deps_tag.rsplit(":", 1)
                container.commit(repository=repo, tag=tag)
        finally:
            container.remove(force=True)


def build_final(client: docker.DockerClient, p: Layers) -> None:
    with step(f"docker build -> {p.final_tag}"):
        context = final_context(p)
        try:
            client.images.build(
                fileobj=context, custom_context=True, tag=p.final_tag, rm=True, forcerm=True
            )
        except docker.errors.BuildError as e:
            lines = "".join(str(c.get("stream", c.get("error", ""))) for c in e.build_log)
            raise BuildError(f"docker build failed: {e}\n{lines[-2000:]}") from e


def _add_tree(tar: tarfile.TarFile, root: Path, arcname: str) -> None:
    """The input files of `root` (exactly those hash_tree covers), owned by root, with the
    normalised modes: the image is a function of the hash that names it."""
    for path in _inputs(root):
        info = tar.gettarinfo(str(path), f"{arcname}/{path.relative_to(root).as_posix()}")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = _mode(path)
        with path.open("rb") as f:
            tar.addfile(info, f)


def final_context(p: Layers) -> io.BytesIO:
    """The build context as an in-memory tar: the stand-in, our node, the start script."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerfile = FINAL_DOCKERFILE.format(deps=p.deps_tag, tag=p.final_tag).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        _add_tree(tar, STANDIN, "ComfyUI")
        _add_tree(tar, NODE_DIR, "comfyui_qwen_image")
        info = tar.gettarinfo(str(START_SCRIPT), "start.sh")
        info.uid = info.gid = 0
        info.mode = 0o755
        with START_SCRIPT.open("rb") as f:
            tar.addfile(info, f)
    buf.seek(0)
    return buf


def ensure_image(
    *,
    client: docker.DockerClient | None = None,
    on_layers: Callable[[Layers], None] | None = None,
) -> str:
    """Return the tag of the up-to-date test-bed image, building only the missing layers."""
    if not (STANDIN / "main.py").is_file():
        raise BuildError(
            f"the test bed's inputs are not in {TESTBED}: the demo and the tests run from a "
            "checkout of qpatch, not from an installed wheel",
            hint="clone the repository and run `pip install -e .` there",
        )
    cache_dir().mkdir(parents=True, exist_ok=True)
    client = client or connect(timeout=600)
    p = layers()
    if on_layers:
        on_layers(p)
    if _has_image(client, p.final_tag):
        log(f"{p.final_tag} is up to date")
        return p.final_tag
    t0 = time.monotonic()
    try:
        if not _has_image(client, p.deps_tag):
            if not _has_image(client, p.base_tag):
                build_base(client, p)
            build_deps(client, p)
        build_final(client, p)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise BuildError(
            f"the Docker engine failed while building the test bed: {e}",
            hint="check the engine (scripts/ensure-docker) and run the build again; "
            "finished layers are kept",
        ) from e
    size = client.images.get(p.final_tag).attrs["Size"]
    log(f"{p.final_tag} built in {time.monotonic() - t0:.1f} s ({size / 1e9:.2f} GB)")
    return p.final_tag


# ----------------------------------------------------------------------------- the demo

DEMO_LABEL = "org.qpatch.demo"


def start_demo(client: docker.DockerClient, image: str, name: str) -> None:
    client.containers.run(image, name=name, detach=True, labels={DEMO_LABEL: "1"})


def remove_demo(client: docker.DockerClient, name: str) -> None:
    """Remove the demo container left by an earlier demo; never someone else's."""
    try:
        old = client.containers.get(name)
    except docker.errors.NotFound:
        return
    if old.labels.get(DEMO_LABEL) != "1":
        raise QpatchError(f"a container named {name} exists and is not qpatch's demo; remove it")
    old.remove(force=True, v=True)  # and its anonymous volume, if the image declares one
