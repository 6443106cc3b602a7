"""The README's main job on the built-in target: the test-bed ComfyUI in a container named
qpatch-demo, patched, verified and rolled back with the same output a user sees."""

from __future__ import annotations

import subprocess

from qpatch import testbed
from qpatch.comfy_api import ComfyAPI
from qpatch.commands.apply import apply
from qpatch.commands.rollback import rollback
from qpatch.commands.verify import verify
from qpatch.errors import QpatchError
from qpatch.health import wait_healthy
from qpatch.output import Console
from qpatch.result import Result
from qpatch.targets.docker import DockerTarget, connect

NAME = "qpatch-demo"
WORKFLOW = str(testbed.REPO / "examples" / "workflows" / "qwen_image_standin.json")


def demo(out: Console, result: Result, *, keep: bool) -> int:
    out.step("ensuring a Docker engine (scripts/ensure-docker)")
    if subprocess.run([str(testbed.REPO / "scripts" / "ensure-docker")]).returncode != 0:
        raise QpatchError("no Docker engine: see the messages of scripts/ensure-docker above")
    client = connect()
    out.step("ensuring the test-bed image (our ComfyUI stand-in; about 2 minutes the first time)")
    image = testbed.ensure_image(client=client)
    testbed.remove_demo(client, NAME)
    out.step(f"starting container {NAME} from {image}")
    testbed.start_demo(client, image, NAME)
    try:
        show = out.progress("waiting for ComfyUI to start")
        wait_healthy(ComfyAPI(DockerTarget(NAME), "python3"), timeout=180, progress=show)
        out.end_progress()
        steps = [
            (
                "apply",
                lambda r: apply(
                    out,
                    r,
                    target=NAME,
                    patch="qwen-image-2512",
                    dry_run=False,
                    no_restart=False,
                    recreate=False,
                    timeout=180,
                    comfyui_root=None,
                    start_script=None,
                    restart_cmd=None,
                    measure=WORKFLOW,
                ),
            ),
            ("verify", lambda r: verify(out, r, target=NAME, workflow=WORKFLOW)),
            (
                "rollback",
                lambda r: rollback(
                    out,
                    r,
                    target=NAME,
                    no_restart=False,
                    force=False,
                    timeout=180,
                    restart_cmd=None,
                ),
            ),
        ]
        for name, run in steps:
            out.line(f"\n$ qpatch {name} {NAME}", bold=True)
            code = run(result.step(name))
            if code != 0:
                return code
        result.status = "ok"
        out.ok("demo done: applied, verified and rolled back byte-exact")
        return 0
    finally:
        if not keep:
            testbed.remove_demo(client, NAME)
        else:
            out.line(f"kept container {NAME} (--keep)")
