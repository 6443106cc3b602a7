"""Build the test-bed image: real ComfyUI in the layout of the one-click images our users
run, from scratch, because no container registry can be reached.

Three layers, each tagged by a hash of its own inputs, so a change to our node rebuilds
only the top layer and never reinstalls torch:

    qpatch-testbed/base:<h>     debootstrap bookworm (minbase + python3 ...), docker import
    qpatch-testbed/deps:<h>     + /root/venv with the locked packages, installed offline
    qpatch-testbed/comfyui:<h>  + /root/ComfyUI, our node, /root/1键启动.sh as CMD

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

REPO = Path(__file__).resolve().parents[1]
TESTBED = REPO / "testbed"
LOCK = TESTBED / "requirements.lock"
NODE_DIR = TESTBED / "custom_nodes" / "comfyui_qwen_image"
START_SCRIPT = TESTBED / "1键启动.sh"
DEFAULT_VENDOR = REPO.parent / "shared" / "vendor" / "comfyui-0.14.1"
UPSTREAM = "https://github.com/comfyanonymous/ComfyUI.git@6d11cc73549e14a0a31e9ff8c90bfd71b380fe2c"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "procps", "ca-certificates")
REPO_NAME = "qpatch-testbed"
# Bump when a build step changes in a way its inputs do not show.
RECIPE_VERSION = "1"

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


class BuildError(RuntimeError):
    """A build step failed; the message says what to do about it."""


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


def hash_tree(root: Path, h: hashlib._Hash | None = None) -> hashlib._Hash:
    """Paths, modes and contents of every file, in a stable order; .git and caches skipped."""
    h = h or hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(p in (".git", "__pycache__") for p in rel.parts) or not path.is_file():
            continue
        h.update(f"{rel.as_posix()}\0{path.stat().st_mode & 0o777:o}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    comfyui_src: Path
    base_tag: str
    deps_tag: str
    final_tag: str


def plan(comfyui_src: Path) -> Plan:
    base = _digest(RECIPE_VERSION, SUITE, MIRROR, *BASE_PACKAGES)
    deps = _digest(base, LOCK.read_bytes(), VENV_INSTALL)
    final_inputs = [deps, FINAL_DOCKERFILE, START_SCRIPT.read_bytes()]
    final_inputs.append(hash_tree(comfyui_src).hexdigest())
    final_inputs.append(hash_tree(NODE_DIR).hexdigest())
    return Plan(
        comfyui_src=comfyui_src,
        base_tag=f"{REPO_NAME}/base:{base}",
        deps_tag=f"{REPO_NAME}/deps:{deps}",
        final_tag=f"{REPO_NAME}/comfyui:{_digest(*final_inputs)}",
    )


# ----------------------------------------------------------------------------- sources


def resolve_comfyui_src(spec: str | None) -> Path:
    """A local tree, or `URL@COMMIT` cloned once into the cache."""
    if spec is None:
        spec = str(DEFAULT_VENDOR) if DEFAULT_VENDOR.is_dir() else UPSTREAM
    if "@" in spec and "://" in spec:
        url, commit = spec.rsplit("@", 1)
        dest = cache_dir() / "src" / commit
        if not (dest / "main.py").is_file():
            with step(f"cloning {url} at {commit}"):
                shutil.rmtree(dest, ignore_errors=True)
                _run(["git", "clone", "--quiet", url, str(dest)], "git clone")
                _run(["git", "-C", str(dest), "checkout", "--quiet", commit], "git checkout")
        return dest
    path = Path(spec).expanduser().resolve()
    if not (path / "main.py").is_file():
        raise BuildError(f"{path} is not a ComfyUI source tree (no main.py); pass --comfyui-src")
    return path


def _run(argv: list[str], what: str, **kw: object) -> None:
    try:
        subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as e:
        raise BuildError(f"{what}: {argv[0]} not found; apt-get install {argv[0]}") from e
    except subprocess.CalledProcessError as e:
        raise BuildError(f"{what} failed with exit status {e.returncode} (output above)") from e


# ----------------------------------------------------------------------------- layers


def _has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_base(client: docker.DockerClient, p: Plan) -> None:
    tarball = cache_dir() / f"{p.base_tag.rsplit(':', 1)[1]}-rootfs.tar"
    if not tarball.is_file():
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


def ensure_wheels() -> Path:
    """Download the locked wheels once; a stamp per lock content makes reruns offline."""
    wheels = cache_dir() / "wheels"
    stamp = wheels / f".complete-{_digest(LOCK.read_bytes())}"
    if stamp.is_file():
        return wheels
    wheels.mkdir(parents=True, exist_ok=True)
    with step("downloading the locked wheels (torch, torchvision: PyPI's default builds)"):
        # --isolated: pip on the developers' machines is configured to prefer a CPU torch
        # that cannot load PyPI's torchvision (../shared/vendor/README.md).
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--isolated",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(wheels),
                "-r",
                str(LOCK),
            ],
            "pip download",
        )
    shutil.copyfile(LOCK, wheels / "requirements.lock")
    stamp.touch()
    return wheels


def build_deps(client: docker.DockerClient, p: Plan) -> None:
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


def build_final(client: docker.DockerClient, p: Plan) -> None:
    with step(f"docker build -> {p.final_tag}"):
        context = _final_context(p)
        repo, tag = p.final_tag.rsplit(":", 1)
        try:
            client.images.build(
                fileobj=context, custom_context=True, tag=p.final_tag, rm=True, forcerm=True
            )
        except docker.errors.BuildError as e:
            lines = "".join(str(c.get("stream", c.get("error", ""))) for c in e.build_log)
            raise BuildError(f"docker build failed: {e}\n{lines[-2000:]}") from e


def _final_context(p: Plan) -> io.BytesIO:
    """The build context as an in-memory tar: the ComfyUI tree minus .git, our node, script."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "/.git" in info.name or "__pycache__" in info.name:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode |= 0o200  # the vendored tree is read-only; ComfyUI writes into its own root
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerfile = FINAL_DOCKERFILE.format(deps=p.deps_tag, tag=p.final_tag).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(p.comfyui_src, arcname="ComfyUI", filter=clean)
        tar.add(NODE_DIR, arcname="comfyui_qwen_image", filter=clean)
        tar.add(START_SCRIPT, arcname="start.sh", filter=clean)
    buf.seek(0)
    return buf


def ensure_image(
    comfyui_src: str | None = None,
    *,
    client: docker.DockerClient | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> str:
    """Return the tag of the up-to-date test-bed image, building only the missing layers."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    client = client or docker.from_env(timeout=600)
    p = plan(resolve_comfyui_src(comfyui_src))
    if on_plan:
        on_plan(p)
    if _has_image(client, p.final_tag):
        log(f"{p.final_tag} is up to date")
        return p.final_tag
    t0 = time.monotonic()
    if not _has_image(client, p.deps_tag):
        if not _has_image(client, p.base_tag):
            build_base(client, p)
        build_deps(client, p)
    build_final(client, p)
    size = client.images.get(p.final_tag).attrs["Size"]
    log(f"{p.final_tag} built in {time.monotonic() - t0:.1f} s ({size / 1e9:.2f} GB)")
    return p.final_tag
