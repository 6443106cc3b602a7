"""Where ComfyUI lives: `local:PATH` on this host, else a Docker container."""

from __future__ import annotations

from qpatch.targets.base import Target

LOCAL_PREFIX = "local:"


def open_target(
    ref: str,
    *,
    require_running: bool = True,
    start_script: str | None = None,
    restart_cmd: list[str] | None = None,
) -> Target:
    if ref.startswith(LOCAL_PREFIX):
        from qpatch.targets.local import LocalTarget

        return LocalTarget(
            ref[len(LOCAL_PREFIX) :], start_script=start_script, restart_cmd=restart_cmd
        )
    from qpatch.targets.docker import DockerTarget

    return DockerTarget(ref, require_running=require_running)
