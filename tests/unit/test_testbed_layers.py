"""The test-bed image's tags are a function of its inputs' contents: a second clone, another
umask or a stand-in that has been run (and wrote models/ and __pycache__/) names the same
images; a change to our node names a new top layer only."""

from __future__ import annotations

import shutil
from pathlib import Path

from qpatch import testbed


def clone(dest: Path) -> Path:
    shutil.copytree(testbed.TESTBED, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_same_tags_from_another_path_umask_and_after_a_run(tmp_path: Path) -> None:
    other = clone(tmp_path / "elsewhere" / "testbed")
    for p in other.rglob("*"):
        p.chmod(p.stat().st_mode | 0o020)  # a umask of 002
    ran = other / "comfyui"
    (ran / "models" / "qwen_image").mkdir(parents=True)
    (ran / "models" / "qwen_image" / "model.pt").write_bytes(b"weights")
    (ran / "__pycache__").mkdir()
    (ran / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"bytecode")
    assert testbed.layers(other) == testbed.layers(testbed.TESTBED)


def test_a_changed_node_changes_only_the_top_layer(tmp_path: Path) -> None:
    other = clone(tmp_path / "testbed")
    loader = other / "custom_nodes" / "comfyui_qwen_image" / "qwen_image_loader.py"
    loader.write_text(loader.read_text() + "\n# changed\n")
    before, after = testbed.layers(testbed.TESTBED), testbed.layers(other)
    assert (after.base_tag, after.deps_tag) == (before.base_tag, before.deps_tag)
    assert after.final_tag != before.final_tag


def test_the_executable_bit_counts(tmp_path: Path) -> None:
    other = clone(tmp_path / "testbed")
    main = other / "comfyui" / "main.py"
    main.chmod(main.stat().st_mode | 0o111)
    assert testbed.layers(other).final_tag != testbed.layers(testbed.TESTBED).final_tag
