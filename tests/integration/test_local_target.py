"""LocalTarget against real files and real processes: a tiny HTTP server stands in for
ComfyUI's main.py (ComfyUI itself runs in the Docker and GPU tests), started, stopped and
restarted the ways an operator's host does it."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qpatch.comfy_api import ComfyAPI
from qpatch.errors import BadInput, QpatchError
from qpatch.health import wait_healthy
from qpatch.targets.base import FileStat
from qpatch.targets.local import LocalTarget, _alive, _wait_until

MAIN_PY = r"""
import argparse, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--listen", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
args = parser.parse_args()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/system_stats":
            self.send_error(404)
            return
        body = json.dumps({"system": {"argv": sys.argv, "pid": os.getpid()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


server = HTTPServer((args.listen, args.port), Handler)
print(f"serving pid {os.getpid()} port {args.port}", flush=True)
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def root(tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # server.log lands here
    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "main.py").write_text(MAIN_PY)
    launch = f"{shlex.quote(sys.executable)} main.py --listen 127.0.0.1 --port {port}"
    (root / "start.sh").write_text(f"#!/bin/bash\n{launch}\n")
    return root


def kill_all(target: LocalTarget) -> None:
    """Every process group the target's servers and launchers live in; never our own."""
    pids = set(target.host_pids()) | {p.pid for p in target.server_processes()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            pgid = os.getpgid(pid)
            if pgid != os.getpgrp():
                os.killpg(pgid, signal.SIGKILL)
    assert wait_for(lambda: not target.state().running, 5), target.state()


wait_for = _wait_until


MakeTarget = Callable[..., LocalTarget]


@pytest.fixture
def make_target(root: Path, port: int) -> Iterator[MakeTarget]:
    """Targets over the temp ComfyUI; whatever any of them started is killed afterwards."""
    made: list[LocalTarget] = []

    def make(**kwargs: object) -> LocalTarget:
        kwargs.setdefault("port", port)
        t = LocalTarget(str(root), **kwargs)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield make
    for t in made:
        kill_all(t)


@pytest.fixture
def target(make_target: MakeTarget, root: Path) -> LocalTarget:
    return make_target(start_script=str(root / "start.sh"))


def serve(target: LocalTarget) -> int:
    """Start (if needed) and wait until it answers; the serving PID, as the server says."""
    target.start()
    stats = wait_healthy(ComfyAPI(target, sys.executable, port=target.port), timeout=10)
    return int(stats["system"]["pid"])


def temp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".qpatch-")]


# ---------------------------------------------------------------------- identity


def test_identity_and_bad_roots(root: Path, tmp_path: Path) -> None:
    t = LocalTarget(str(root))
    assert t.ref == t.description == f"local:{root}"
    assert t.key.startswith("local-") and len(t.key) == len("local-") + 16
    assert LocalTarget(str(root) + "/").key == t.key
    with pytest.raises(BadInput, match="no such folder"):
        LocalTarget(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no main.py"):
        LocalTarget(str(tmp_path / "empty"))
    assert t.configured_command() is None
    script = str(root / "start.sh")
    assert LocalTarget(str(root), start_script="start.sh").configured_command() == ["bash", script]
    with pytest.raises(BadInput, match="missing.sh"):
        LocalTarget(str(root), start_script="missing.sh")


# ---------------------------------------------------------------------- files


def test_write_read_round_trip_keeps_bytes_mode_and_owner(root: Path) -> None:
    t = LocalTarget(str(root))
    path = root / "custom_nodes" / "node.py"
    path.parent.mkdir()
    owner = (1234, 2345) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    data = b"# \xe4\xbd\xa0\xe5\xa5\xbd\r\nx = 1\r\n\x00tail"
    t.write_file(str(path), data, FileStat(0o754, *owner, len(data)))
    got, stat = t.read_file(str(path))
    assert got == data
    assert stat == FileStat(0o754, *owner, len(data))

    inode = path.stat().st_ino
    t.write_file("custom_nodes/node.py", b"patched\n", stat)  # relative: to the root
    assert path.read_bytes() == b"patched\n"
    after = path.stat()
    assert after.st_ino != inode  # a new file renamed into place, not rewritten in place
    assert (after.st_mode & 0o7777, after.st_uid, after.st_gid) == (0o754, *owner)
    assert temp_leftovers(path.parent) == []
    assert t.exists("custom_nodes/node.py") and not t.exists("custom_nodes/other.py")


def test_write_through_a_symlink_keeps_the_link(root: Path, tmp_path: Path) -> None:
    t = LocalTarget(str(root))
    real = tmp_path / "elsewhere.py"
    real.write_bytes(b"old\n")
    (root / "linked.py").symlink_to(real)
    _, stat = t.read_file("linked.py")
    t.write_file("linked.py", b"new\n", stat)
    assert (root / "linked.py").is_symlink()
    assert real.read_bytes() == b"new\n"


def test_read_missing_file_names_it(root: Path) -> None:
    with pytest.raises(BadInput, match="nodes/absent.py"):
        LocalTarget(str(root)).read_file("nodes/absent.py")


@pytest.fixture
def read_only_dir(root: Path) -> Iterator[Path]:
    """A folder nobody can create files in: mode 0555, and immutable for root, whom mode
    bits do not stop."""
    folder = root / "locked"
    folder.mkdir()
    (folder / "node.py").write_bytes(b"original\n")
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(folder)], check=False).returncode:
        folder.chmod(0o755)
        pytest.skip("running as root and this file system has no immutable folders")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_write_into_read_only_folder_fails_and_keeps_the_original(
    root: Path, read_only_dir: Path
) -> None:
    t = LocalTarget(str(root))
    path = read_only_dir / "node.py"
    _, stat = t.read_file(str(path))
    with pytest.raises(QpatchError, match="locked"):
        t.write_file(str(path), b"patched\n", stat)
    assert path.read_bytes() == b"original\n"
    assert temp_leftovers(read_only_dir) == []


def test_write_failing_after_the_temp_file_leaves_nothing_behind(root: Path) -> None:
    """The rename fails (the path is a folder) after the temp file was written and chmodded."""
    t = LocalTarget(str(root))
    (root / "models").mkdir()
    (root / "models" / "keep.txt").write_bytes(b"keep")
    with pytest.raises(QpatchError, match="models"):
        t.write_file(str(root / "models"), b"data", FileStat(0o644, os.getuid(), os.getgid(), 4))
    assert (root / "models" / "keep.txt").read_bytes() == b"keep"
    assert temp_leftovers(root) == []


# ---------------------------------------------------------------------- exec


def test_exec_exit_codes_output_cwd_env(root: Path, tmp_path: Path, monkeypatch) -> None:
    t = LocalTarget(str(root))
    r = t.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.exit_code, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    assert t.exec(["pwd"]).text.strip() == str(root)  # default: the ComfyUI root
    assert t.exec(["pwd"], cwd=str(tmp_path)).text.strip() == str(tmp_path)
    monkeypatch.setenv("QPATCH_FROM_HOST", "kept")
    env = t.exec(["sh", "-c", 'echo "$QPATCH_FROM_HOST $QPATCH_X"'], env={"QPATCH_X": "a b"})
    assert env.text == "kept a b\n"  # merged over this process's environment
    assert t.exec(["echo", "$HOME", "a;b"]).text == "$HOME a;b\n"  # no shell in between
    missing = t.exec(["/no/such/program"])
    assert missing.exit_code == 127 and b"/no/such/program" in missing.stderr


def test_exec_timeout_kills_the_whole_command_and_says_124(root: Path) -> None:
    t = LocalTarget(str(root))
    t0 = time.monotonic()
    # sh forks sleep (not exec: more follows), and the sleep holds the output pipe: only
    # killing the whole group returns before the sleep ends
    r = t.exec(["sh", "-c", "echo started; sleep 30; echo never"], timeout=0.5)
    assert r.exit_code == 124
    assert r.stdout == b"started\n"
    assert time.monotonic() - t0 < 4
    assert t.exec(["true"], timeout=5).exit_code == 0


# ---------------------------------------------------------------------- processes


def test_restart_with_start_script_brings_a_new_server(target: LocalTarget) -> None:
    pid = serve(target)
    assert target.state().running
    assert pid in target.host_pids()
    target.start()  # already running: nothing happens
    assert serve(target) == pid

    target.restart()
    new_pid = serve(target)
    assert new_pid != pid
    # the old one was stopped, not left behind: gone, or a zombie waiting for init to reap it
    assert not _alive(pid)
    pids = target.host_pids()
    assert new_pid in pids
    assert target._launcher is not None and target._launcher.pid in pids  # bash start.sh
    log = target.logs(50)
    assert f"serving pid {new_pid} port {target.port}" in log
    assert log.count("--- qpatch ") == 2  # one marker per start
    assert target.logs(1).count("\n") == 1


def test_restart_reruns_the_servers_own_command_without_start_script(
    make_target: MakeTarget, root: Path, port: int
) -> None:
    """Started by hand (not by us), it is found by its cwd and started again as it was."""
    argv = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port)]
    by_hand = subprocess.Popen(
        argv, cwd=root, env={**os.environ, "QPATCH_MARK": "1"}, start_new_session=True
    )
    try:
        t = make_target()
        # right after exec the kernel may show an empty cmdline for a moment
        assert wait_for(lambda: bool(t.server_processes()), 5)
        pid = serve(t)
        assert pid == by_hand.pid
        t.restart()
        new_pid = serve(t)
        assert new_pid != pid
        assert by_hand.wait(timeout=5) == -signal.SIGTERM
        proc_argv = Path(f"/proc/{new_pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [a.decode() for a in proc_argv] == argv  # argv[0] too: it may be a venv's
        assert b"QPATCH_MARK=1" in Path(f"/proc/{new_pid}/environ").read_bytes()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(by_hand.pid, signal.SIGKILL)
        by_hand.wait()


def test_restart_with_restart_cmd(make_target: MakeTarget, root: Path, port: int) -> None:
    (root / "restart.sh").write_text(
        "#!/bin/bash\n"  # what an operator's own script does: stop by pid file, start again
        '[ -f server.pid ] && kill "$(cat server.pid)" && sleep 0.3\n'
        f"setsid {shlex.quote(sys.executable)} main.py --listen 127.0.0.1 --port {port} &\n"
        "echo $! > server.pid\n"
    )
    t = make_target(restart_cmd=["bash", "restart.sh"])
    t.start()  # nothing runs: the restart command starts it
    pid = serve(t)
    t.restart()
    new_pid = serve(t)
    assert new_pid != pid
    assert new_pid in t.host_pids()
    assert f"serving pid {new_pid}" in t.logs()  # the command's output goes to the log


def test_restart_cmd_failure_is_reported(make_target: MakeTarget) -> None:
    t = make_target(restart_cmd=["sh", "-c", "echo unit comfyui not found; exit 5"])
    with pytest.raises(QpatchError, match="exit status 5.*unit comfyui not found"):
        t.restart()


def test_no_server_and_no_way_to_start_says_what_to_pass(make_target: MakeTarget) -> None:
    t = make_target()
    assert t.state().running is False
    with pytest.raises(QpatchError) as e:
        t.restart()
    assert "--restart-cmd" in str(e.value) and "--start-script" in str(e.value)


def test_state_reports_a_killed_server(target: LocalTarget) -> None:
    pid = serve(target)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not target.state().running, 5)
    assert target.state().detail.startswith("exited")
    assert target.host_pids() == []
