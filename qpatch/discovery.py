"""Where ComfyUI lives inside a target, what starts it, and which python runs it.

Asked of the target itself (the running server's /proc entry, the container's Cmd, the
scripts lying where one-click images keep them) rather than assumed, because images
differ; ambiguity is an error that lists the candidates and the option that settles it.

A target that can answer many questions in one round trip (a running container, see
qpatch/probe.py) is probed once first; whatever the probe leaves open is asked call by call,
as on every other target, so the decisions are the same either way."""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from qpatch.errors import BadInput, QpatchError
from qpatch.ledger import LEDGER_ROOT
from qpatch.main_py import MAIN_PY, is_main_py
from qpatch.probe import Probe, Questions
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
    #: what the probe found of the ledger's candidate folders (qpatch.ledger): folder ->
    #: whether it can be written; a folder not in it was not asked
    writable: Mapping[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> str:
        script = self.start_script or "none (launched by the container's command)"
        return f"ComfyUI root {self.root}, start script {script}, python {self.python}"


def discover(target: Target, *, root: str | None = None, start_script: str | None = None) -> Layout:
    given_root = root or target.root  # local:PATH names it
    ask = _Asker(target, _probe(target, given_root, start_script))
    servers = ask.servers()
    server = servers[0] if servers else None
    root = _root(target, given_root, server)
    if server is None and not ask.can_exec():  # stopped: the root is enough for the ledger
        return Layout(root, start_script, "python3", None, _port(None))
    script = _start_script(ask, start_script, root)
    writable = ask.probe.writable if ask.probe else {}
    return Layout(root, script, _python(ask, server), server, _port(server), writable)


def _probe(target: Target, root: str | None, start_script: str | None) -> Probe | None:
    """One probe for the questions below, where the target takes one: the scripts in the
    container's command, the `*.sh` in the script folders and each possible root, and the
    ledger's candidate folders (LedgerStore.locate's, for each possible root)."""
    roots = [root] if root else list(ROOT_CANDIDATES)
    ledgers = [posixpath.join(LEDGER_ROOT, target.key)]
    ledgers += [posixpath.join(r, ".qpatch", target.key) for r in roots]
    if start_script:  # given: nothing to find or read
        return target.probe(Questions(ledgers=ledgers))
    scripts = [a for a in target.configured_command() or [] if a.endswith(".sh")]
    return target.probe(Questions(scripts, [*target.script_folders, *roots], ledgers))


class _Asker:
    """The questions discovery asks the target: answered from the probe where it has the
    answer, else by asking the target itself, exactly as without a probe."""

    def __init__(self, target: Target, probe: Probe | None) -> None:
        self.target = target
        self.probe = probe
        self.description = target.description

    def servers(self) -> list[Proc]:
        return self.probe.servers if self.probe else self.target.server_processes()

    def can_exec(self) -> bool:
        if self.probe is not None:  # it ran
            return True
        try:
            return self.target.exec(["true"]).exit_code == 0
        except QpatchError:
            return False

    def exists(self, path: str) -> bool:
        return self.target.exists(path)

    def launches_main(self, path: str) -> bool:
        data = self.probe.script(path) if self.probe else None
        if data is None:
            try:
                data, _ = self.target.read_file(path)
            except BadInput:
                return False
        return bool(find_launches(data))

    def start_scripts(self, folders: list[str]) -> list[str]:
        """The `*.sh` files at depth 1 in `folders`."""
        listing = self.probe.listing(folders) if self.probe else None
        if listing is None:
            argv = ["find", *folders, "-maxdepth", "1", "-name", "*.sh", "-type", "f"]
            listing = self.target.exec(argv).text
        return sorted({p for p in listing.splitlines() if p})

    def runs(self, python: str, server: Proc | None) -> bool:
        known = self.probe.runs(python, server) if self.probe else None
        if known is not None:
            return known
        return self.target.exec([python, "-c", "pass"]).exit_code == 0


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


def _start_script(ask: _Asker, given: str | None, root: str) -> str | None:
    if given:
        path = posixpath.normpath(posixpath.join(root, given))  # relative: from the root
        if not ask.exists(path):
            raise BadInput(
                f"--start-script {given}: no such file in {ask.description}"
                + ("" if path == given else f" (read as {path}, from the ComfyUI root)")
            )
        return path
    command = ask.target.configured_command() or []
    from_cmd = [a for a in command if a.endswith(".sh") and ask.launches_main(a)]
    if from_cmd:
        return from_cmd[0]
    if any(is_main_py(a) for a in _words(command)):
        return None  # `python main.py ...` straight from the image's command
    found = [
        s for s in ask.start_scripts([*ask.target.script_folders, root]) if ask.launches_main(s)
    ]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise BadInput(
            f"several start scripts launch ComfyUI in {ask.description}: {', '.join(found)}",
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


def _python(ask: _Asker, server: Proc | None) -> str:
    """The server's own interpreter as it was started (a venv's python keeps the venv's
    packages; /proc's exe would name the base interpreter); else any python there."""
    candidates: list[str] = []
    if server:
        first = server.argv[0]
        if first.startswith("/"):
            candidates.append(first)
        elif "/" in first:
            candidates.append(posixpath.normpath(posixpath.join(server.cwd, first)))
        else:  # `python main.py` after `source venv/bin/activate`: as its own PATH finds it
            found = (
                ask.probe.on_path.get(server.pid)
                if ask.probe is not None
                else _on_server_path(ask.target, server)
            )
            if found:
                return found
        candidates.append(server.exe)
        if len(candidates) == 1:
            return server.exe  # the interpreter running right now: no need to try it
    candidates += ["python3", "python"]
    for c in candidates:
        if ask.runs(c, server):
            return c
    raise BadInput(f"no python found in {ask.description} (tried {', '.join(candidates)})")


#: Constant; the pid and the command arrive as argv. What `command -v` finds for the
#: server's argv[0] on the PATH the server itself was started with.
_WHICH_ON_SERVER_PATH = [
    "sh",
    "-c",
    'p=$(tr "\\000" "\\n" < "/proc/$1/environ" | sed -n "s/^PATH=//p"); '
    '[ -n "$p" ] && PATH=$p && command -v -- "$2"',
    "sh",
]


def _on_server_path(target: Target, server: Proc) -> str | None:
    """The interpreter a bare `python` named for the running server: the venv's
    bin/python that activate put first on its PATH, not /proc's exe (the venv's base)."""
    r = target.exec([*_WHICH_ON_SERVER_PATH, str(server.pid), server.argv[0]])
    found = r.text.strip()
    return found if r.exit_code == 0 and found.startswith("/") else None


def _port(server: Proc | None) -> int:
    flags = server.flags if server else []
    for i, f in enumerate(flags):
        if f == "--port" and i + 1 < len(flags) and flags[i + 1].isdigit():
            return int(flags[i + 1])
        if f.startswith("--port=") and f[7:].isdigit():
            return int(f[7:])
    return 8188
