"""The fleet's parts without Docker: filters and members, the exit status that stands for a
fleet, the summary, the options passed on to each child, and the runner itself over real
child processes (tiny pythons that say what they did), Ctrl-C included."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from qpatch.cli import FLEET_PARAMS, _forwarded, cli
from qpatch.errors import BadInput
from qpatch.fleet import members, runner, view
from qpatch.fleet.members import Member
from qpatch.fleet.runner import DONE, NOT_STARTED, RUNNING, Outcome

# ---------------------------------------------------------------------- members


def test_filters_repeat_a_key_and_keep_the_values_own_equals_signs() -> None:
    assert members.parse_filters(
        ["label=com.example.role=comfyui", "label=tier=gpu", " name =comfy", "ancestor=a:b"]
    ) == {
        "label": ["com.example.role=comfyui", "tier=gpu"],
        "name": ["comfy"],
        "ancestor": ["a:b"],
    }
    assert members.parse_filters([]) == {}


@pytest.mark.parametrize("raw", ["label", "=comfyui", "  =x", "name=", ""])
def test_a_filter_that_is_not_key_value_is_bad_input(raw: str) -> None:
    with pytest.raises(BadInput, match="expected KEY=VALUE") as e:
        members.parse_filters(["label=ok", raw])
    assert e.value.exit_code == 2


def test_member_selection_refuses_mixed_requests_before_asking_any_engine() -> None:
    with pytest.raises(BadInput, match="--filter narrows --all"):
        members.select(["a"], every=False, filters=["label=x"], hosts=[])
    with pytest.raises(BadInput, match="TARGETs or --all, not both"):
        members.select(["a"], every=True, filters=[], hosts=[])
    with pytest.raises(BadInput, match="--host does not apply"):
        members.select(["local:/srv/comfy"], every=False, filters=[], hosts=["ssh://u@h"])
    with pytest.raises(BadInput, match="expected KEY=VALUE"):
        members.select([], every=True, filters=["label"], hosts=[])


def test_local_members_need_no_engine_and_keep_their_order() -> None:
    got = members.select(["local:/b", "local:/a"], every=False, filters=[], hosts=[])
    assert got == [Member("local:/b"), Member("local:/a")]
    assert {m.engine for m in got} == {"this host"}
    assert Member("comfy", "ssh://root@gpu1").engine == "ssh://root@gpu1"


# ---------------------------------------------------------------------- the worst status


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([], 0),
        ([None, None], 0),
        ([0, None, 0], 0),
        ([0, 3], 3),
        ([3, 2, 0], 2),
        ([2, 1, 3], 1),
        ([1, 130], 130),
        ([130, 70, 1], 70),
        ([70, 4, 0], 4),
        ([0, 99], 99),  # unknown: ranked as a bug, and reported as itself
        ([4, 99], 4),
    ],
)
def test_worst_follows_severity_not_the_number(codes: list[int | None], expected: int) -> None:
    assert view.worst(codes) == expected


def test_severity_names_every_documented_status_once() -> None:
    assert sorted(view.SEVERITY) == [0, 1, 2, 3, 4, 70, 130]


# ---------------------------------------------------------------------- summary

GPU1 = "ssh://root@gpu1"


def done(ref: str, code: int, result: dict[str, Any] | None, log: Sequence[str] = ()) -> Outcome:
    phase = (result or {}).get("status") or f"ended (exit status {code})"
    return Outcome(
        Member(ref, GPU1),
        state=DONE,
        phase=phase,
        started=100.0,
        ended=103.3,
        exit_code=code,
        result=result,
        log=list(log),
    )


APPLIED = done(
    "alpha",
    0,
    {
        "status": "applied",
        "files": [{"path": "/a"}, {"path": "/b"}],
        "restart_s": 2.04,
        "comparison": {"measured": True, "saving_pct": 42.4},
    },
)
UNMEASURED = done("beta", 0, {"status": "ok", "comparison": {"measured": False}})
VERDICT = done("gamma", 0, {"status": "ok", "comparison": {"measured": True, "verdict": "same"}})
REFUSED = done(
    "delta",
    2,
    {"status": "error", "error": "/x is not writable; nothing was changed"},
    ["• planning", "", "qpatch: /x is not writable; nothing was changed"],
)
CRASHED = done("epsilon", 70, None, [f"line {i}" for i in range(10)])
SKIPPED = Outcome(
    Member("zeta", GPU1), state=NOT_STARTED, phase="not started", reason="--max-failures 1 reached"
)
ALL = [APPLIED, UNMEASURED, VERDICT, REFUSED, CRASHED, SKIPPED]


def test_summary_rows_say_what_each_child_reported() -> None:
    assert view.summary_rows(ALL) == [
        ["alpha", GPU1, "applied", "0", "2", "2.0 s", "+42%", "3.3 s"],
        ["beta", GPU1, "ok", "0", "", "", "not measured", "3.3 s"],
        ["gamma", GPU1, "ok", "0", "", "", "same", "3.3 s"],
        ["delta", GPU1, "error", "2", "", "", "", "3.3 s"],
        ["epsilon", GPU1, "ended (exit status 70)", "70", "", "", "", "3.3 s"],
        ["zeta", GPU1, "not started: --max-failures 1 reached", "", "", "", "", ""],
    ]


def test_table_aligns_columns_and_trims_trailing_space() -> None:
    assert view.table([["a", "bb"], ["ccc", ""]], header=["x", "y"]) == (
        "x    y\n---  --\na    bb\nccc"
    )
    lines = view.table(view.summary_rows(ALL)).splitlines()
    assert lines[0].split() == view.HEADER
    assert len(lines) == 2 + len(ALL)
    column = lines[0].index("exit")
    assert [line[column : column + 2].strip() for line in lines[2:]] == [
        "0",
        "0",
        "0",
        "2",
        "70",
        "",
    ]
    with pytest.raises(ValueError):  # a row short of a column is a bug, not a blank
        view.table([["a"]], header=["x", "y"])


def test_failure_details_name_each_failed_target_with_its_last_lines() -> None:
    assert view.failure_details(ALL) == [
        f"delta ({GPU1}), exit 2: /x is not writable; nothing was changed",
        "    • planning",  # blank lines and the repeated message left out
        f"epsilon ({GPU1}), exit 70:",
        *[f"    line {i}" for i in range(4, 10)],
    ]
    assert view.failure_details([APPLIED, SKIPPED]) == []


def test_failure_details_with_a_hint_say_it_once() -> None:
    said = "no main.py in /srv/comfy\n  hint: give the ComfyUI root"
    o = done("eta", 2, {"status": "error", "error": said}, [f"qpatch: {said}"])
    o.log = ["qpatch: no main.py in /srv/comfy", "  hint: give the ComfyUI root"]
    details = view.failure_details([o])
    assert all("\n" not in line for line in details)
    assert sum("no main.py" in line for line in details) == 1
    assert sum("hint: give the ComfyUI root" in line for line in details) == 1


def test_progress_line_marks_state_and_clips_the_phase() -> None:
    running = Outcome(Member("c1", GPU1), state=RUNNING, phase="p" * 100, started=time.monotonic())
    line = view.progress_line(running, 4)
    assert line.startswith("… c1  ")
    assert line.endswith("p" * 69 + "…")
    assert view.progress_line(REFUSED, 5).startswith("✗ delta    3.3 s  error")
    assert view.progress_line(APPLIED, 5).startswith("✓ alpha")
    assert view.progress_line(SKIPPED, 5).startswith("- zeta ")
    assert view.progress_line(SKIPPED, 5).endswith("  not started")


def test_progress_lines_phases_line_up() -> None:
    lines = [view.progress_line(o, 7) for o in (APPLIED, SKIPPED)]
    assert lines[0].index("applied") == lines[1].index("not started")


# ---------------------------------------------------------------------- options passed on


def parsed(command: str, args: Sequence[str]) -> click.Context:
    """The context click builds for `qpatch COMMAND ARGS`, its callback not run."""
    return cli.commands[command].make_context(command, list(args))


def test_only_the_options_the_user_set_are_passed_on() -> None:
    ctx = parsed("apply", ["a", "b"])
    assert _forwarded(ctx) == []
    ctx = parsed(
        "apply",
        [
            "a",
            "b",
            "--workflow",
            "wf.json",
            "--dry-run",
            "--patch",
            "qwen-image-2512",  # the default, but given: passed on
            "--timeout",
            "60",
            "--runs",
            "5",
        ],
    )
    # in the command's own order, values as parsed
    assert _forwarded(ctx) == [
        "--patch",
        "qwen-image-2512",
        "--dry-run",
        "--timeout",
        "60.0",
        "--runs",
        "5",
        "--workflow",
        "wf.json",
    ]


def test_fleet_options_are_never_passed_on() -> None:
    ctx = parsed(
        "rollback",
        [
            "--all",
            "--filter",
            "label=a=b",
            "--filter",
            "name=c",
            "--host",
            "unix:///var/run/docker.sock",
            "--host",
            "ssh://root@gpu1",
            "--parallel",
            "8",
            "--max-failures",
            "2",
            "--json",
            "--force",
        ],
    )
    assert _forwarded(ctx) == ["--force"]
    assert _forwarded(parsed("status", ["a", "b", "--json", "--parallel", "2"])) == []
    assert set(FLEET_PARAMS) == {
        "targets",
        "every",
        "filters",
        "hosts",
        "parallel",
        "max_failures",
        "as_json",
    }


@pytest.mark.parametrize(
    ("command", "args"),
    [
        (
            "apply",
            [
                "--patch",
                "my patch.yaml",
                "--no-restart",
                "--recreate",
                "--timeout",
                "1e2",
                "--comfyui-root",
                "/root/ComfyUI",
                "--start-script",
                "run.sh",
                "--restart-cmd",
                "-x systemctl restart comfyui",
                "--measure",
                "wf.json",
                "--runs",
                "3",
                "--allow-harmful",
            ],
        ),
        (
            "verify",
            ["--workflow", "wf.json", "--expect-saving", "25", "--require-vram", "--baseline", "b"],
        ),
        ("rollback", ["--no-restart", "--force", "--timeout", "30", "--restart-cmd", "true"]),
        ("status", []),
    ],
)
def test_what_is_passed_on_parses_back_to_the_same_options(command: str, args: list[str]) -> None:
    fleet = parsed(command, ["t1", "t2", "--parallel", "3", *args, "--json"])
    child = parsed(command, ["t1", *_forwarded(fleet)])
    own = {k: v for k, v in fleet.params.items() if k not in FLEET_PARAMS}
    assert own == {k: v for k, v in child.params.items() if k not in FLEET_PARAMS}
    for name in own:
        assert child.get_parameter_source(name) == fleet.get_parameter_source(name)


def test_the_cli_runs_one_real_child_per_target_with_the_options_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two local: folders and a --patch file that does not exist: each child refuses
    (exit 2) naming that file, so the option reached it."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    patch = tmp_path / "mine.yaml"
    args = ["apply", f"local:{tmp_path / 'a'}", f"local:{tmp_path / 'b'}", "--json"]
    r = CliRunner().invoke(cli, [*args, "--patch", str(patch), "--parallel", "1"])
    assert r.exit_code == 2, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "failed" and out["exit_code"] == 2 and out["findings"] == []
    assert [t["target"] for t in out["targets"]] == args[1:3]
    for t in out["targets"]:
        assert t["engine"] == "this host"
        assert t["exit_code"] == 2 and t["status"] == "error"
        assert t["error"].startswith(f"cannot read patch file {patch}")
        assert t["elapsed_s"] > 0
    assert "1 at a time" in r.stderr
    assert "0 of 2 target(s) succeeded; exit status 2 (the worst)" in r.stderr
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------------- the runner

#: A child: does what its JSON spec (argv[1]) says, reports progress on the fd the runner
#: names, and prints one JSON object saying when it ran and which signals it got.
CHILD = r"""
import json, os, signal, sys, time
spec = json.loads(sys.argv[1])
started = time.time()
got = []
if spec.get("trap"):
    signal.signal(signal.SIGINT, lambda signum, frame: got.append("SIGINT"))
if spec.get("mark"):
    open(spec["mark"], "w").close()
progress = os.fdopen(int(os.environ["QPATCH_PROGRESS_FD"]), "w", buffering=1)
for line in spec.get("stderr", []):
    print(line, file=sys.stderr, flush=True)
for phase in spec.get("phases", []):
    progress.write(phase + "\n")
    time.sleep(0.05)
deadline = time.monotonic() + spec.get("sleep", 0)
until = spec.get("until")  # a file that ends the wait when it appears
while time.monotonic() < deadline and not got and not (until and os.path.exists(until)):
    time.sleep(0.01)
if spec.get("json", True):
    print(json.dumps({**spec.get("result", {}), "started": started, "ended": time.time(),
                      "signals": got}))
sys.exit(spec.get("on_signal", 130) if got else spec.get("code", 0))
"""


class RecordingView:
    """A View that keeps every call: (ref, state, phase) of each outcome per update."""

    def __init__(self) -> None:
        self.updates: list[list[tuple[str, str, str]]] = []
        self.notes: list[str] = []
        self.closed: list[tuple[str, str, str]] | None = None

    @staticmethod
    def _snap(outcomes: Sequence[Outcome]) -> list[tuple[str, str, str]]:
        return [(o.member.ref, o.state, o.phase) for o in outcomes]

    def update(self, outcomes: Sequence[Outcome]) -> None:
        self.updates.append(self._snap(outcomes))

    def note(self, message: str) -> None:
        self.notes.append(message)

    def close(self, outcomes: Sequence[Outcome]) -> None:
        self.closed = self._snap(outcomes)

    def phases(self, ref: str) -> list[str]:
        seen: list[str] = []
        for snap in self.updates:
            phase = next(p for r, _, p in snap if r == ref)
            if not seen or seen[-1] != phase:
                seen.append(phase)
        return seen

    def most_running(self) -> int:
        return max(sum(s == RUNNING for _, s, _ in snap) for snap in self.updates)


def fleet_of(specs: dict[str, dict[str, Any]]) -> tuple[list[Member], Callable[..., list[str]]]:
    def argv_for(m: Member) -> list[str]:
        return [sys.executable, "-c", CHILD, json.dumps(specs[m.ref])]

    return [Member(ref) for ref in specs], argv_for


def run(specs: dict[str, dict[str, Any]], view_: RecordingView, **kw: Any) -> list[Outcome]:
    fleet, argv_for = fleet_of(specs)
    kw.setdefault("max_failures", None)
    return runner.run(fleet, argv_for, view=view_, tick=0.05, **kw).outcomes


def most_at_once(outcomes: Sequence[Outcome]) -> int:
    """The most children that ran at one moment, by their own clocks."""
    events = sorted(
        (t, step)
        for o in outcomes
        if o.result
        for t, step in ((o.result["started"], 1), (o.result["ended"], -1))
    )
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_at_most_parallel_children_run_at_once() -> None:
    rec = RecordingView()
    specs = {f"c{i}": {"sleep": 0.4} for i in range(5)}
    outcomes = run(specs, rec, parallel=2)
    assert [o.state for o in outcomes] == [DONE] * 5
    assert most_at_once(outcomes) == 2
    assert rec.most_running() == 2
    assert rec.closed == [(f"c{i}", DONE, "ended (exit status 0)") for i in range(5)]


def test_outcomes_keep_the_members_order_and_what_each_child_said() -> None:
    rec = RecordingView()
    specs = {
        "slow": {"sleep": 1.2, "phases": ["planning", "writing"], "result": {"status": "applied"}},
        "mid": {"sleep": 0.5, "stderr": ["• planning", "qpatch: no"], "code": 2},
        "fast": {"json": False, "code": 3, "stderr": ["Traceback (most recent call last):"]},
    }
    outcomes = run(specs, rec, parallel=3)
    assert [o.member.ref for o in outcomes] == ["slow", "mid", "fast"]
    slow, mid, fast = outcomes
    assert fast.ended < mid.ended < slow.ended  # type: ignore[operator]
    assert slow.exit_code == 0 and slow.result and slow.result["status"] == "applied"
    assert slow.phase == "applied" and not slow.failed
    assert "planning" in rec.phases("slow") and "writing" in rec.phases("slow")
    assert mid.exit_code == 2 and mid.failed and mid.log == ["• planning", "qpatch: no"]
    assert mid.result and mid.result["signals"] == [] and mid.phase == "ended (exit status 2)"
    assert fast.exit_code == 3 and fast.result is None and fast.failed
    assert fast.phase == "ended (exit status 3)"
    assert fast.log == ["Traceback (most recent call last):"]
    assert all(o.elapsed and o.elapsed > 0 for o in outcomes)
    assert rec.notes == []


def test_max_failures_stops_new_starts(tmp_path: Path) -> None:
    rec = RecordingView()
    specs = {
        "first": {"code": 1, "result": {"status": "failed"}},
        **{name: {"mark": str(tmp_path / name)} for name in ("second", "third")},
    }
    outcomes = run(specs, rec, parallel=1, max_failures=1)
    assert [(o.state, o.exit_code) for o in outcomes] == [
        (DONE, 1),
        (NOT_STARTED, None),
        (NOT_STARTED, None),
    ]
    for o in outcomes[1:]:
        assert o.reason == "--max-failures 1 reached"
        assert o.started is None and o.phase == "not started"
    assert list(tmp_path.iterdir()) == []  # neither child ever ran


def test_the_children_in_flight_finish_after_max_failures() -> None:
    rec = RecordingView()
    specs = {
        "fails": {"code": 4},
        "in-flight": {"sleep": 0.8},
        "third": {},
        "fourth": {},
    }
    outcomes = run(specs, rec, parallel=2, max_failures=1)
    assert [(o.member.ref, o.state, o.exit_code) for o in outcomes] == [
        ("fails", DONE, 4),
        ("in-flight", DONE, 0),
        ("third", NOT_STARTED, None),
        ("fourth", NOT_STARTED, None),
    ]


def test_below_max_failures_every_target_runs() -> None:
    rec = RecordingView()
    specs = {"a": {"code": 1}, "b": {"json": False, "code": 70}, "c": {}}
    outcomes = run(specs, rec, parallel=1, max_failures=3)
    assert [o.exit_code for o in outcomes] == [1, 70, 0]
    assert view.worst([o.exit_code for o in outcomes]) == 70


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def interrupter(
    rec: RecordingView,
    ready: Sequence[str],
    times: int,
    then: Callable[[], object] | None = None,
) -> threading.Thread:
    """A thread that sends this process SIGINT once each child in `ready` says "ready", and
    again (times=2) once the runner took note of the first: two signals before the handler
    ran would be one. Once the runner took note of the last, `then()`."""

    def all_ready() -> bool:
        last = rec.updates[-1] if rec.updates else []
        return all((ref, RUNNING, "ready") in last for ref in ready)

    def go() -> None:
        if not wait_for(all_ready):
            return
        for n in range(times):
            os.kill(os.getpid(), signal.SIGINT)
            if not wait_for(lambda n=n: len(rec.notes) > n):
                return
        if then is not None:
            then()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_ctrl_c_stops_new_starts_and_the_child_in_flight_finishes(tmp_path: Path) -> None:
    """The child in flight goes on until the runner took note of the Ctrl-C, then ends."""
    rec = RecordingView()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    go, marks = tmp_path / "go", tmp_path / "marks"
    marks.mkdir()
    specs = {
        "in-flight": {
            "phases": ["ready"],
            "sleep": 20,
            "until": str(go),
            "result": {"status": "applied"},
        },
        **{name: {"mark": str(marks / name)} for name in ("second", "third")},
    }
    t = interrupter(rec, ["in-flight"], times=1, then=go.touch)
    outcomes = run(specs, rec, parallel=1)
    t.join(timeout=5)
    first, *rest = outcomes
    assert first.state == DONE and first.exit_code == 0
    assert first.result and first.result["status"] == "applied"
    assert first.result["signals"] == []  # the parent's Ctrl-C did not reach it
    assert [(o.state, o.reason) for o in rest] == [(NOT_STARTED, "interrupted (Ctrl-C)")] * 2
    assert list(marks.iterdir()) == []  # neither ever ran
    assert len(rec.notes) == 1 and "no new target starts" in rec.notes[0]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_ctrl_c_is_passed_on_to_the_children_in_flight() -> None:
    rec = RecordingView()
    before = signal.getsignal(signal.SIGINT)
    trapping = {"trap": True, "phases": ["ready"], "sleep": 20, "on_signal": 1}
    specs = {"a": trapping, "b": trapping, "c": {}}
    t = interrupter(rec, ["a", "b"], times=3)  # the third is not passed on: undo runs
    started = time.monotonic()
    outcomes = run(specs, rec, parallel=2)
    t.join(timeout=5)
    assert time.monotonic() - started < 15  # not the children's 20 s
    a, b, c = outcomes
    for o in (a, b):
        assert o.state == DONE and o.exit_code == 1
        assert o.result and o.result["signals"] == ["SIGINT"]
        assert o.interrupted
    assert (c.state, c.reason) == (NOT_STARTED, "interrupted (Ctrl-C)")
    assert len(rec.notes) == 3 and "each restores its target" in rec.notes[1]
    assert "already stopping" in rec.notes[2]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_swarm_service_is_not_a_fleet_member() -> None:
    with pytest.raises(BadInput, match="rolled out on its own"):
        members.select(["service:comfy", "other"], every=False, filters=[], hosts=[])
