"""Where ComfyUI lives inside a target, what starts it, and which python runs it.

Asked of the target itself (the running server's /proc entry, the container's Cmd, the
scripts lying where one-click images keep them) rather than assumed, because images
differ; ambiguity is an error that lists the candidates and the option that settles it."""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from qpatch.errors import BadInput, QpatchError
from qpatch.main_py import MAIN_PY, is_main_py
from qpatch.startup import find_launches
from qpatch.targets.base import Target
from qpatch.targets.procs import Proc

ROOT_CANDIDATES = (
    "/root/ComfyUI",
    "/ComfyUI",
    "/app",
    "/workspace/ComfyUI",
    "/opt/ComfyUI",
    "/comfyui",
)


@dataclass(frozen=True)
class Layout:
    root: str
    start_script: str | None
    python: str  # an interpreter inside the target that can run ComfyUI's main.py --help
    server: Proc | None  # the running server, when there is one
    port: int

    def describe(self) -> str:
        script = self.start_script or "none (launched by the container's command)"
        return f"ComfyUI root {self.root}, start script {script}, python {self.python}"


def discover(target: Target, *, root: str | None = None, start_script: str | None = None) -> Layout:
    servers = target.server_processes()
    server = servers[0] if servers else None
    root = _root(target, root or target.root, server)  # local:PATH names it
    if server is None and not _can_exec(target):  # stopped: the root is enough for the ledger
        return Layout(root, start_script, "python3", None, _port(None))
    script = _start_script(target, start_script, root)
    return Layout(root, script, _python(target, server), server, _port(server))


def _can_exec(target: Target) -> bool:
    try:
        return target.exec(["true"]).exit_code == 0
    except QpatchError:
        return False


def _has_main(target: Target, folder: str) -> bool:
    return target.exists(posixpath.join(folder, MAIN_PY))


def _root(target: Target, given: str | None, server: Proc | None) -> str:
    if given:
        if not _has_main(target, given):
            raise BadInput(f"--comfyui-root {given}: no main.py there in {target.description}")
        return given
    if server:
        main = next(a for a in server.argv[1:] if is_main_py(a))
        folder = posixpath.dirname(posixpath.join(server.cwd, main))
        if _has_main(target, folder):
            return posixpath.normpath(folder)
    found = [c for c in ROOT_CANDIDATES if _has_main(target, c)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise BadInput(
            f"no ComfyUI found in {target.description} (looked at the running server and "
            f"{', '.join(ROOT_CANDIDATES)})",
            hint="pass --comfyui-root PATH",
        )
    raise BadInput(
        f"several ComfyUI folders in {target.description}: {', '.join(found)}",
        hint="choose one with --comfyui-root",
    )


def _launches_main(target: Target, path: str) -> bool:
    try:
        data, _ = target.read_file(path)
    except BadInput:
        return False
    return bool(find_launches(data))


def _start_script(target: Target, given: str | None, root: str) -> str | None:
    if given:
        if not target.exists(given):
            raise BadInput(f"--start-script {given}: no such file in {target.description}")
        return given
    command = target.configured_command() or []
    from_cmd = [a for a in command if a.endswith(".sh") and _launches_main(target, a)]
    if from_cmd:
        return from_cmd[0]
    if any(is_main_py(a) for a in _words(command)):
        return None  # `python main.py ...` straight from the image's command
    folders = [*target.script_folders, root]
    listing = target.exec(["find", *folders, "-maxdepth", "1", "-name", "*.sh", "-type", "f"])
    scripts = sorted({p for p in listing.text.splitlines() if p})
    found = [s for s in scripts if _launches_main(target, s)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise BadInput(
            f"several start scripts launch ComfyUI in {target.description}: {', '.join(found)}",
            hint="choose one with --start-script",
        )
    return None


def _words(command: list[str]) -> list[str]:
    """The container command's words, with an `sh -c "..."` string split as the shell would."""
    words: list[str] = []
    for a in command:
        try:
            words.extend(shlex.split(a))
        except ValueError:
            words.append(a)
    return words


def _python(target: Target, server: Proc | None) -> str:
    """The server's own interpreter as it was started (a venv's python keeps the venv's
    packages; /proc's exe would name the base interpreter); else any python there."""
    candidates: list[str] = []
    if server:
        first = server.argv[0]
        if first.startswith("/"):
            candidates.append(first)
        elif "/" in first:
            candidates.append(posixpath.normpath(posixpath.join(server.cwd, first)))
        candidates.append(server.exe)
        if len(candidates) == 1:
            return server.exe  # the interpreter running right now: no need to try it
    candidates += ["python3", "python"]
    for c in candidates:
        if target.exec([c, "-c", "pass"]).exit_code == 0:
            return c
    raise BadInput(f"no python found in {target.description} (tried {', '.join(candidates)})")


def _port(server: Proc | None) -> int:
    flags = server.flags if server else []
    for i, f in enumerate(flags):
        if f == "--port" and i + 1 < len(flags) and flags[i + 1].isdigit():
            return int(flags[i + 1])
        if f.startswith("--port=") and f[7:].isdigit():
            return int(f[7:])
    return 8188
