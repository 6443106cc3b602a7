"""The one small interface every place ComfyUI can live in implements (docs/design.md
"Targets"), so the engine never knows whether it talks to Docker or this host."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from qpatch.errors import QpatchError
from qpatch.targets.procs import Proc

if TYPE_CHECKING:
    from qpatch.probe import Probe, Questions
    from qpatch.targets.docker import DockerTarget


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def check(self, what: str) -> ExecResult:
        """Raise with the command's own words when it failed: the user needs them."""
        if self.exit_code != 0:
            err = (self.stderr or self.stdout).decode("utf-8", errors="replace").strip()
            raise QpatchError(f"{what} failed (exit status {self.exit_code}): {err[-800:]}")
        return self


@dataclass(frozen=True)
class TargetState:
    running: bool
    restarts: int  # how often the runtime restarted it: a climbing count is a restart loop
    detail: str  # for people: "running", "exited (exit code 2)"


@dataclass(frozen=True)
class FileStat:
    mode: int  # permission bits only (0o777 plus setuid/setgid/sticky)
    uid: int
    gid: int
    size: int


@dataclass(frozen=True)
class ContainerConfig:
    """What a container runtime starts and with which environment (Docker's Config):
    a container launched straight from its command carries ComfyUI's flags here."""

    entrypoint: list[str] | None
    cmd: list[str] | None
    env: list[str] = field(default_factory=list)  # "NAME=value", as the runtime keeps them

    @property
    def command(self) -> list[str]:
        return [*(self.entrypoint or []), *(self.cmd or [])]


class Target(Protocol):
    """A ComfyUI installation qpatch can read, write, run commands in and restart."""

    #: for people: "container qpatch-demo (3f2a…)", "local:/srv/ComfyUI"
    description: str
    #: stable and path-safe: names the ledger folder in the target
    key: str
    #: stable and path-safe: names the host mirror (a container's also names its engine,
    #: so two engines' `comfyui` never share one)
    mirror_key: str
    #: the --host it was reached through, for later commands; None: the default engine
    host: str | None
    #: this very instance (a container's ID: one recreated under the name has another);
    #: None where a target has no identity apart from its ref
    instance: str | None
    #: how `qpatch verify` etc. find it again: the container name, or "local:PATH"
    ref: str
    #: the ComfyUI root the reference itself names (local:PATH), else None: discovered
    root: str | None
    #: the script that launches ComfyUI, once known; a local target restarts through it
    start_script: str | None
    #: folders besides the ComfyUI root where one-click images keep their start scripts
    script_folders: tuple[str, ...]

    def container_config(self) -> ContainerConfig | None:
        """The runtime's command and environment; None where no runtime keeps one."""

    def probe(self, questions: Questions) -> Probe | None:
        """Discovery's questions answered in one round trip (qpatch.probe), where the target
        can; None: discovery asks each question itself."""

    def labels(self) -> Mapping[str, str]:
        """The runtime's labels on it (a container's, its image's included); empty where
        there is no runtime. A baked image names its patch here (qpatch.baked)."""

    def as_container(self) -> DockerTarget | None:
        """The Docker container behind this target, for the applier that swaps it; None
        where there is none."""

    def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult: ...

    def read_file(self, path: str) -> tuple[bytes, FileStat]: ...

    def write_file(self, path: str, data: bytes, stat: FileStat) -> None:
        """Atomic: a temp file in the same folder, then a rename."""

    def exists(self, path: str) -> bool: ...

    def state(self) -> TargetState: ...

    def server_processes(self) -> list[Proc]:
        """The python processes running ComfyUI's main.py, as seen inside the target."""

    def configured_command(self) -> list[str] | None:
        """What the runtime starts (a container's Entrypoint + Cmd); None where none is kept."""

    def restart(self) -> None:
        """Stop ComfyUI and start it again; return once the start has been issued."""

    def start(self) -> None:
        """Start ComfyUI where nothing runs (a stopped container, a dead server)."""

    def host_pids(self) -> list[int]:
        """PIDs of the target's processes as this host sees them (for NVML)."""

    def logs(self, tail: int = 20) -> str: ...
