"""The engine's state machine, in process, against a dict-backed target (memory_target.py).

The Docker tests prove the same flows end to end but take minutes; these take
milliseconds, so every transition of the ledger (writing → written → restarting →
applied; restored, recovered, rolled-back) and every promise of docs/design.md §11 is
pinned where a change to the engine or an applier breaks it first: the states in order,
the history, the sha256 of every file in the target, the backups in the target and the
host mirror, the server's argv, and the Result the CLI would print.

The plan is built by hand (two changed files, bytes written out below), because what is
under test is how the engine lands and undoes a plan, not how a plan is computed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from qpatch import engine
from qpatch.context import Context
from qpatch.discovery import Layout
from qpatch.errors import BadInput, CheckFailed, NotRestored, Restored
from qpatch.ledger import LedgerStore
from qpatch.lock import target_lock
from qpatch.output import Console
from qpatch.plan import FileEdit, Plan
from qpatch.report import Report
from qpatch.result import UNSET, Result
from tests.unit.memory_target import (
    SERVER_PID,
    Boot,
    Killed,
    KillWhen,
    MemoryTarget,
    script_boot,
    sha256,
)

PATCH = "qwen-image-2512"
ROOT = "/root/ComfyUI"
PYTHON = "/root/venv/bin/python"
MAIN = f"{ROOT}/main.py"
LOADER = f"{ROOT}/custom_nodes/comfyui_qwen_image/qwen_image_loader.py"
INIT = f"{ROOT}/custom_nodes/comfyui_qwen_image/__init__.py"
SCRIPT = "/root/1键启动.sh"
KEY = "memory-test"
LEDGER_DIR = f"/var/lib/qpatch/{KEY}"
LEDGER_JSON = f"{LEDGER_DIR}/ledger.json"

MAIN_BYTES = b"import comfy.cli_args\nprint('ComfyUI stand-in')\n"
INIT_BYTES = b"from .qwen_image_loader import NODE_CLASS_MAPPINGS\n"
LOADER_BEFORE = b"""\
from diffusers import QwenImageModel


class QwenImageLoader:
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING",)}}

    def load(self, path):
        self.model = QwenImageModel.from_pretrained(path)
        return (self.model,)


NODE_CLASS_MAPPINGS = {"QwenImageLoader": QwenImageLoader}
"""
LOADER_AFTER = LOADER_BEFORE.replace(
    b'    FUNCTION = "load"\n',
    b'    FUNCTION = "load"\n\n'
    b"    @classmethod\n"
    b"    def IS_CHANGED(cls, **kwargs):\n"
    b"        import json\n\n"
    b"        return json.dumps([kwargs, []], sort_keys=True, default=str)\n",
)
SCRIPT_BEFORE = """\
#!/bin/bash
# 一键启动 ComfyUI
cd /root/ComfyUI
source /root/venv/bin/activate
python main.py --listen 0.0.0.0 --port 8188 --cpu
""".encode()
SCRIPT_AFTER = """\
#!/bin/bash
# 一键启动 ComfyUI
cd /root/ComfyUI
source /root/venv/bin/activate
# >>> qpatch qwen-image-2512 >>>
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# <<< qpatch <<<
python main.py --listen 0.0.0.0 --port 8188 --cpu --disable-cuda-malloc --bf16-unet
""".encode()
#: the flag the post gets wrong: no such flag, so ComfyUI's argparse exits 2
SCRIPT_AFTER_BAD = SCRIPT_AFTER.replace(b"--bf16-unet", b"--cpu-offload")

ORIGINAL_ARGV = ("main.py", "--listen", "0.0.0.0", "--port", "8188", "--cpu")
PATCHED_ARGV = (*ORIGINAL_ARGV, "--disable-cuda-malloc", "--bf16-unet")
ORIGINALS: dict[str, bytes] = {
    MAIN: MAIN_BYTES,
    INIT: INIT_BYTES,
    LOADER: LOADER_BEFORE,
    SCRIPT: SCRIPT_BEFORE,
}
PATCHED: dict[str, bytes] = {**ORIGINALS, LOADER: LOADER_AFTER, SCRIPT: SCRIPT_AFTER}
#: what the ledger keeps under files/<sha256>: each original and each written version
STORED = (LOADER_BEFORE, LOADER_AFTER, SCRIPT_BEFORE, SCRIPT_AFTER)
BACKUP_MODE = 0o600


# --------------------------------------------------------------------------- building


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host mirror goes to tmp_path: XDG_STATE_HOME is how a user would move it too."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "qpatch" / KEY


def make_target(boot: Boot | None = None) -> MemoryTarget:
    """A one-click image as it is before qpatch: ComfyUI running from the start script."""
    target = MemoryTarget(boot=boot or script_boot(), key=KEY, python=PYTHON)
    target.put(MAIN, MAIN_BYTES)
    target.put(INIT, INIT_BYTES)
    target.put(LOADER, LOADER_BEFORE)
    target.put(SCRIPT, SCRIPT_BEFORE, mode=0o755)
    target.dirs.update({"/var", "/var/lib"})
    target.boot_now()
    assert target.server == ORIGINAL_ARGV
    return target


def make_ctx(target: MemoryTarget) -> Context:
    """What qpatch.session hands a command, minus opening and discovering a real target."""
    server = target.server_processes()[0]
    layout = Layout(ROOT, SCRIPT, PYTHON, server, target.port)
    store = LedgerStore(target, LEDGER_DIR)
    return Context(target, layout, store, Console(), timeout=1.0, result=Result())


def make_plan(target: MemoryTarget, script_after: bytes = SCRIPT_AFTER) -> Plan:
    """What make_plan computes for the bundled patch, written out: the loader gets an
    IS_CHANGED, the start script the env block and flags. Read from the target, as the
    real plan is, so each edit carries the file's own mode."""
    report = Report()
    report.change("is-changed", 4, "QwenImageLoader: IS_CHANGED added")
    report.change("env", 5, "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
    report.change("flag", 8, "--disable-cuda-malloc --bf16-unet")
    report.find("gradient checkpointing saves memory only with autograd on", 12, "info")
    edits = [
        FileEdit(path, target.read_file(path)[0], after, target.read_file(path)[1])
        for path, after in ((LOADER, LOADER_AFTER), (SCRIPT, script_after))
    ]
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    return Plan(PATCH, edits, report, env, ["--disable-cuda-malloc", "--bf16-unet"])


def applied(boot: Boot | None = None) -> tuple[MemoryTarget, Context]:
    """A target the engine has patched, with the logs cleared for what comes next."""
    target = make_target(boot)
    ctx = make_ctx(target)
    assert engine.apply(ctx, make_plan(target), dry_run=False, restart=True) == 0
    forget(target)
    return target, next_command(target)


def next_command(target: MemoryTarget) -> Context:
    """A later qpatch command: a fresh Context and Result over the same target."""
    return make_ctx(target) if target.server else _ctx_of_stopped(target)


def _ctx_of_stopped(target: MemoryTarget) -> Context:
    """With no server there is no Proc, as discover() finds none on a dead ComfyUI."""
    layout = Layout(ROOT, SCRIPT, PYTHON, None, target.port)
    return Context(target, layout, LedgerStore(target, LEDGER_DIR), Console(), 1.0, Result())


def exclusive_start(ctx: Context) -> None:
    """How qpatch.session begins a command that may write: the lock (only where the
    target runs), then recover_interrupted under it; the lock is released after."""
    lock: AbstractContextManager[None] = nullcontext()
    if ctx.target.state().running:
        ctx.store.ensure_folder()
        lock = target_lock(ctx.target, ctx.store.path("lock"))
    with lock:
        engine.recover_interrupted(ctx)


def forget(target: MemoryTarget) -> None:
    """Clear what the target logged, so a test sees only what the next command does."""
    target.writes.clear()
    target.ledger_states.clear()
    target.execs.clear()


# --------------------------------------------------------------------------- asserting


def ledger(target: MemoryTarget) -> dict:
    return json.loads(target.files[LEDGER_JSON][0])


def mirror_ledger(mirror: Path) -> dict:
    return json.loads((mirror / "ledger.json").read_text())


def events(data: dict) -> list[str]:
    return [h["event"] for h in data["history"]]


def assert_files(
    target: MemoryTarget,
    expected: Mapping[str, bytes],
    *,
    stored: Iterable[bytes] = STORED,
    extra: Mapping[str, bytes] | None = None,
) -> None:
    """Every file in the target, by sha256: ComfyUI's, the ledger's backups, nothing else
    (no compile temp left in /tmp, no lock). ledger.json carries times; it is read apart."""
    want = {path: sha256(data) for path, data in {**expected, **(extra or {})}.items()}
    want.update({f"{LEDGER_DIR}/files/{sha256(d)}": sha256(d) for d in stored})
    got = target.digests()
    got.pop(LEDGER_JSON, None)
    assert got == want


def assert_mirror(mirror: Path, state: str, stored: Iterable[bytes] = STORED) -> None:
    """The host copy: same ledger state, every backup intact under its own hash."""
    assert mirror_ledger(mirror)["state"] == state
    for data in stored:
        assert (mirror / "files" / sha256(data)).read_bytes() == data


def file_rows(*pairs: tuple[str, bytes, bytes]) -> list[dict[str, str]]:
    return [{"path": p, "sha256_before": sha256(b), "sha256_after": sha256(a)} for p, b, a in pairs]


ROWS = file_rows((LOADER, LOADER_BEFORE, LOADER_AFTER), (SCRIPT, SCRIPT_BEFORE, SCRIPT_AFTER))
WRITTEN_ROWS = [{**row, "outcome": "written"} for row in ROWS]


def outcome_rows(outcome: str, now: Mapping[str, bytes] | None = None) -> list[dict[str, str]]:
    """Result.files of an apply that was refused or failed: each file's fate as read back
    from the target, with its sha256 now where it is not as before."""
    rows = []
    for path, before in ((LOADER, LOADER_BEFORE), (SCRIPT, SCRIPT_BEFORE)):
        row = {"path": path, "sha256_before": sha256(before), "outcome": outcome}
        if now is not None:
            row["sha256_now"] = sha256(now[path])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- 1. apply


def test_apply_goes_writing_written_restarting_applied(mirror: Path) -> None:
    target = make_target()
    ctx = make_ctx(target)

    assert engine.apply(ctx, make_plan(target), dry_run=False, restart=True) == 0

    assert target.ledger_states == ["writing", "written", "restarting", "applied"]
    data = ledger(target)
    assert data["state"] == "applied"
    assert events(data) == ["applied"]
    assert data["env"] == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert data["findings"] == [
        "info: line 12: gradient checkpointing saves memory only with autograd on"
    ]
    assert [(f["path"], f["mode"]) for f in data["files"]] == [(LOADER, 0o644), (SCRIPT, 0o755)]
    assert_files(target, PATCHED)
    assert_mirror(mirror, "applied")
    assert mirror_ledger(mirror) == data
    # backups and the ledger are stored before the first byte of ComfyUI changes
    assert [w.path for w in target.writes] == [
        "/tmp/.qpatch-compile-qwen_image_loader.py",  # the compile check's copy (removed)
        *(f"{LEDGER_DIR}/files/{sha256(d)}" for d in STORED),
        LEDGER_JSON,
        LOADER,
        SCRIPT,
        LEDGER_JSON,
        LEDGER_JSON,
        LEDGER_JSON,
    ]
    assert {w.stat.mode for w in target.writes if w.path.startswith(LEDGER_DIR)} == {BACKUP_MODE}
    assert target.files[SCRIPT][1].mode == 0o755  # the start script stays executable
    # the server was restarted once and now runs the patched start script
    assert target.restart_calls == 1
    assert target.server == PATCHED_ARGV
    assert target.server_env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    r = ctx.result
    assert (r.status, r.patch, r.files) == ("applied", PATCH, WRITTEN_ROWS)
    assert r.argv == list(PATCHED_ARGV)
    assert r.measurements == {}
    assert r.findings == data["findings"]


# --------------------------------------------------------------------------- 2. restored


def test_apply_whose_restart_never_becomes_healthy_restores_everything(mirror: Path) -> None:
    target = make_target(script_boot(fails_on=("--cpu-offload",)))
    ctx = make_ctx(target)
    plan = make_plan(target, SCRIPT_AFTER_BAD)

    with pytest.raises(Restored) as caught:
        engine.apply(ctx, plan, dry_run=False, restart=True)

    assert caught.value.exit_code == 1
    message = str(caught.value)
    assert "ComfyUI is not running" in message
    assert "every file is back as it was and ComfyUI answers" in message
    assert "main.py: error: unrecognized arguments: --cpu-offload" in message  # the log tail
    assert target.ledger_states == ["writing", "written", "restarting", "restored"]
    data = ledger(target)
    assert data["state"] == "restored"
    assert len(events(data)) == 1
    assert events(data)[0].startswith("apply failed and was undone: ComfyUI is not running")
    stored = (LOADER_BEFORE, LOADER_AFTER, SCRIPT_BEFORE, SCRIPT_AFTER_BAD)
    assert_files(target, ORIGINALS, stored=stored)
    assert_mirror(mirror, "restored", stored)
    assert target.files[SCRIPT][1].mode == 0o755
    # restarted into the patch (down), then again with the originals (up)
    assert target.restart_calls == 2
    assert target.state().running
    assert target.server == ORIGINAL_ARGV
    r = ctx.result
    assert r.status is UNSET  # the CLI's _dispatch makes it "error"
    assert r.patch == PATCH
    assert r.files == outcome_rows("restored")
    assert r.argv is UNSET


def test_ctrl_c_after_the_first_write_is_undone_like_any_failure(mirror: Path) -> None:
    """KeyboardInterrupt is no Exception, and the invariant covers it all the same."""
    pressed: list[bool] = []
    normal = script_boot()

    def interrupted_once(t: MemoryTarget) -> tuple[str, ...] | None:
        if not pressed:
            pressed.append(True)
            raise KeyboardInterrupt
        return normal(t)

    target = make_target()
    target.boot = interrupted_once
    ctx = make_ctx(target)

    with pytest.raises(Restored) as caught:
        engine.apply(ctx, make_plan(target), dry_run=False, restart=True)

    assert isinstance(caught.value.__cause__, KeyboardInterrupt)
    assert target.ledger_states == ["writing", "written", "restarting", "restored"]
    assert_files(target, ORIGINALS)
    assert_mirror(mirror, "restored")
    assert target.server == ORIGINAL_ARGV
    assert ctx.result.files == outcome_rows("restored")


# --------------------------------------------------------------------------- 3. not restored


def test_apply_whose_restore_fails_too_names_the_backups_for_the_manual_steps(
    mirror: Path,
) -> None:
    target = make_target(script_boot(fails_on=("--cpu-offload",), read_only_after_failure=True))
    ctx = make_ctx(target)

    with pytest.raises(NotRestored) as caught:
        engine.apply(ctx, make_plan(target, SCRIPT_AFTER_BAD), dry_run=False, restart=True)

    assert caught.value.exit_code == 4
    message = str(caught.value)
    assert "Read-only file system" in message
    for path, before in ((LOADER, LOADER_BEFORE), (SCRIPT, SCRIPT_BEFORE)):
        assert f"cp {LEDGER_DIR}/files/{sha256(before)} {path}" in message
        assert f"host copy: {mirror / 'files' / sha256(before)}" in message
    assert "then restart ComfyUI and run: qpatch status" in message
    # nothing could be changed after the failure: the ledger still says a run is open
    stored = (LOADER_BEFORE, LOADER_AFTER, SCRIPT_BEFORE, SCRIPT_AFTER_BAD)
    assert target.ledger_states == ["writing", "written", "restarting"]
    assert ledger(target)["state"] == "restarting"
    assert events(ledger(target)) == []
    assert_files(target, {**PATCHED, SCRIPT: SCRIPT_AFTER_BAD}, stored=stored)
    assert_mirror(mirror, "restarting", stored)
    assert not target.state().running
    assert target.restart_calls == 1
    assert ctx.result.files == outcome_rows(
        "not restored", {LOADER: LOADER_AFTER, SCRIPT: SCRIPT_AFTER_BAD}
    )

    # the steps work: once the disk takes writes again, `cp` each backup back ...
    target.read_only_fs = False
    for line in message.splitlines():
        words = line.split()
        if words[:1] == ["cp"]:
            src, dst = words[1], words[2]
            target.write_file(dst, target.read_file(src)[0], target.read_file(dst)[1])
    assert_files(target, ORIGINALS, stored=stored)
    # ... and the next command closes the open ledger, restarting ComfyUI
    exclusive_start(next_command(target))
    assert ledger(target)["state"] == "recovered"
    assert target.server == ORIGINAL_ARGV
    assert_files(target, ORIGINALS, stored=stored)


# --------------------------------------------------------------------------- 4. recover


def _kill_before_second_file(op: str, path: str, data: bytes) -> bool:
    return op == "write" and path == SCRIPT


def _kill_before_saving_restarting(op: str, path: str, data: bytes) -> bool:
    return op == "write" and path == LEDGER_JSON and json.loads(data)["state"] == "restarting"


def _kill_after_restart(op: str, path: str, data: bytes) -> bool:
    return op == "restarted"


@pytest.mark.parametrize(
    ("kill", "crashed", "open_state", "mirror_state", "left", "server_left", "restarts"),
    [
        # half-written: the loader is patched, the start script not yet
        (
            _kill_before_second_file,
            False,
            "writing",
            "writing",
            {LOADER: LOADER_AFTER},
            ORIGINAL_ARGV,
            0,
        ),
        # every file written, the restart not begun: the old server still runs. The host
        # mirror is saved first, so it already says "restarting"; the target's copy wins
        (_kill_before_saving_restarting, False, "written", "restarting", PATCHED, ORIGINAL_ARGV, 0),
        # ... but if it died meanwhile, recovery must start it
        (_kill_before_saving_restarting, True, "written", "restarting", PATCHED, None, 1),
        # restarted into the patch, killed while waiting for health
        (_kill_after_restart, False, "restarting", "restarting", PATCHED, PATCHED_ARGV, 1),
    ],
    ids=["writing", "written", "written-server-down", "restarting"],
)
def test_the_next_command_recovers_a_run_killed_half_way(
    mirror: Path,
    kill: KillWhen,
    crashed: bool,
    open_state: str,
    mirror_state: str,
    left: Mapping[str, bytes],
    server_left: tuple[str, ...] | None,
    restarts: int,
) -> None:
    target = make_target()
    target.kill_when = kill
    with pytest.raises(Killed):
        engine.apply(make_ctx(target), make_plan(target), dry_run=False, restart=True)
    target.kill_when = None
    if crashed:
        target.server, target.exit_detail = None, "exited (exit code 137)"
    restarts_by_the_killed_run = target.restart_calls

    # what the kill left: an open ledger in the target, files as far as the run got
    assert ledger(target)["state"] == open_state
    assert mirror_ledger(mirror)["state"] == mirror_state
    assert_files(target, {**ORIGINALS, **left})
    assert target.server == server_left
    forget(target)

    ctx = next_command(target)
    exclusive_start(ctx)

    assert target.ledger_states == ["recovered"]
    data = ledger(target)
    assert data["state"] == "recovered"
    assert events(data) == ["interrupted run recovered: originals restored"]
    assert_files(target, ORIGINALS)  # and the lock is gone again
    assert_mirror(mirror, "recovered")
    assert target.restart_calls - restarts_by_the_killed_run == restarts
    assert target.server == ORIGINAL_ARGV
    rewritten = [w.path for w in target.writes if not w.path.startswith(LEDGER_DIR)]
    assert rewritten == [p for p in (LOADER, SCRIPT) if left.get(p, ORIGINALS[p]) != ORIGINALS[p]]


def test_recovering_needs_nothing_when_no_run_is_open(mirror: Path) -> None:
    target, ctx = applied()
    exclusive_start(ctx)
    assert target.writes == []
    # ensure_folder, the lock's `set -C` create, reading it back, removing it
    assert [e[0] for e in target.execs] == ["mkdir", "sh", "cat", "rm"]
    assert_files(target, PATCHED)  # the lock came and went
    assert ledger(target)["state"] == "applied"


# --------------------------------------------------------------------------- 5. rollback


def test_rollback_restores_byte_exact_then_has_nothing_to_do(mirror: Path) -> None:
    target, ctx = applied()

    assert engine.rollback(ctx, restart=True, force=False) == 0

    assert target.ledger_states == ["rolled-back"]
    data = ledger(target)
    assert data["state"] == "rolled-back"
    assert events(data) == ["applied", "rolled back"]
    assert_files(target, ORIGINALS)
    assert_mirror(mirror, "rolled-back")
    assert target.files[SCRIPT][1].mode == 0o755
    assert target.restart_calls == 2
    assert target.server == ORIGINAL_ARGV
    assert target.server_env == {}
    r = ctx.result
    assert (r.status, r.patch, r.files) == ("rolled-back", PATCH, ROWS)

    forget(target)
    again = next_command(target)
    assert engine.rollback(again, restart=True, force=False) == 0
    assert (again.result.status, again.result.patch, again.result.files) == (
        "nothing-to-roll-back",
        None,
        [],
    )
    assert target.writes == []
    assert target.restart_calls == 2
    assert_files(target, ORIGINALS)


def test_a_rolled_back_target_can_be_patched_again(mirror: Path) -> None:
    target, ctx = applied()
    engine.rollback(ctx, restart=True, force=False)
    forget(target)

    ctx = next_command(target)
    assert engine.apply(ctx, make_plan(target), dry_run=False, restart=True) == 0

    assert target.ledger_states == ["writing", "written", "restarting", "applied"]
    assert events(ledger(target)) == ["applied", "rolled back", "applied"]
    assert_files(target, PATCHED)
    assert target.server == PATCHED_ARGV


def test_rollback_with_no_restart_leaves_the_server_alone(mirror: Path) -> None:
    target, ctx = applied()
    assert engine.rollback(ctx, restart=False, force=False) == 0
    assert ledger(target)["state"] == "rolled-back"
    assert_files(target, ORIGINALS)
    assert target.restart_calls == 1
    assert target.server == PATCHED_ARGV  # until the next start


# --------------------------------------------------------------------------- 6. drift

EDITED = LOADER_AFTER + b"\n# tuned by hand after qpatch\n"
KEPT = f"{LEDGER_DIR}/drifted/qwen_image_loader.py.{sha256(EDITED)[:12]}"


def test_rollback_refuses_over_drift_and_changes_nothing(mirror: Path) -> None:
    target, ctx = applied()
    target.put(LOADER, EDITED)  # someone edits the patched file by hand
    before = target.digests()

    with pytest.raises(CheckFailed) as caught:
        engine.rollback(ctx, restart=True, force=False)

    assert caught.value.exit_code == 3
    assert LOADER in str(caught.value)
    assert "--force" in str(caught.value)
    assert target.writes == []
    assert target.digests() == before
    assert ledger(target)["state"] == "applied"
    assert target.restart_calls == 1
    assert not (mirror / "drifted").exists()


def test_forced_rollback_keeps_a_copy_of_the_drifted_file_then_restores(mirror: Path) -> None:
    target, ctx = applied()
    target.put(LOADER, EDITED)

    assert engine.rollback(ctx, restart=True, force=True) == 0

    data = ledger(target)
    assert data["state"] == "rolled-back"
    assert events(data) == ["applied", "rolled back (forced over drift)"]
    # the files applier's target survives the rollback, so the copy is kept inside it too
    assert_files(target, ORIGINALS, extra={KEPT: EDITED})
    assert target.files[KEPT][1].mode == BACKUP_MODE
    assert (mirror / "drifted" / KEPT.rsplit("/", 1)[1]).read_bytes() == EDITED
    assert_mirror(mirror, "rolled-back")
    assert target.server == ORIGINAL_ARGV
    assert ctx.result.status == "rolled-back"


def test_forced_rollback_restores_a_patched_file_that_was_deleted(mirror: Path) -> None:
    """A deleted file is drift too (neither as written nor original): --force has nothing
    to keep, and must still put the original back."""
    target, ctx = applied()
    del target.files[LOADER]

    with pytest.raises(CheckFailed):
        engine.rollback(ctx, restart=True, force=False)
    assert engine.rollback(next_command(target), restart=True, force=True) == 0

    assert ledger(target)["state"] == "rolled-back"
    assert_files(target, ORIGINALS)


def test_a_file_put_back_by_hand_is_not_drift_and_is_not_rewritten(mirror: Path) -> None:
    target, ctx = applied()
    target.put(LOADER, LOADER_BEFORE)

    assert engine.rollback(ctx, restart=True, force=False) == 0

    assert [w.path for w in target.writes if not w.path.startswith(LEDGER_DIR)] == [SCRIPT]
    assert events(ledger(target)) == ["applied", "rolled back"]
    assert_files(target, ORIGINALS)


# --------------------------------------------------------------------------- 7. verify


def checks(ctx: Context) -> list[tuple[str, bool]]:
    return [(c["check"], c["ok"]) for c in ctx.result.checks]


def test_verify_passes_on_an_applied_target_and_writes_nothing(mirror: Path) -> None:
    target, ctx = applied()

    assert engine.verify(ctx) == 0

    assert checks(ctx) == [
        ("patched", True),
        (f"unchanged {LOADER}", True),
        (f"unchanged {SCRIPT}", True),
        ("healthy", True),
    ]
    assert (ctx.result.status, ctx.result.patch, ctx.result.files) == ("ok", PATCH, ROWS)
    assert target.writes == []
    assert_files(target, PATCHED)


def test_verify_fails_on_drift_with_exit_3(mirror: Path) -> None:
    target, ctx = applied()
    target.put(LOADER, EDITED)

    assert engine.verify(ctx) == CheckFailed.exit_code == 3

    assert checks(ctx) == [
        ("patched", True),
        (f"unchanged {LOADER}", False),
        (f"unchanged {SCRIPT}", True),
        ("healthy", True),
    ]
    assert ctx.result.status == "failed"
    assert target.writes == []
    assert_files(target, {**PATCHED, LOADER: EDITED})


def test_verify_fails_when_the_server_is_down_or_nothing_is_applied(mirror: Path) -> None:
    target, ctx = applied()
    target.server = None
    assert engine.verify(ctx) == 3
    assert checks(ctx)[-1] == ("healthy", False)

    target.boot_now()
    engine.rollback(next_command(target), restart=True, force=False)
    later = next_command(target)
    assert engine.verify(later) == 3
    assert checks(later) == [("patched", False)]


# --------------------------------------------------------------------------- 8. dry run


def test_dry_run_writes_nothing_at_all(mirror: Path) -> None:
    target = make_target()
    ctx = make_ctx(target)

    assert engine.apply(ctx, make_plan(target), dry_run=True, restart=True) == 0

    assert target.writes == []
    assert target.execs == []  # no `test -w`, no compile check, no ledger folder
    assert target.restart_calls == 0
    assert target.digests() == {p: sha256(d) for p, d in ORIGINALS.items()}
    assert not mirror.parent.exists()  # nor on this host
    r = ctx.result
    assert (r.status, r.patch, r.files) == ("dry-run", PATCH, ROWS)


# --------------------------------------------------------------------------- 9. --no-restart


def test_no_restart_applies_without_restarting(mirror: Path) -> None:
    target = make_target()
    ctx = make_ctx(target)

    assert engine.apply(ctx, make_plan(target), dry_run=False, restart=False) == 0

    assert target.ledger_states == ["writing", "written", "applied"]
    data = ledger(target)
    assert data["state"] == "applied"
    assert events(data) == ["applied (not restarted)"]
    assert_files(target, PATCHED)
    assert_mirror(mirror, "applied")
    assert (target.restart_calls, target.start_calls) == (0, 0)
    assert target.server == ORIGINAL_ARGV  # the old code runs until the next start
    assert (ctx.result.status, ctx.result.argv) == ("applied", UNSET)
    assert ctx.result.files == WRITTEN_ROWS


# --------------------------------------------------------------------------- refusals


def test_a_file_that_cannot_be_replaced_is_refused_before_any_write(mirror: Path) -> None:
    target = make_target()
    target.read_only.add(SCRIPT)
    ctx = make_ctx(target)

    with pytest.raises(BadInput, match="not writable"):
        engine.apply(ctx, make_plan(target), dry_run=False, restart=True)

    assert ctx.result.files == outcome_rows("unchanged")
    assert target.writes == []  # every path is checked before the compile copies are made
    assert_files(target, ORIGINALS, stored=())
    assert not mirror.exists()
    assert target.restart_calls == 0


def test_a_rewrite_that_does_not_compile_in_the_target_is_refused(mirror: Path) -> None:
    target = make_target()
    plan = make_plan(target)
    broken = FileEdit(LOADER, LOADER_BEFORE, LOADER_AFTER + b"def (:\n", plan.edits[0].stat)
    plan.edits[0] = broken
    ctx = make_ctx(target)

    with pytest.raises(BadInput, match="(?s)does not compile in the target.*SyntaxError"):
        engine.apply(ctx, plan, dry_run=False, restart=True)

    assert ctx.result.files == outcome_rows("unchanged")
    assert_files(target, ORIGINALS, stored=())  # the temp copy in /tmp is gone again
    assert not mirror.exists()


def test_applying_over_an_applied_patch_is_refused_and_an_unchanged_plan_is_done(
    mirror: Path,
) -> None:
    target, ctx = applied()
    other = make_plan(target)  # from the patched files: nothing left to change
    assert not other.changed
    assert engine.apply(ctx, other, dry_run=False, restart=True) == 0
    assert ctx.result.status == "already-applied"

    further = Plan(
        PATCH, [FileEdit(MAIN, MAIN_BYTES, MAIN_BYTES + b"#\n", other.edits[0].stat)], Report()
    )
    with pytest.raises(BadInput, match="roll it back first"):
        engine.apply(next_command(target), further, dry_run=False, restart=True)
    assert target.writes == []
    assert_files(target, PATCHED)


# --------------------------------------------------------------------------- the fake itself


def test_the_memory_target_refuses_commands_it_does_not_know() -> None:
    """So a new program the engine sends fails a test here instead of passing silently."""
    target = make_target()
    r = target.exec(["docker", "restart", "x"])
    assert r.exit_code == 127
    assert b"unsupported command" in r.stderr
    assert target.host_pids() == [SERVER_PID]


def test_the_ledger_folder_is_located_made_and_removed_without_a_trace(mirror: Path) -> None:
    """The session's bookkeeping through the fake's exec: locate (the writable probe),
    ensure_folder (mkdir -p), and remove_empty (rm -rf, then rmdir of an empty parent)
    for a command refused before it wrote anything."""
    target = make_target()
    assert LedgerStore.locate(target, ROOT).folder == LEDGER_DIR
    store = LedgerStore(target, LEDGER_DIR)
    store.ensure_folder()
    assert target.exists(f"{LEDGER_DIR}/files")
    store.remove_empty()
    assert not target.exists("/var/lib/qpatch")
    assert target.exists("/var/lib")
    assert target.writes == []

    target.read_only.add("/var/lib")  # no /var/lib/qpatch to be made: beside ComfyUI then
    assert LedgerStore.locate(target, ROOT).folder == f"{ROOT}/.qpatch/{KEY}"
