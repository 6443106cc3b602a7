"""Where ComfyUI lives: `local:PATH` on this host, else a Docker container."""

from __future__ import annotations

from qpatch.errors import BadInput
from qpatch.targets.base import Target

LOCAL_PREFIX = "local:"


def open_target(
    ref: str,
    *,
    require_running: bool = True,
    start_script: str | None = None,
    restart_cmd: list[str] | None = None,
    host: str | None = None,
) -> Target:
    """`host`: the --host the container is looked up on (a local: ref takes none)."""
    if ref.startswith(LOCAL_PREFIX):
        if host is not None:
            raise BadInput(f"{ref} is a folder on this host: --host {host} does not apply")
        from qpatch.targets.local import LocalTarget

        return LocalTarget(
            ref[len(LOCAL_PREFIX) :], start_script=start_script, restart_cmd=restart_cmd
        )
    from qpatch.targets.docker import DockerTarget
    from qpatch.targets.engines import Engine

    return DockerTarget(ref, require_running=require_running, engine=Engine(host))
