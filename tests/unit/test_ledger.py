"""Ledger JSON: a recreated container's record round-trips, and older ledgers still load."""

from __future__ import annotations

import json

from qpatch.ledger import FileRecord, Ledger, Recreated


def test_a_ledger_written_before_recreate_existed_still_loads() -> None:
    old = {
        "target": "comfy",
        "key": "docker-comfy",
        "patch": "qwen-image-2512",
        "state": "applied",
        "comfyui_root": "/root/ComfyUI",
        "files": [dict(path="/a.py", sha256_before="1", sha256_after="2", mode=420, uid=0, gid=0)],
    }
    ledger = Ledger.from_json(old)
    assert ledger.recreate is None
    assert ledger.files == [FileRecord("/a.py", "1", "2", 420, 0, 0)]


def test_the_recreate_record_round_trips() -> None:
    ledger = Ledger("comfy", "docker-comfy", "p", "applied", "/root/ComfyUI")
    ledger.recreate = Recreated(
        name="comfy",
        original_id="a" * 64,
        backup_name="comfy-qpatch-original",
        restart_policy={"Name": "unless-stopped", "MaximumRetryCount": 0},
        image="qpatch-recreate:comfy-aaaaaaaaaaaa",
        image_id="sha256:" + "b" * 64,
        replacement_id="c" * 64,
        cmd=["python", "main.py", "--bf16-unet"],
        env=["PATH=/bin", "X=1"],
    )
    again = Ledger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert again == ledger
