"""One ComfyUI (our stand-in) for the GPU proof of issue 5, shared by every test of this folder.

Our ComfyUI stand-in (testbed/comfyui) runs as a `local:` target with our Qwen-Image node
at the H100 reference size, and the tests drive it only through qpatch's own CLI, as a user would.
Why one session-wide server: starting ComfyUI and drawing 8.4 GiB of seeded weights are the
slow parts of a 9-minute call on a lent machine; `apply` and `rollback` restart the server
themselves, so each test still measures a fresh process.

    QPATCH_COMFYUI_SRC        the ComfyUI tree to copy (default: the stand-in,
                              testbed/comfyui)
    QPATCH_GPU_TESTS_ON_CPU=1 the same plumbing with `--cpu` and the tiny stand-in workflow,
                              for a machine without a GPU (the test-bed image has ComfyUI's
                              packages); only the ratio checks are left out, since RAM on a
                              CPU says nothing about VRAM
    OUT                       every JSON, table and log is also written to $OUT/gpu-tests,
                              so it comes back from the lent machine
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qpatch.comfy_api import ComfyAPI
from qpatch.health import wait_healthy
from qpatch.ledger import LEDGER_ROOT, LedgerStore
from qpatch.targets.local import LocalTarget

REPO = Path(__file__).resolve().parents[2]
NODE_PKG = "comfyui_qwen_image"
NODE_SRC = REPO / "testbed" / "custom_nodes" / NODE_PKG
LOADER = f"custom_nodes/{NODE_PKG}/qwen_image_loader.py"
START_SCRIPT = "qpatch_start.sh"
WORKFLOWS = REPO / "examples" / "workflows"

ON_CPU = os.environ.get("QPATCH_GPU_TESTS_ON_CPU") == "1"
#: What each test runs: the node with autograd on (where checkpointing saves) and off.
GPU_WORKFLOWS = {
    "grad_on": "qwen_image_h100.json",
    "inference": "qwen_image_h100_inference.json",
    "oom": "qwen_image_h200_oom.json",  # more than the device holds unless checkpointed
}
CPU_WORKFLOW = "qwen_image_standin.json"
CPU_OOM_WORKFLOW = "qwen_image_standin_oom.json"  # the node's autograd budget stands for VRAM

HEALTHY_TIMEOUT_S = 300.0  # a cold machine imports torch and CUDA from disk the first time
WEIGHTS_TIMEOUT_S = 300.0
STOP_WAIT_S = 15.0


def comfyui_source() -> Path:
    """The tree to copy: the stand-in, unless another ComfyUI tree is named."""
    given = os.environ.get("QPATCH_COMFYUI_SRC")
    return Path(given) if given else REPO / "testbed" / "comfyui"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the qpatch CLI, as a user runs it --------------------------------------------------------


@dataclass(frozen=True)
class CliRun:
    """One `python -m qpatch ... --json`: its exit status, its JSON, and the human output
    (progress lines and tables, on stderr because stdout carries the JSON)."""

    argv: list[str]
    code: int
    result: dict[str, Any]
    human: str
    seconds: float

    def explain(self) -> str:
        """For assertion messages: what the command said, so a failure reads on its own."""
        return f"qpatch {shlex.join(self.argv)} exited {self.code}:\n{self.human[-4000:]}"


def run_qpatch(args: list[str], *, timeout: float, save_as: Path) -> CliRun:
    """Run the CLI with --json; its human output is echoed line by line as it comes (the
    lent machine's log must show progress even if the call is cut short) and kept, with the
    JSON, under `save_as`.json / .txt."""
    argv = [*args, "--json"]
    print(f"\n$ qpatch {shlex.join(argv)}", flush=True)
    started = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "qpatch", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    human: list[str] = []

    def echo() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            human.append(line)
            print(f"  {line}", end="", flush=True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    killer = threading.Timer(timeout, p.kill)  # the CLI's own timeouts should come first
    killer.start()
    assert p.stdout is not None
    interrupted = False
    try:
        try:
            stdout = p.stdout.read()
        except KeyboardInterrupt:
            # The CLI got the same SIGINT (one process group) and is restoring the target:
            # let it finish, or the rollback that follows would race its undo.
            interrupted = True
            stdout = p.stdout.read()
        code = p.wait()
    finally:
        killer.cancel()
        reader.join(timeout=10)
    seconds = time.monotonic() - started
    if code == -signal.SIGKILL and seconds >= timeout:
        human.append(f"\n[killed after {timeout:.0f} s by the test's timeout]\n")
    try:
        result = json.loads(stdout)
    except ValueError:
        result = {"unparsed_stdout": stdout}
    write_text(save_as.with_suffix(".json"), json.dumps(result, indent=2, sort_keys=True) + "\n")
    write_text(save_as.with_suffix(".txt"), f"$ qpatch {shlex.join(argv)}\n{''.join(human)}")
    print(f"  -> exit {code} in {seconds:.1f} s", flush=True)
    if interrupted:
        raise KeyboardInterrupt
    return CliRun(argv, code, result, "".join(human), seconds)


# -- the bed: a private ComfyUI with our node, served ------------------------------------------


@dataclass
class ComfyBed:
    """The running ComfyUI the tests patch, and where their records go."""

    root: Path
    out: Path
    workflows: dict[str, Path]  # "grad_on" / "inference" -> API-format workflow file
    on_cpu: bool
    #: Each test's CLI results by test and step, for the test that compares across them.
    results: dict[str, dict[str, CliRun]] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"local:{self.root}"

    @property
    def tracked(self) -> list[str]:
        """The files the bundled patch rewrites, relative to the root."""
        return [LOADER, START_SCRIPT]

    def hashes(self) -> dict[str, str]:
        return {p: sha256_file(self.root / p) for p in self.tracked}

    def qpatch(self, name: str, *args: str, timeout: float) -> CliRun:
        return run_qpatch(list(args), timeout=timeout, save_as=self.out / name)

    def record(self, name: str, text: str) -> None:
        """Print a table for `pytest -s` and keep it under $OUT."""
        print(f"\n{text}", flush=True)
        write_text(self.out / f"{name}.txt", text + "\n")


def prepare_root(src: Path, dest: Path, port: int, *, cpu: bool) -> Path:
    """A private, writable copy of the tree (ComfyUI writes user/, temp/ and a database into
    it, and the source tree stays clean), our node installed, and a start script of the kind
    qpatch edits: the flags of the launch line are what the patch adds to."""
    if not (src / "main.py").is_file():
        pytest.fail(
            f"no ComfyUI tree at {src}: set QPATCH_COMFYUI_SRC to a ComfyUI root folder",
            pytrace=False,
        )
    root = dest / "ComfyUI"
    ignore = shutil.ignore_patterns("__pycache__", ".git")
    shutil.copytree(src, root, ignore=ignore, symlinks=True)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o200)
    shutil.copytree(NODE_SRC, root / "custom_nodes" / NODE_PKG, ignore=ignore, dirs_exist_ok=True)
    flags = ["--listen", "127.0.0.1", "--port", str(port)] + (["--cpu"] if cpu else [])
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        # ComfyUI refuses to start without its frontend unless given a folder to serve.
        front = dest / "frontend"
        write_text(front / "index.html", "<!doctype html><title>qpatch GPU proof</title>\n")
        flags += ["--front-end-root", str(front)]
    write_text(
        root / START_SCRIPT,
        "#!/usr/bin/env bash\n"
        "# Written by tests/gpu/conftest.py: the one-click start script qpatch patches.\n"
        'cd "$(dirname "$0")"\n'
        f"exec {shlex.quote(sys.executable)} main.py {shlex.join(flags)}\n",
    )
    (root / START_SCRIPT).chmod(0o755)
    return root


#: Runs in a child process, so no CUDA context of the test process outlives it.
_CREATE_WEIGHTS = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from comfyui_qwen_image.qwen_image_loader import DTYPES, WEIGHT_SEED, model_path_for
from comfyui_qwen_image.qwen_image_model import QwenImageConfig, QwenImageModel
base, device = sys.argv[2], torch.device(sys.argv[4])
for i in json.loads(sys.argv[3]):
    path = model_path_for(f"{base}/{i['model_name']}", i["blocks"], i["width"], i["heads"],
                          i["dtype"])
    if not (path / "config.json").is_file():
        config = QwenImageConfig(blocks=i["blocks"], width=i["width"], heads=i["heads"])
        QwenImageModel.create_seeded(path, config, WEIGHT_SEED, DTYPES[i["dtype"]], device)
    print(path, flush=True)
"""


def precreate_weights(root: Path, workflows: list[Path], device: str) -> None:
    """Write the seeded weights where the node looks for them, drawn on the GPU: otherwise
    the first measured run would include drawing and saving 8.4 GiB (the node creates the
    same bits itself, from the same seed, when they are missing)."""
    inputs = [
        node["inputs"]
        for wf in workflows
        for node in json.loads(wf.read_text()).values()
        if node.get("class_type") == "QwenImageLoader"
    ]
    started = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", _CREATE_WEIGHTS, str(root / "custom_nodes")]
        + [str(root / "models" / "qwen_image"), json.dumps(inputs), device],
        capture_output=True,
        text=True,
        timeout=WEIGHTS_TIMEOUT_S,
    )
    if p.returncode != 0:
        raise RuntimeError(f"creating the seeded weights failed:\n{p.stderr[-3000:]}")
    paths = sorted(set(p.stdout.split()))
    print(f"weights ready in {time.monotonic() - started:.1f} s: {', '.join(paths)}", flush=True)


def cpu_workflows(folder: Path) -> dict[str, Path]:
    """The tiny stand-in with autograd on, and a copy with it off: the same pair as on the
    GPU, small enough for `--cpu`."""
    grad_on = WORKFLOWS / CPU_WORKFLOW
    inference = json.loads(grad_on.read_text())
    for node in inference.values():
        if node.get("class_type") == "QwenImageLoader":
            node["inputs"]["autograd"] = False
    path = folder / "qwen_image_standin_inference.json"
    write_text(path, json.dumps(inference, indent=2) + "\n")
    return {"grad_on": grad_on, "inference": path, "oom": WORKFLOWS / CPU_OOM_WORKFLOW}


#: Step counts of the chained-loop proof (issue 10): real samplers run 20 to 50 steps.
CHAINED_STEPS = (20, 50)


def chained_workflows(folder: Path, base: Path) -> dict[str, Path]:
    """`base` as a chained sampling loop (`latents = latents - k * noise_pred`, no detach) at
    each of CHAINED_STEPS: autograd on (what the patch is for) and off (its floor)."""
    found: dict[str, Path] = {}
    for steps in CHAINED_STEPS:
        for kind, autograd in (("chained", True), ("chained_floor", False)):
            workflow = json.loads(base.read_text())
            for node in workflow.values():
                if node.get("class_type") == "QwenImageLoader":
                    node["inputs"].update(steps=steps, autograd=autograd, chained=True)
            path = folder / f"qwen_image_{kind}_{steps}.json"
            write_text(path, json.dumps(workflow, indent=2) + "\n")
            found[f"{kind}_{steps}"] = path
    return found


def free_port() -> int:
    """Not 8188: a ComfyUI of the machine's own may hold that one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(target: LocalTarget, port: int) -> None:
    """Through LocalTarget.start(), as qpatch would, then the same health gate it uses."""
    started = time.monotonic()
    target.start()
    try:
        stats = wait_healthy(ComfyAPI(target, sys.executable, port), timeout=HEALTHY_TIMEOUT_S)
    except Exception:
        print(f"ComfyUI did not become healthy; its log ends:\n{target.logs(80)}", flush=True)
        raise
    dev = (stats.get("devices") or [{}])[0]
    print(
        f"ComfyUI {stats['system'].get('comfyui_version')} healthy in "
        f"{time.monotonic() - started:.1f} s on {dev.get('name')} ({dev.get('type')})",
        flush=True,
    )


def stop_server(target: LocalTarget) -> None:
    """Stop whichever server of this root runs now: after qpatch's restarts it is no longer
    the process this fixture launched, so it is found by its root, and stopped by pid."""
    pids = [p.pid for p in target.server_processes()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and target.server_processes():
            time.sleep(0.2)
        if not target.server_processes():
            return


def keep_records(target: LocalTarget, root: Path, out: Path) -> None:
    """The server's log and the ledger (both measurements) go to $OUT; a ledger qpatch put
    in /var/lib/qpatch for this throwaway root is removed."""
    with contextlib.suppress(OSError):
        shutil.copy(target.log_path, out / "server.log")
    store = LedgerStore.locate(target, str(root))
    with contextlib.suppress(OSError):
        shutil.copy(Path(store.folder) / "ledger.json", out / "ledger.json")
    if store.folder.startswith(LEDGER_ROOT + "/"):
        shutil.rmtree(store.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyBed]:
    """ComfyUI running on CUDA (or `--cpu` under QPATCH_GPU_TESTS_ON_CPU=1) with our node,
    the weights on disk, and qpatch's host state in a temporary XDG_STATE_HOME."""
    tmp = tmp_path_factory.mktemp("comfybed")
    out = Path(os.environ["OUT"]) / "gpu-tests" if os.environ.get("OUT") else tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    workflows = (
        cpu_workflows(tmp)
        if ON_CPU
        else {name: WORKFLOWS / file for name, file in GPU_WORKFLOWS.items()}
    )
    workflows.update(chained_workflows(tmp, workflows["grad_on"]))
    port = free_port()
    root = prepare_root(comfyui_source(), tmp, port, cpu=ON_CPU)
    precreate_weights(root, list(workflows.values()), "cpu" if ON_CPU else "cuda")

    saved_state = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")  # the CLI runs inherit it
    target = LocalTarget(str(root), start_script=START_SCRIPT, port=port)
    try:
        start_server(target, port)
        yield ComfyBed(root, out, workflows, ON_CPU)
    finally:
        stop_server(target)
        keep_records(target, root, out)
        if saved_state is None:
            os.environ.pop("XDG_STATE_HOME", None)
        else:
            os.environ["XDG_STATE_HOME"] = saved_state
