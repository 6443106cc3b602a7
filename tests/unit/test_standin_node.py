"""Unit tests of the Qwen-Image stand-in node on the host's CPU torch (no ComfyUI needed).

The node is what qpatch patches and measures, so these tests pin what the rest of the
project relies on: the codemod targets keep their shape, autograd really is on (and off)
inside ComfyUI's torch.inference_mode(), reloads are counted, and /history gets its JSON.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

NODE_DIR = Path(__file__).resolve().parents[2] / "testbed" / "custom_nodes" / "comfyui_qwen_image"


@pytest.fixture(scope="module")
def pkg() -> Iterator[Any]:
    """The node package, imported by path the way scripts and tests must (no ComfyUI)."""
    sys.path.insert(0, str(NODE_DIR.parent))
    try:
        yield importlib.import_module("comfyui_qwen_image")
    finally:
        sys.path.remove(str(NODE_DIR.parent))


@pytest.fixture(scope="module")
def qim(pkg: Any) -> Any:
    return importlib.import_module("comfyui_qwen_image.qwen_image_model")


@pytest.fixture(scope="module")
def loader(pkg: Any) -> Any:
    return importlib.import_module("comfyui_qwen_image.qwen_image_loader")


def defaults(node_cls: Any, **overrides: Any) -> dict[str, Any]:
    """The node's widget defaults, as the ComfyUI frontend would send them."""
    inputs = {name: spec[1]["default"] for name, spec in node_cls.INPUT_TYPES()["required"].items()}
    inputs.update(overrides)
    return inputs


def execute(node: Any, **inputs: Any) -> dict[str, Any]:
    """Call the node's FUNCTION inside torch.inference_mode(), exactly as ComfyUI's
    execution.py does, and return the JSON it puts in the ui text."""
    with torch.inference_mode():
        result = getattr(node, node.FUNCTION)(**inputs)
    assert set(result) == {"ui"}
    (text,) = result["ui"]["text"]
    return json.loads(text)


class SavedTensorCounter:
    """Counts tensors autograd saves for backward (real torch hooks, no mocks)."""

    def __init__(self) -> None:
        self.count = 0

    def pack(self, t: Any) -> Any:
        self.count += 1
        return t

    def hooks(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


# -- the model ---------------------------------------------------------------------------


def test_model_file_imports_standalone() -> None:
    """scripts/bench_vram.py loads qwen_image_model.py by path, outside the package."""
    spec = importlib.util.spec_from_file_location(
        "qim_standalone", NODE_DIR / "qwen_image_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.QwenImageModel.from_pretrained


def test_save_load_round_trip_is_exact(qim: Any, tmp_path: Path) -> None:
    config = qim.QwenImageConfig(blocks=2, width=32, heads=2, vocab=50, in_channels=8)
    model = qim.QwenImageModel.create_seeded(None, config, seed=3)
    model.save_pretrained(tmp_path / "m")
    loaded = qim.QwenImageModel.from_pretrained(tmp_path / "m")
    assert loaded.config == config
    original, again = model.state_dict(), loaded.state_dict()
    assert list(original) == list(again)
    for name in original:
        assert torch.equal(original[name], again[name]), name
    assert all(p.requires_grad for p in loaded.parameters())
    assert not list(tmp_path.glob(".*tmp*")), "temporary save folder left behind"

    half = qim.QwenImageModel.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_seeded_creation_is_deterministic(qim: Any, tmp_path: Path) -> None:
    config = qim.QwenImageConfig(blocks=1, width=16, heads=2, vocab=10, in_channels=4)
    a = qim.QwenImageModel.create_seeded(tmp_path / "a", config, seed=7).state_dict()
    b = qim.QwenImageModel.create_seeded(tmp_path / "b", config, seed=7).state_dict()
    c = qim.QwenImageModel.create_seeded(None, config, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.qkv.weight"], c["blocks.0.qkv.weight"])
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def test_param_count_formula(qim: Any) -> None:
    config = qim.QwenImageConfig(blocks=3, width=48, heads=4, vocab=100, in_channels=16)
    model = qim.QwenImageModel(config)
    w = config.width
    embeddings = config.vocab * w + (16 * w + w) + (w * 16 + 16) + 2 * w
    assert sum(p.numel() for p in model.parameters()) == config.param_count()
    assert config.param_count() == config.blocks * (12 * w * w + 13 * w) + embeddings


def test_reference_size_is_8_44_gib_of_bf16(qim: Any) -> None:
    """40 blocks x width 3072 x 24 heads: counted on the meta device, nothing allocated."""
    config = qim.QwenImageConfig(blocks=40, width=3072, heads=24)
    with torch.device("meta"):
        model = qim.QwenImageModel(config)
    params = sum(p.numel() for p in model.parameters())
    assert params == config.param_count()
    assert params * 2 / 2**30 == pytest.approx(8.44, abs=0.01)


def test_config_rejects_heads_not_dividing_width(qim: Any) -> None:
    with pytest.raises(ValueError, match="divisible"):
        qim.QwenImageConfig(width=64, heads=5)


# -- the node ----------------------------------------------------------------------------


def test_package_loads_the_way_comfyui_loads_custom_nodes() -> None:
    """nodes.load_custom_node: spec_from_file_location(<folder path>, __init__.py)."""
    name = str(NODE_DIR).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, NODE_DIR / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert list(module.NODE_CLASS_MAPPINGS) == ["QwenImageLoader"]
        assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == {"QwenImageLoader"}
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_input_types_are_valid_for_comfyui(pkg: Any) -> None:
    node_cls = pkg.NODE_CLASS_MAPPINGS["QwenImageLoader"]
    spec = node_cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    expected = {"model_name", "blocks", "width", "heads", "tokens", "text_tokens", "batch"}
    expected |= {"steps", "dtype", "autograd", "seed"}
    assert set(spec["required"]) == expected
    for name, entry in spec["required"].items():
        assert isinstance(entry, tuple) and len(entry) == 2, name
        kind, opts = entry
        assert isinstance(opts, dict) and "default" in opts, name
        if isinstance(kind, list):
            assert opts["default"] in kind, name
        elif kind == "INT":
            assert opts["min"] <= opts["default"] <= opts["max"], name
        else:
            assert kind in {"STRING", "BOOLEAN"}, name
    assert node_cls.RETURN_TYPES == ()
    assert node_cls.OUTPUT_NODE is True
    assert callable(getattr(node_cls, node_cls.FUNCTION))
    assert not hasattr(node_cls, "IS_CHANGED"), "qpatch adds IS_CHANGED; the stand-in has none"


def test_codemod_targets_keep_their_shape() -> None:
    """qpatch rewrites exactly these two statements; keep one of each."""
    tree = ast.parse((NODE_DIR / "qwen_image_loader.py").read_text())
    statements = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Assign)]
    loads = [s for s in statements if s.startswith("self.model = ") and "from_pretrained" in s]
    calls = [s for s in statements if re.fullmatch(r"output = self\.model\(.*\)", s)]
    assert loads == ["self.model = QwenImageModel.from_pretrained(model_path, torch_dtype=dtype)"]
    assert calls == ["output = self.model(input_ids, pixel_values, timestep)"]


def test_run_with_autograd_inside_inference_mode(
    pkg: Any, loader: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node_cls = pkg.NODE_CLASS_MAPPINGS["QwenImageLoader"]
    node = node_cls()
    counter = SavedTensorCounter()
    with counter.hooks():
        report = execute(node, **defaults(node_cls, model_name=str(tmp_path), autograd=True))

    assert counter.count > 0, "autograd on must save tensors for backward"
    assert report["output_has_grad_fn"] is True
    assert not any(p.is_inference() for p in node.model.parameters())
    assert all(p.requires_grad for p in node.model.parameters())
    assert set(report) >= {
        "loads",
        "steps",
        "step_time_s",
        "peak_allocated_bytes",
        "output_checksum",
        "device",
        "dtype",
        "autograd",
    }
    assert report["steps"] == 2 and len(report["step_times_s"]) == 2
    assert report["peak_allocated_bytes"] is None  # CPU: not measured
    assert report["device"] == "cpu" and report["dtype"] == "fp32" and report["autograd"] is True
    assert math.isfinite(report["output_checksum"])
    model_path = tmp_path / "2x64-h4-fp32"
    assert Path(report["model_path"]) == model_path
    assert (model_path / "config.json").is_file()
    log = capsys.readouterr().out
    assert re.search(
        rf"^\[qwen_image\] load #{report['loads']} {re.escape(str(model_path))} ", log, re.M
    )


def test_run_without_autograd_keeps_no_graph_and_gives_the_same_output(
    pkg: Any, tmp_path: Path
) -> None:
    node_cls = pkg.NODE_CLASS_MAPPINGS["QwenImageLoader"]
    node = node_cls()
    counter = SavedTensorCounter()
    with counter.hooks():
        off = execute(node, **defaults(node_cls, model_name=str(tmp_path), autograd=False))
    assert counter.count == 0
    assert off["output_has_grad_fn"] is False and off["autograd"] is False
    on = execute(node, **defaults(node_cls, model_name=str(tmp_path), autograd=True))
    assert on["output_checksum"] == pytest.approx(off["output_checksum"], rel=1e-5)
    other_seed = execute(node, **defaults(node_cls, model_name=str(tmp_path), seed=1))
    assert other_seed["output_checksum"] != pytest.approx(on["output_checksum"], rel=1e-5)


def test_chained_loop_gives_the_same_output(pkg: Any, tmp_path: Path) -> None:
    """`chained` is the sampler as real nodes write it (no detach between steps): the same
    numbers; what it keeps alive on a GPU is measured by tests/gpu, not asserted here."""
    node_cls = pkg.NODE_CLASS_MAPPINGS["QwenImageLoader"]
    node = node_cls()
    reports = [
        execute(node, **defaults(node_cls, model_name=str(tmp_path), steps=4), chained=chained)
        for chained in (False, True)
    ]
    assert [r["chained"] for r in reports] == [False, True]
    assert reports[1]["output_checksum"] == pytest.approx(reports[0]["output_checksum"], rel=1e-5)


def test_every_execution_reloads_and_is_counted(
    pkg: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ComfyUI's cache is what spares a reload; the node itself always loads."""
    node_cls = pkg.NODE_CLASS_MAPPINGS["QwenImageLoader"]
    node = node_cls()
    inputs = defaults(node_cls, model_name=str(tmp_path), steps=1)
    first = execute(node, **inputs)["loads"]
    second = execute(node, **inputs)["loads"]
    third = execute(node_cls(), **inputs)["loads"]
    assert (second, third) == (first + 1, first + 2)
    assert len(re.findall(r"^\[qwen_image\] load #\d+ ", capsys.readouterr().out, re.M)) == 3


def test_relative_model_name_resolves_under_cwd_without_comfyui(
    loader: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = loader.model_path_for("standin", 40, 3072, 24, "bf16")
    assert path == tmp_path / "qwen_image" / "standin" / "40x3072-h24-bf16"
    assert loader.model_path_for("/abs/m", 2, 64, 4, "fp32") == Path("/abs/m/2x64-h4-fp32")


def test_checkpointed_call_matches_and_saves_less(qim: Any, loader: Any) -> None:
    """The premise of the whole patch, on this model: under the node's autograd mode a
    whole-model torch.utils.checkpoint gives the same output and keeps fewer tensors."""
    from torch.utils.checkpoint import checkpoint

    config = qim.QwenImageConfig(blocks=2, width=32, heads=4, vocab=20, in_channels=8)
    with torch.inference_mode(), loader.autograd_mode(True):
        model = qim.QwenImageModel.create_seeded(None, config, seed=0)
        ids = torch.randint(0, 20, (1, 5))
        pixels, t = torch.randn(1, 12, 8), torch.ones(1)
        plain, ckpt = SavedTensorCounter(), SavedTensorCounter()
        with plain.hooks():
            expected = model(ids, pixels, t)
        with ckpt.hooks():
            got = checkpoint(model, ids, pixels, t, use_reentrant=False)
    assert torch.allclose(got, expected)
    assert got.grad_fn is not None
    assert 0 < ckpt.count < plain.count


@pytest.mark.parametrize(
    "name", ["qwen_image_standin.json", "qwen_image_h100.json", "qwen_image_h100_inference.json"]
)
def test_example_workflows_match_the_node(pkg: Any, name: str) -> None:
    """The API-format workflows qpatch ships must pass ComfyUI's input validation."""
    workflow = json.loads((NODE_DIR.parents[2] / "examples" / "workflows" / name).read_text())
    (node,) = workflow.values()
    assert node["class_type"] in pkg.NODE_CLASS_MAPPINGS
    spec = pkg.NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()["required"]
    assert set(node["inputs"]) == set(spec)
    for key, value in node["inputs"].items():
        kind, opts = spec[key]
        if isinstance(kind, list):
            assert value in kind, key
        elif kind == "INT":
            assert isinstance(value, int) and opts["min"] <= value <= opts["max"], key
        elif kind == "BOOLEAN":
            assert isinstance(value, bool), key
        else:
            assert isinstance(value, str), key
    if "h100" in name:
        inputs = node["inputs"]
        assert inputs["tokens"] + inputs["text_tokens"] == 4352
        assert inputs["autograd"] is ("inference" not in name)
