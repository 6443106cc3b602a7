"""run_codemod at the bytes level: encodings, newlines, idempotence, reports, big files."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import libcst as cst
import pytest
from libcst.codemod import CodemodContext

from qpatch.codemods import CODEMODS, run_codemod
from qpatch.codemods.segments import plan

SOURCE = """\
# 千问图像加载节点 (Qwen-Image loader node)
import torch


class QwenImageLoader:
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_path": ("STRING",)}}

    @torch.inference_mode(False)
    def run(self, model_path, x):
        self.model = QwenImageModel.from_pretrained(model_path)  # 加载模型
        self.model.eval()
        return (self.model(x),)  # 前向
"""

CHECKPOINTED = """\
# 千问图像加载节点 (Qwen-Image loader node)
import torch
from torch.utils.checkpoint import checkpoint


class QwenImageLoader:
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_path": ("STRING",)}}

    @torch.inference_mode(False)
    def run(self, model_path, x):
        self.model = QwenImageModel.from_pretrained(model_path)  # 加载模型
        self.model.eval()
        return (torch.no_grad()(checkpoint)(self.model, x, use_reentrant=False),)  # 前向
"""

BOM = b"\xef\xbb\xbf"
GBK = "# -*- coding: gbk -*-\n"

# Ways a file can be stored; each must survive a rewrite as it was.
VARIANTS: dict[str, Callable[[str], bytes]] = {
    "utf-8": lambda text: text.encode(),
    "utf-8 with BOM": lambda text: BOM + text.encode(),
    "CRLF": lambda text: text.replace("\n", "\r\n").encode(),
    "gbk (PEP 263)": lambda text: (GBK + text).encode("gbk"),
    "no final newline": lambda text: text.rstrip("\n").encode(),
    "tabs": lambda text: text.replace("    ", "\t").encode(),
}


def rewrite(name: str, source: bytes, **options: object) -> bytes:
    return run_codemod(name, source, path="qwen_image_loader.py", options=options)[0]


def test_checkpointing_the_loader() -> None:
    assert rewrite("gradient-checkpointing", SOURCE.encode()) == CHECKPOINTED.encode()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", CODEMODS)
def test_the_file_keeps_how_it_is_stored(name: str, variant: str) -> None:
    store = VARIANTS[variant]
    assert rewrite(name, store(SOURCE)) == store(rewrite(name, SOURCE.encode()).decode())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", CODEMODS)
def test_second_run_returns_the_same_bytes_and_says_so(name: str, variant: str) -> None:
    once = rewrite(name, VARIANTS[variant](SOURCE))
    twice, report = run_codemod(name, once, path="qwen_image_loader.py")
    assert twice == once
    assert report.already_applied
    assert report.changes == []


def test_crlf_output_has_no_bare_newline() -> None:
    out = rewrite("gradient-checkpointing", VARIANTS["CRLF"](SOURCE))
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_gbk_output_is_still_gbk() -> None:
    out = rewrite("is-changed", VARIANTS["gbk (PEP 263)"](SOURCE))
    assert "加载模型".encode("gbk") in out
    with pytest.raises(UnicodeDecodeError):
        out.decode("utf-8")


def test_report_says_what_changed_where() -> None:
    _, report = run_codemod("gradient-checkpointing", SOURCE.encode(), path="n.py")
    assert [(c.kind, c.line) for c in report.changes] == [("checkpoint-wrap", 16), ("import", None)]
    assert str(report.changes[0]) == (
        "line 16: self.model(...) (diffusion model: QwenImageModel.from_pretrained(...), line 14) "
        "now runs under torch.utils.checkpoint without autograd (autograd: off, nothing in this "
        "file asks for gradients): it keeps nothing for a backward pass that never comes, at any "
        "step count"
    )
    assert report.findings == []
    assert report.to_json()["already_applied"] is False


def test_load_on_the_line_of_its_if_is_reported() -> None:
    source = b"import torch\nif True: model = WanModel.from_pretrained('m')\n"
    source += b"torch.inference_mode(False)\ny = model(1)\n"
    out, report = run_codemod(
        "gradient-checkpointing", source, path="n.py", options={"autograd": "keep"}
    )
    assert b"checkpoint(model, 1, use_reentrant=False)" in out
    assert str(report.findings[0]).startswith("warning: line 2: model is loaded on the same line")


def test_call_passing_a_checkpoint_keyword_is_reported() -> None:
    source = b"@torch.inference_mode(False)\ndef run():\n"
    source += b"    model = WanModel.from_pretrained('m')\n"
    source += b"    y = model(1)\n    z = model(2, debug=True)\n"
    _, report = run_codemod("gradient-checkpointing", source, path="n.py")
    assert str(report.findings[0]) == (
        "warning: line 5: model(...) passes debug, a keyword of checkpoint() itself: left unwrapped"
    )
    assert report.findings[0].code == "checkpoint-keyword"


# -- a big file: only part of it goes through libcst, with the same result ------------------

HELPER = '''

def helper_{i}(x, eps=1e-6):
    """Normalise x (helper {i})."""
    return (x - x.mean()) / (x.std() + eps)
'''

SECOND = """

class SecondNode:
    FUNCTION = "go"
    INPUT_TYPES = None

    def go(self, loader, x):
        return loader.model.forward(x) + self.model(x)


NODE_CLASS_MAPPINGS = {"QwenImageLoader": QwenImageLoader, "SecondNode": SecondNode}
"""


def whole_file_rewrite(name: str, text: str) -> tuple[str, list[str]]:
    transform = CODEMODS[name](CodemodContext(filename="big.py"))
    module = transform.transform_module(cst.parse_module(text))
    return module.code, [str(c) for c in transform.report.changes]


@pytest.mark.parametrize("name", CODEMODS)
def test_big_file_rewrites_as_the_whole_file_would(name: str) -> None:
    text = SOURCE + "".join(HELPER.format(i=i) for i in range(300)) + SECOND
    transform = CODEMODS[name](CodemodContext())
    assert len(plan(text, transform.file_seeds(text), transform.linked_words).text) < len(text) / 5
    out, report = run_codemod(name, text.encode(), path="big.py")
    assert (out.decode(), [str(c) for c in report.changes]) == whole_file_rewrite(name, text)


def test_module_level_load_as_the_last_line_without_newline() -> None:
    source = textwrap.dedent(
        """\
        @torch.inference_mode(False)
        def run(x):
            return model(x)

        model = M.from_pretrained("m")"""
    ).encode()
    out = rewrite("gradient-checkpointing", source, autograd="keep")
    assert out.endswith(b'if hasattr(m, "gradient_checkpointing")]')
    assert rewrite("gradient-checkpointing", out, autograd="keep") == out
