"""qpatch.baked: the labels a baked image carries and what they are read back as; and
the engine telling a container recreated from an unpatched image (the host's mirror
says applied, the container holds no ledger and has another ID) from one that is fine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qpatch import baked, engine
from qpatch.ledger import FileRecord, Ledger, State
from tests.unit.memory_target import Killed
from tests.unit.test_engine_states import (
    KEY,
    LOADER,
    LOADER_AFTER,
    LOADER_BEFORE,
    SCRIPT,
    make_ctx,
    make_plan,
    make_target,
    sha256,
)


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "qpatch" / KEY


def a_ledger() -> Ledger:
    files = [
        FileRecord("/a.py", "b" * 64, "a" * 64, 0o644, 0, 0),
        FileRecord("/root/1键启动.sh", "d" * 64, "c" * 64, 0o755, 0, 0),
    ]
    return Ledger(
        "c", "docker-c", "p", State.APPLIED, "/root/ComfyUI", files=files, patch_version="2"
    )


def test_labels_read_back_as_what_was_baked() -> None:
    labels = baked.labels_for(a_ledger(), source_image="img:1", container="c", qpatch_version="9")
    born = baked.read(labels)
    assert born is not None
    assert born.patch == "p" and born.patch_version == "2" and born.qpatch_version == "9"
    assert born.files == {"/a.py": "a" * 64, "/root/1键启动.sh": "c" * 64}
    assert born.originals == {"/a.py": "b" * 64, "/root/1键启动.sh": "d" * 64}
    assert born.source_image == "img:1" and born.baked_from == "c"
    assert all(k.startswith(baked.PREFIX) for k in labels)
    assert all(isinstance(v, str) for v in labels.values())  # Docker labels are strings


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"org.other": "x"},
        {baked.PATCH: "p"},  # no files: a hand-made label is no evidence
        {baked.PATCH: "p", baked.FILES: "not json"},
        {baked.PATCH: "p", baked.FILES: "[1, 2]"},
        {baked.PATCH: "p", baked.FILES: "{}"},
        {baked.PATCH: "p", baked.FILES: '{"/a": "x"}', baked.ORIGINALS: "{"},
    ],
)
def test_labels_not_of_qpatch_shape_are_not_baked(labels: dict[str, str]) -> None:
    assert baked.read(labels) is None


@pytest.mark.parametrize(
    ("now", "want"),
    [("a", baked.PATCHED), ("b", baked.ORIGINAL), ("z", baked.CHANGED), (None, baked.MISSING)],
)
def test_state_of_a_file(now: str | None, want: str) -> None:
    assert baked.state_of(now, "a", "b") == want


def test_a_container_recreated_from_the_original_image_is_reported(mirror: Path) -> None:
    target = make_target()
    target.instance = "container-1"
    ctx = make_ctx(target)
    assert engine.apply(ctx, make_plan(target), dry_run=False, restart=True) == 0
    assert json.loads((mirror / "ledger.json").read_text())["instance"] == "container-1"
    assert engine.verify(make_ctx(target)) == 0  # the same container: nothing to say

    again = make_target()  # docker rm + run: the original files, no ledger, another ID
    again.instance = "container-2"
    ctx = make_ctx(again)
    assert engine.verify(ctx) == 3
    assert ctx.result.status == "recreated-unpatched"
    assert "recreated" in ctx.result.checks[0]["detail"]
    ctx = make_ctx(again)
    assert engine.status(ctx) == 0 and ctx.result.status == "recreated-unpatched"
    ctx = make_ctx(again)
    assert engine.rollback(ctx, restart=True, force=False) == 0
    assert ctx.result.status == "nothing-to-roll-back"
    assert again.read_file(LOADER)[0] == LOADER_BEFORE  # nothing was written

    ctx = make_ctx(again)  # apply patches it again instead of asking for a rollback
    assert engine.apply(ctx, make_plan(again), dry_run=False, restart=True) == 0
    assert sha256(again.read_file(LOADER)[0]) == sha256(LOADER_AFTER)
    assert engine.verify(make_ctx(again)) == 0
    history = [h["event"] for h in json.loads((mirror / "ledger.json").read_text())["history"]]
    assert "recreated from an image without the patch" in history


def test_a_container_that_lost_only_its_ledger_is_not_called_recreated(mirror: Path) -> None:
    target = make_target()
    target.instance = "container-1"
    assert engine.apply(make_ctx(target), make_plan(target), dry_run=False, restart=True) == 0
    target.files.pop(f"/var/lib/qpatch/{KEY}/ledger.json")  # same ID: the mirror still holds
    ctx = make_ctx(target)
    assert engine.verify(ctx) == 0 and ctx.result.status == "ok"
    assert SCRIPT in {row["path"] for row in ctx.result.files}


def test_a_ledger_from_before_ids_were_kept_proves_no_recreation(mirror: Path) -> None:
    target = make_target()
    target.instance = "container-1"
    assert engine.apply(make_ctx(target), make_plan(target), dry_run=False, restart=True) == 0
    data = json.loads((mirror / "ledger.json").read_text())
    data["instance"] = None  # as every ledger written before this version
    (mirror / "ledger.json").write_text(json.dumps(data))
    again = make_target()
    again.instance = "container-2"
    ctx = make_ctx(again)
    assert engine.verify(ctx) == 3
    assert ctx.result.status == "failed"  # the files' drift says it, not "recreated"


def test_a_recreation_that_carries_the_edits_is_not_unpatched(mirror: Path) -> None:
    target = make_target()
    target.instance = "container-1"
    assert engine.apply(make_ctx(target), make_plan(target), dry_run=False, restart=True) == 0
    again = make_target()
    again.instance = "container-2"
    again.put(LOADER, LOADER_AFTER)  # an image made with the patched files in it
    again.put(SCRIPT, target.read_file(SCRIPT)[0], mode=0o755)
    ctx = make_ctx(again)
    assert engine.verify(ctx) == 0, ctx.result.checks


def test_a_run_interrupted_on_the_container_replaced_is_not_recovered_here(
    mirror: Path,
) -> None:
    target = make_target()
    target.instance = "container-1"
    target.kill_when = lambda op, path, data: op == "write" and path == SCRIPT
    with pytest.raises(Killed):
        engine.apply(make_ctx(target), make_plan(target), dry_run=False, restart=True)
    assert json.loads((mirror / "ledger.json").read_text())["state"] != "applied"
    again = make_target()  # recreated meanwhile from a newer image: no ledger
    again.instance = "container-2"
    again.put(LOADER, LOADER_BEFORE + b"# a newer release\n")
    before = {p: again.read_file(p)[0] for p in (LOADER, SCRIPT)}
    ctx = make_ctx(again)
    engine.recover_interrupted(ctx)
    assert {p: again.read_file(p)[0] for p in (LOADER, SCRIPT)} == before
    assert again.writes == []
