"""The discovery probe: its parser (pure), its shell program (run here, on this host's /proc
and a temp folder), and discovery's answers with and without it, which must be the same."""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qpatch import discovery, plan
from qpatch.errors import BadInput
from qpatch.ledger import _WRITABLE
from qpatch.probe import MAX_SCRIPT_BYTES, Probe, Questions, parse, run_probe
from qpatch.targets import procs
from qpatch.targets.base import ContainerConfig, ExecResult, FileStat, TargetState

LAUNCHING = b"#!/bin/bash\ncd /root/ComfyUI\npython main.py --listen 0.0.0.0\n"

# --------------------------------------------------------------------------- the parser


def output(*records: bytes, scan: bytes = b"") -> bytes:
    return b"qpatch-probe 1\n" + b"".join(records) + b"scan\n" + scan + b"\nend\n"


def script(path: str, data: bytes) -> bytes:
    return f"S\t{len(data)}\t{path}\n".encode() + data + b"\n"


QUESTIONS = Questions(
    scripts=("/start.sh",), folders=("/", "/root"), ledgers=("/var/lib/qpatch/k", "/r/.qpatch/k")
)
SCAN = b"7\t/root/ComfyUI\t/root/venv/bin/python\t/root/venv/bin/python\x01main.py\x01--cpu\x01"


def test_the_parser_reads_every_record() -> None:
    tricky = b"echo 'scan'\nS\t3\t/x\nend\n" + LAUNCHING  # records inside a script are bytes
    probe = parse(
        output(
            b"X\t7\t0\t/root/venv/bin/python\n",
            b"W\t0\t0\nW\t1\t1\n",
            b"D\t0\nD\t1\nF\t1\t/root/start.sh\nF\t1\t/root/other.sh\n",
            script("/start.sh", tricky),
            script("/root/other.sh", b""),
            scan=SCAN,
        ),
        QUESTIONS,
    )
    assert probe is not None
    assert probe.scan == SCAN.decode()
    assert [s.pid for s in probe.servers] == [7]
    assert probe.pythons == {7: ("/root/venv/bin/python", 0)}
    assert probe.writable == {"/var/lib/qpatch/k": True, "/r/.qpatch/k": False}
    assert probe.listings == {"/": (), "/root": ("/root/start.sh", "/root/other.sh")}
    assert probe.script("/start.sh") == tricky
    assert probe.script("/root/other.sh") == b""
    assert probe.script("/elsewhere.sh") is None


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"qpatch-probe 2\nscan\n\nend\n",  # another version
        output(scan=SCAN)[:-4],  # cut short
        output(b"S\t99\t/start.sh\nshort\n"),  # a blob shorter than it says
        output(b"S\t2\t/start.sh\nlonger\n"),  # ... or longer
        output(b"Q\t1\n"),  # an unknown record
        output(b"D\t2\n"),  # a folder it was not asked about
        output(b"W\t5\t0\n"),
        output(b"F\t0\t/x.sh\n"),  # a path before its folder was listed
        output(b"X\tseven\t0\t/p\n"),
        b"qpatch-probe 1\nend\n",  # no scan
    ],
)
def test_the_parser_refuses_anything_but_one_whole_output(bad: bytes) -> None:
    assert parse(bad, QUESTIONS) is None


def test_a_listing_is_there_only_when_every_folder_was_listed() -> None:
    probe = Probe(scan="", listings={"/": ("/a.sh",), "/root": ("/root/b.sh",)})
    assert probe.listing(["/", "/root"]) == "/a.sh\n/root/b.sh\n"
    assert probe.listing(["/", "/root", "/opt/ComfyUI"]) is None


def test_find_lines_are_read_as_discovery_reads_finds_output() -> None:
    """str.splitlines splits more than the shell's newlines; the probe's listing is split
    the same way, so a name with a carriage return yields the same paths."""
    raw = "/root/a\rb.sh\n/root/c.sh"
    probe = parse(output(b"D\t0\n", *(f"F\t0\t{p}\n".encode() for p in raw.split("\n"))), QUESTIONS)
    assert probe is not None
    assert list(probe.listings["/"]) == [p for p in raw.splitlines() if p]


def test_the_python_check_answers_only_for_the_server_it_ran_for() -> None:
    server = procs.Proc(7, "/root/ComfyUI", "/usr/bin/python3.11", ("/root/venv/bin/python", "x"))
    probe = Probe(scan="", pythons={7: ("/root/venv/bin/python", 1)})
    assert probe.runs("/root/venv/bin/python", server) is False
    assert probe.runs("/usr/bin/python3.11", server) is None  # not this candidate
    assert probe.runs("/root/venv/bin/python", None) is None
    other = procs.Proc(8, "/", "/usr/bin/python3.11", ("/root/venv/bin/python", "x"))
    assert probe.runs("/root/venv/bin/python", other) is None


def test_paths_with_a_newline_are_not_asked() -> None:
    q = Questions(scripts=("/a.sh", "/b\n.sh"), folders=("/x\n", "/y"), ledgers=("/l\n",))
    assert q.askable() == Questions(("/a.sh",), ("/y",), ())
    argv = q.askable().argv()
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", "1", "1", "/a.sh", "/y"]


# --------------------------------------------------------------------------- the shell


@dataclass
class HostShell:
    """A target whose exec runs on this host: the probe's own program under test."""

    env: dict[str, str] | None = None
    calls: int = 0

    def exec(self, argv: Sequence[str], **_: object) -> ExecResult:
        self.calls += 1
        r = subprocess.run(list(argv), capture_output=True, env=self.env, timeout=60)
        return ExecResult(r.returncode, r.stdout, r.stderr)


needs_sh = pytest.mark.skipif(
    not (shutil.which("sh") and os.path.isdir("/proc/self")), reason="needs sh and /proc"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A python process that looks like a ComfyUI server: `main.py` in its argv."""
    p = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "main.py", "--cpu"], cwd=tmp_path
    )
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def _ours(scan: str, pid: int) -> list[procs.Proc]:
    return [p for p in procs.parse_scan(scan) if p.pid == pid]


@needs_sh
@pytest.mark.parametrize("grep", [True, False], ids=["grep", "no-grep"])
def test_the_scan_finds_what_the_plain_scan_finds(
    server: subprocess.Popen[bytes], tmp_path: Path, grep: bool
) -> None:
    env = None
    if not grep:  # only the tools the fallback loop needs: no grep on PATH
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for tool in ("tr", "readlink", "find", "wc", "head", "dirname", "sh"):
            (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
        env = {"PATH": str(bin_dir)}
    time.sleep(0.2)  # the server's argv is in place
    plain = HostShell().exec(procs.SCAN_ARGV).text
    probe = run_probe(HostShell(env), Questions())
    assert probe is not None
    mine = _ours(probe.scan, server.pid)
    assert mine and mine == _ours(plain, server.pid)
    assert mine[0].is_comfyui_server
    assert not any(p.exe.endswith("sh") for p in procs.parse_scan(probe.scan))  # not itself


@needs_sh
def test_scripts_and_listings_are_what_find_and_a_read_would_give(tmp_path: Path) -> None:
    root, other = tmp_path / "root", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    (root / "start.sh").write_bytes(LAUNCHING)
    (root / "big.sh").write_bytes(b"#" * (MAX_SCRIPT_BYTES + 1))
    (root / "folder.sh").mkdir()
    (root / "link.sh").symlink_to(root / "start.sh")
    (root / "notes.txt").write_text("not a script")
    (other / "cmd.sh").write_bytes(b"exec python main.py\n")
    q = Questions(
        scripts=(str(other / "cmd.sh"), "relative.sh", str(other / "missing.sh")),
        folders=(str(root), str(tmp_path / "none")),
    )
    probe = run_probe(HostShell(), q)
    assert probe is not None
    find = ["find", str(root), "-maxdepth", "1", "-name", "*.sh", "-type", "f"]
    listed = subprocess.run(find, capture_output=True, text=True).stdout.splitlines()
    assert (
        sorted(probe.listings[str(root)])
        == sorted(listed)
        == [str(root / "big.sh"), str(root / "start.sh")]
    )
    assert probe.listings[str(tmp_path / "none")] == ()
    assert probe.scripts == {
        str(other / "cmd.sh"): b"exec python main.py\n",
        str(root / "start.sh"): LAUNCHING,
    }


@needs_sh
def test_writability_is_ledger_s_own_test(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    folders = (
        str(tmp_path),
        str(tmp_path / "new" / "deeper"),
        str(tmp_path / "file" / "below"),
        "/proc/1/qpatch",
        "relative/qpatch",
        "/",
    )
    probe = run_probe(HostShell(), Questions(ledgers=folders))
    assert probe is not None
    shell = HostShell()
    assert probe.writable == {f: shell.exec([*_WRITABLE, f]).exit_code == 0 for f in folders}


# --------------------------------------------------------------------------- discovery


@dataclass
class FakeContainer:
    """A running container for discover(): files, processes, the pythons that run, and the
    calls it was asked. `probing` adds the probe, answered from the same data."""

    files: dict[str, bytes]
    command: list[str]
    procs: list[procs.Proc] = field(default_factory=list)
    pythons: set[str] = field(default_factory=lambda: {"python3"})
    probing: bool = False
    probe_leaves_open: set[str] = field(default_factory=set)  # folders it does not list
    description: str = "container fake"
    key: str = "docker-fake"
    ref: str = "fake"
    root: str | None = None
    start_script: str | None = None
    script_folders: tuple[str, ...] = ("/", "/root")
    calls: list[str] = field(default_factory=list)

    def probe(self, questions: Questions) -> Probe | None:
        return self._probe(questions) if self.probing else None

    def _probe(self, questions: Questions) -> Probe:
        self.calls.append("probe")
        listings = {
            f: tuple(self._listing([f]).splitlines())
            for f in questions.folders
            if f not in self.probe_leaves_open
        }
        wanted = [*questions.scripts, *(p for lines in listings.values() for p in lines)]
        scripts = {p: self.files[p] for p in wanted if p in self.files}
        server = next((p for p in self.procs if p.is_comfyui_server), None)
        pythons = {}
        if server and server.argv[0].startswith("/"):
            pythons[server.pid] = (server.argv[0], 0 if server.argv[0] in self.pythons else 1)
        scan = "".join(
            f"{p.pid}\t{p.cwd}\t{p.exe}\t" + "\x01".join(p.argv) + "\x01\n" for p in self.procs
        )
        return Probe(scan, pythons, listings, scripts, {f: True for f in questions.ledgers})

    def _listing(self, folders: Sequence[str]) -> str:
        found = [p for p in self.files if p.endswith(".sh") and posixpath.dirname(p) in folders]
        return "".join(p + "\n" for p in found)

    def exec(self, argv: Sequence[str], **_: object) -> ExecResult:
        self.calls.append(f"exec {argv[0]}")
        match list(argv):
            case ["find", *rest]:
                return ExecResult(0, self._listing(rest[: rest.index("-maxdepth")]).encode(), b"")
            case [python, "-c", "pass"]:
                return ExecResult(0 if python in self.pythons else 127, b"", b"")
            case ["true"]:
                return ExecResult(0, b"", b"")
        raise AssertionError(f"unexpected exec {argv!r}")

    def read_file(self, path: str) -> tuple[bytes, FileStat]:
        self.calls.append(f"read {path}")
        if path not in self.files:
            raise BadInput(f"{path}: no such file")
        return self.files[path], FileStat(0o755, 0, 0, len(self.files[path]))

    def exists(self, path: str) -> bool:
        return path in self.files or any(p.startswith(path.rstrip("/") + "/") for p in self.files)

    def state(self) -> TargetState:
        return TargetState(True, 0, "running")

    def server_processes(self) -> list[procs.Proc]:
        self.calls.append("scan")
        return [p for p in self.procs if p.is_comfyui_server]

    def configured_command(self) -> list[str] | None:
        return self.command or None

    def container_config(self) -> ContainerConfig:
        return ContainerConfig(None, self.command)


SERVER = procs.Proc(
    7,
    "/root/ComfyUI",
    "/usr/bin/python3.11",
    ("/root/venv/bin/python", "main.py", "--port", "9000"),
)
COMFY = {"/root/ComfyUI/main.py": b"", "/root/ComfyUI/custom_nodes/x.py": b""}


def both(**kwargs: object) -> tuple[discovery.Layout, FakeContainer, FakeContainer]:
    """discover() on the same container without and with the probe: the same Layout."""
    plain, probed = FakeContainer(**kwargs), FakeContainer(**kwargs, probing=True)  # type: ignore[arg-type]
    layout = discovery.discover(plain)  # type: ignore[arg-type]
    assert discovery.discover(probed) == layout  # type: ignore[arg-type]
    return layout, plain, probed


def test_the_start_script_in_the_command_is_read_from_the_probe() -> None:
    files = {**COMFY, "/root/1.sh": LAUNCHING}
    layout, plain, probed = both(
        files=files,
        command=["bash", "/root/1.sh"],
        procs=[SERVER],
        pythons={"/root/venv/bin/python"},
    )
    assert (layout.start_script, layout.python, layout.port) == (
        "/root/1.sh",
        "/root/venv/bin/python",
        9000,
    )
    assert plain.calls == ["scan", "read /root/1.sh", "exec /root/venv/bin/python"]
    assert probed.calls == ["probe"]
    assert layout.writable == {}  # no probe, nothing known


def test_the_found_scripts_are_listed_and_read_by_the_probe() -> None:
    files = {**COMFY, "/root/a.sh": LAUNCHING, "/b.sh": b"echo hi\n", "/root/ComfyUI/c.sh": b""}
    layout, plain, probed = both(
        files=files, command=["/usr/bin/tini", "--", "supervisord"], procs=[SERVER]
    )
    assert layout.start_script == "/root/a.sh"
    assert layout.python == "python3"  # the server's own interpreters do not run here
    assert "exec find" in plain.calls
    assert probed.calls == ["probe", "exec /usr/bin/python3.11", "exec python3"]


def test_what_the_probe_leaves_open_is_asked_as_before() -> None:
    files = {**COMFY, "/root/a.sh": LAUNCHING, "/root/b.sh": LAUNCHING}
    kwargs = dict(
        files=files, command=["supervisord"], procs=[SERVER], pythons={"/root/venv/bin/python"}
    )
    with pytest.raises(BadInput, match="several start scripts") as plain_error:
        discovery.discover(FakeContainer(**kwargs))  # type: ignore[arg-type]
    probed = FakeContainer(**kwargs, probing=True, probe_leaves_open={"/root/ComfyUI"})  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="several start scripts") as probed_error:
        discovery.discover(probed)  # type: ignore[arg-type]
    assert str(probed_error.value) == str(plain_error.value)
    assert probed.calls == ["probe", "exec find"]


def test_no_server_no_script() -> None:
    layout, _, probed = both(files=COMFY, command=["python3", "main.py", "--cpu"])
    assert (layout.root, layout.start_script, layout.python, layout.server) == (
        "/root/ComfyUI",
        None,
        "python3",
        None,
    )
    assert layout.writable == {}
    assert probed.calls == ["probe", "exec python3"]
    probed_layout = discovery.discover(FakeContainer(files=COMFY, command=["x.sh"], probing=True))  # type: ignore[arg-type]
    assert probed_layout.writable["/var/lib/qpatch/docker-fake"] is True


# --------------------------------------------------------------------------- plan


def test_calls_started_ahead_answer_where_the_plan_takes_them() -> None:
    ahead = plan._Ahead(None)  # type: ignore[arg-type]
    order: list[str] = []
    gate = threading.Event()

    def first() -> str:
        gate.wait(5)
        order.append("first")
        return "one"

    def fails() -> str:
        order.append("second")
        raise BadInput("second failed")

    started = ahead.start("a", first)
    ahead.start("b", fails, after=started)
    gate.set()
    assert ahead.take("a", lambda: "inline") == "one"
    with pytest.raises(BadInput, match="second failed"):  # raised here, not when it ran
        ahead.take("b", lambda: "inline")
    assert order == ["first", "second"]
    assert ahead.take("a", lambda: "inline") == "inline"  # taken once; again: asked again
    assert ahead.take("c", lambda: "inline") == "inline"
