"""The rewritten loader, run for real on CPU torch next to the original.

The same numbers come out; with autograd on (as a node turns it on inside ComfyUI's
inference mode) fewer tensors are kept for backward, which is the point of the patch; and
IS_CHANGED stays equal until the model's files change.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from qpatch.codemods import run_codemod

torch = pytest.importorskip("torch")

MODEL = '''
"""A tiny DiT with the loading API of diffusers and transformers models."""

import os

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.gradient_checkpointing = False  # the flag the post's setattr trick looks for

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class TinyDiT(nn.Module):
    def __init__(self, width=16, depth=3):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, width)

    def forward(self, x, t=None, *, scale=1.0):
        if t is not None:
            x = x + t[:, None, None]
        for block in self.blocks:
            x = block(x)
        return self.out(x) * scale

    @classmethod
    def from_pretrained(cls, path):
        model = cls()
        state = torch.load(os.path.join(path, "weights.pt"), weights_only=True)
        model.load_state_dict(state)
        return model
'''

LOADER = '''
"""A node shaped like the community Qwen-Image loader (加载器)."""

import torch

from tiny_dit import TinyDiT


class TinyLoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_path": ("STRING",), "steps": ("INT", {"default": 2})}}

    def load(self, model_path):
        self.model = TinyDiT.from_pretrained(model_path)
        self.model.eval()

    def run(self, model_path, steps, x):
        self.load(model_path)
        for i in range(steps):
            t = torch.full((x.shape[0],), 1.0 - i / steps)
            x = x - self.model(x, t, scale=0.5) / steps
        return (self.model.forward(x),)
'''


def import_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model folder written by the tiny model, which loaders import as `tiny_dit`."""
    (tmp_path / "tiny_dit.py").write_text(MODEL)
    tiny_dit = import_file(tmp_path / "tiny_dit.py", "tiny_dit")
    monkeypatch.setitem(sys.modules, "tiny_dit", tiny_dit)  # gone again after the test
    torch.manual_seed(0)
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    torch.save(tiny_dit.TinyDiT().state_dict(), folder / "weights.pt")
    return folder


@pytest.fixture
def loaders(tmp_path: Path, weights: Path) -> tuple[Any, Any]:
    """The node class as written, and as both codemods rewrite it."""
    (tmp_path / "original.py").write_text(LOADER)
    source = LOADER.encode()
    for name in ("gradient-checkpointing", "is-changed"):
        source, _ = run_codemod(name, source, path="loader.py")
    (tmp_path / "patched.py").write_bytes(source)
    original = import_file(tmp_path / "original.py", "loader_original").TinyLoader
    patched = import_file(tmp_path / "patched.py", "loader_patched").TinyLoader
    return original, patched


def run_node(node_class: Any, weights: Path, *, autograd: bool) -> tuple[Any, Any, int]:
    """Run the node as ComfyUI does (inside inference mode), with autograd turned back on
    like some nodes do when `autograd`; returns output, node and tensors saved for backward."""
    saved = 0

    def pack(tensor: Any) -> Any:
        nonlocal saved
        saved += 1
        return tensor

    node = node_class()
    with torch.inference_mode():
        if not autograd:
            return node.run(str(weights), 2, torch.ones(2, 4, 16))[0], node, saved
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.ones(2, 4, 16, requires_grad=True)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                out = node.run(str(weights), 2, x)[0]
            out.sum().backward()
            return (out.detach(), x.grad), node, saved


def test_same_output_in_inference_mode(loaders: tuple[Any, Any], weights: Path) -> None:
    original, patched = loaders
    expected, _, _ = run_node(original, weights, autograd=False)
    actual, _, _ = run_node(patched, weights, autograd=False)
    assert torch.equal(actual, expected)


def test_with_autograd_on_same_output_and_gradient_fewer_saved_tensors(
    loaders: tuple[Any, Any], weights: Path
) -> None:
    original, patched = loaders
    (expected, expected_grad), _, saved_before = run_node(original, weights, autograd=True)
    (actual, actual_grad), node, saved_after = run_node(patched, weights, autograd=True)
    assert torch.equal(actual, expected)
    assert torch.allclose(actual_grad, expected_grad)
    assert saved_after < saved_before
    assert all(block.gradient_checkpointing for block in node.model.blocks)


def test_is_changed_is_stable_until_the_model_files_change(
    loaders: tuple[Any, Any], weights: Path
) -> None:
    _, patched = loaders
    first = patched.IS_CHANGED(model_path=str(weights), steps=2)
    assert first == patched.IS_CHANGED(model_path=str(weights), steps=2)
    assert first != patched.IS_CHANGED(model_path=str(weights), steps=3)
    stat = (weights / "weights.pt").stat()
    os.utime(weights / "weights.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert patched.IS_CHANGED(model_path=str(weights), steps=2) != first


def test_is_changed_finds_a_model_name_under_comfyui_models(
    loaders: tuple[Any, Any], weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside ComfyUI the input is a name under models/<folder>/, found via folder_paths."""
    comfy = tmp_path / "comfy"
    comfy.mkdir()
    models_dir = weights.parent.parent
    (comfy / "folder_paths.py").write_text(
        f"models_dir = {str(models_dir)!r}\nfolder_names_and_paths = {{}}\n"
    )
    folder_paths = import_file(comfy / "folder_paths.py", "folder_paths")
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)  # gone again after the test
    _, patched = loaders
    first = patched.IS_CHANGED(model_path="tiny", steps=2)
    assert str(weights / "weights.pt") in first
    stat = (weights / "weights.pt").stat()
    os.utime(weights / "weights.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert patched.IS_CHANGED(model_path="tiny", steps=2) != first


class Supported:
    """Like a diffusers model that supports checkpointing: its switch does the work."""

    def __init__(self) -> None:
        self.switched = False

    def enable_gradient_checkpointing(self) -> None:
        self.switched = True


class Unsupported:
    """Like a diffusers model that does not: its switch raises."""

    def enable_gradient_checkpointing(self) -> None:
        raise ValueError("Unsupported does not support gradient checkpointing.")


class TransformersLike:
    def __init__(self) -> None:
        self.switched = False

    def gradient_checkpointing_enable(self) -> None:
        self.switched = True


ENABLE_SOURCE = textwrap.dedent(
    """\
    def load(factory):
        model = factory.from_pretrained("weights")
        return model

    def run(model, x):
        return model(x)
    """
).encode()


@pytest.mark.parametrize(
    "loaded",
    [None, "a string", object(), Supported(), Unsupported(), TransformersLike()],
    ids=repr,
)
def test_enable_statement_is_harmless_on_any_object(loaded: object) -> None:
    rewritten, _ = run_codemod("gradient-checkpointing", ENABLE_SOURCE, path="n.py")
    namespace: dict[str, Any] = {}
    exec(compile(rewritten, "n.py", "exec"), namespace)
    assert namespace["load"](types.SimpleNamespace(from_pretrained=lambda path: loaded)) is loaded
    assert getattr(loaded, "switched", True)


def test_enable_statement_on_modules_without_the_flag() -> None:
    rewritten, _ = run_codemod("gradient-checkpointing", ENABLE_SOURCE, path="n.py")
    namespace: dict[str, Any] = {}
    exec(compile(rewritten, "n.py", "exec"), namespace)
    linear = torch.nn.Linear(2, 2)
    assert namespace["load"](types.SimpleNamespace(from_pretrained=lambda path: linear)) is linear
    assert not hasattr(linear, "gradient_checkpointing")
    x = torch.ones(1, 2, requires_grad=True)
    assert torch.equal(namespace["run"](linear, x), linear(x))


def test_forward_call_still_skips_module_hooks() -> None:
    """`X.forward(...)` bypasses nn.Module hooks; `checkpoint(X.forward, ...)` must too."""
    source = b"model = M.from_pretrained('m')\n\ndef run(x):\n    return model.forward(x)\n"
    rewritten, _ = run_codemod("gradient-checkpointing", source, path="n.py")
    linear = torch.nn.Linear(2, 2)
    linear.register_forward_hook(lambda module, args, output: output * 0)
    namespace: dict[str, Any] = {"M": types.SimpleNamespace(from_pretrained=lambda path: linear)}
    exec(compile(rewritten, "n.py", "exec"), namespace)
    x = torch.ones(1, 2, requires_grad=True)
    assert torch.equal(namespace["run"](x), linear.forward(x))
    assert not torch.equal(linear(x), linear.forward(x))
