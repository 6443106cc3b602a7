"""The rewritten loader, run for real on CPU torch next to the original.

The same numbers come out; with autograd on (as a node turns it on inside ComfyUI's
inference mode) the default rewrite keeps for backward exactly what the inference run keeps
(nothing) at 1, 5 or 50 chained steps, and `autograd: keep` keeps fewer tensors than the
original with the same gradient; and IS_CHANGED stays equal until the model's files change.
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
"""A node shaped like the community Qwen-Image loader (加载器): a chained sampling loop."""

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

    def run(self, model_path, steps, x, autograd=True):
        self.load(model_path)
        with torch.inference_mode(not autograd), torch.set_grad_enabled(autograd):
            for i in range(steps):
                t = torch.full((x.shape[0],), 1.0 - i / steps)
                x = x - self.model(x, t, scale=0.5) / steps  # chained: no detach
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


def patched_loader(tmp_path: Path, name: str, **options: Any) -> Any:
    """The node class as both codemods rewrite it, checkpointing with `options`."""
    source, _ = run_codemod("gradient-checkpointing", LOADER.encode(), path="l.py", options=options)
    source, _ = run_codemod("is-changed", source, path="loader.py")
    (tmp_path / f"{name}.py").write_bytes(source)
    return import_file(tmp_path / f"{name}.py", f"loader_{name}").TinyLoader


@pytest.fixture
def loaders(tmp_path: Path, weights: Path) -> tuple[Any, Any, Any]:
    """The node class as written, patched by default (autograd: auto, so off: the node never
    asks for gradients), and patched with autograd: keep (checkpoint only)."""
    (tmp_path / "original.py").write_text(LOADER)
    original = import_file(tmp_path / "original.py", "loader_original").TinyLoader
    return (
        original,
        patched_loader(tmp_path, "auto"),
        patched_loader(tmp_path, "keep", autograd="keep"),
    )


def run_node(
    node_class: Any, weights: Path, *, autograd: bool, steps: int = 2, backward: bool = False
) -> tuple[Any, Any, int]:
    """Run the node as ComfyUI does (inside inference mode; with `autograd` the node turns it
    back on); returns the output (and the input's gradient after `backward`), the node, and
    how many tensors autograd saved for a backward pass."""
    saved = 0

    def pack(tensor: Any) -> Any:
        nonlocal saved
        saved += 1
        return tensor

    node = node_class()
    with torch.inference_mode():
        if not autograd:
            return node.run(str(weights), steps, torch.ones(2, 4, 16), False)[0], node, saved
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.ones(2, 4, 16, requires_grad=backward)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                out = node.run(str(weights), steps, x)[0]
            if backward:
                out.sum().backward()
                return (out.detach(), x.grad), node, saved
            return out.detach(), node, saved


def test_same_output_in_inference_mode(loaders: tuple[Any, Any, Any], weights: Path) -> None:
    original, *patched = loaders
    expected, _, _ = run_node(original, weights, autograd=False)
    for node_class in patched:
        actual, _, _ = run_node(node_class, weights, autograd=False)
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("steps", [1, 5, 50])
def test_autograd_off_keeps_what_inference_keeps_at_any_step_count(
    loaders: tuple[Any, Any, Any], weights: Path, steps: int
) -> None:
    """The chained loop: unpatched, every step keeps its graph for a backward pass that never
    comes; checkpointed with autograd kept, one input per step; patched by default, nothing —
    the same as the inference run — and the output is the same."""
    original, auto, keep = loaders
    floor, _, saved_floor = run_node(original, weights, autograd=False, steps=steps)
    expected, _, saved_before = run_node(original, weights, autograd=True, steps=steps)
    actual, _, saved_after = run_node(auto, weights, autograd=True, steps=steps)
    _, _, saved_keep = run_node(keep, weights, autograd=True, steps=steps)
    assert torch.equal(actual, expected) and torch.equal(actual, floor)
    assert saved_after == saved_floor == 0
    assert 0 < saved_keep < saved_before


def test_autograd_keep_same_output_and_gradient_fewer_saved_tensors(
    loaders: tuple[Any, Any, Any], weights: Path
) -> None:
    original, _, keep = loaders
    (expected, expected_grad), _, saved_before = run_node(
        original, weights, autograd=True, backward=True
    )
    (actual, actual_grad), node, saved_after = run_node(keep, weights, autograd=True, backward=True)
    assert torch.equal(actual, expected)
    assert torch.allclose(actual_grad, expected_grad)
    assert saved_after < saved_before
    assert all(block.gradient_checkpointing for block in node.model.blocks)


def test_is_changed_is_stable_until_the_model_files_change(
    loaders: tuple[Any, Any, Any], weights: Path
) -> None:
    _, patched, _ = loaders
    first = patched.IS_CHANGED(model_path=str(weights), steps=2)
    assert first == patched.IS_CHANGED(model_path=str(weights), steps=2)
    assert first != patched.IS_CHANGED(model_path=str(weights), steps=3)
    stat = (weights / "weights.pt").stat()
    os.utime(weights / "weights.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert patched.IS_CHANGED(model_path=str(weights), steps=2) != first


def test_is_changed_finds_a_model_name_under_comfyui_models(
    loaders: tuple[Any, Any, Any],
    weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
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
    _, patched, _ = loaders
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
    import torch


    class Node:
        def load(self, factory):
            self.model = factory.from_pretrained("weights")
            return self.model

        @torch.inference_mode(False)
        def run(self, x):
            return self.model(x)
    """
).encode()


def enable_node() -> Any:
    """ENABLE_SOURCE's node, checkpointed with autograd kept (where the statement goes in)."""
    rewritten, _ = run_codemod(
        "gradient-checkpointing", ENABLE_SOURCE, path="n.py", options={"autograd": "keep"}
    )
    assert b"enable_gradient_checkpointing" in rewritten
    namespace: dict[str, Any] = {}
    exec(compile(rewritten, "n.py", "exec"), namespace)
    return namespace["Node"]()


@pytest.mark.parametrize(
    "loaded",
    [None, "a string", object(), Supported(), Unsupported(), TransformersLike()],
    ids=repr,
)
def test_enable_statement_is_harmless_on_any_object(loaded: object) -> None:
    node = enable_node()
    assert node.load(types.SimpleNamespace(from_pretrained=lambda path: loaded)) is loaded
    assert getattr(loaded, "switched", True)


def test_enable_statement_on_modules_without_the_flag() -> None:
    node = enable_node()
    linear = torch.nn.Linear(2, 2)
    assert node.load(types.SimpleNamespace(from_pretrained=lambda path: linear)) is linear
    assert not hasattr(linear, "gradient_checkpointing")
    x = torch.ones(1, 2, requires_grad=True)
    assert torch.equal(node.run(x), linear(x))


def test_forward_call_still_skips_module_hooks() -> None:
    """`X.forward(...)` bypasses nn.Module hooks; `checkpoint(X.forward, ...)` must too."""
    source = b"import torch\nmodel = M.from_pretrained('m')\n\n@torch.inference_mode(False)\n"
    source += b"def run(x):\n    return model.forward(x)\n"
    rewritten, _ = run_codemod("gradient-checkpointing", source, path="n.py")
    linear = torch.nn.Linear(2, 2)
    linear.register_forward_hook(lambda module, args, output: output * 0)
    namespace: dict[str, Any] = {"M": types.SimpleNamespace(from_pretrained=lambda path: linear)}
    exec(compile(rewritten, "n.py", "exec"), namespace)
    x = torch.ones(1, 2, requires_grad=True)
    assert torch.equal(namespace["run"](x), linear.forward(x))
    assert not torch.equal(linear(x), linear.forward(x))
