"""Which calls `gradient-checkpointing` wraps, and how, on the shapes a review found wrong:
each case is a node source, what must be in the rewrite (or not), and idempotence."""

from __future__ import annotations

import textwrap

import pytest

from qpatch.codemods import NothingToPatch, run_codemod
from qpatch.report import Report


def rewrite(source: str, **options: object) -> tuple[str, Report]:
    data = textwrap.dedent(source).lstrip("\n").encode()
    out, report = run_codemod("gradient-checkpointing", data, path="n.py", options=options)
    again, second = run_codemod("gradient-checkpointing", out, path="n.py", options=options)
    assert again == out and second.already_applied, "a second run changed the file"
    return out.decode(), report


def codes(report: Report) -> dict[str, str]:
    return {f.message.split("(...)")[0]: f.code or "" for f in report.findings if f.code}


@pytest.mark.parametrize(
    "backward",
    [
        "self.model(x).mean().backward()",
        "torch.nn.functional.mse_loss(self.model(x), x).backward()",
        "scaler.scale(self.model(x).sum()).backward()",
        "torch.optim.AdamW(self.model.parameters()); self.model(x)",
    ],
)
def test_a_backward_on_any_expression_keeps_checkpoint_only(backward: str) -> None:
    out, _ = rewrite(
        f"""
        import torch

        class Fit:
            def go(self, x, scaler=None):
                self.model = WanModel.from_pretrained("p")
                with torch.inference_mode(False):
                    {backward}
        """
    )
    assert "checkpoint(self.model, x, use_reentrant=False)" in out
    assert "no_grad()(checkpoint)" not in out


def test_training_in_a_subclass_keeps_checkpoint_only_in_the_base() -> None:
    out, _ = rewrite(
        """
        import torch

        class Base:
            @torch.inference_mode(False)
            def predict(self, x):
                return self.model(x)

            def load(self):
                self.model = WanModel.from_pretrained("p")

        class Train(Base):
            def step(self, x):
                self.predict(x).mean().backward()
        """
    )
    assert "return checkpoint(self.model, x, use_reentrant=False)" in out


def test_a_local_named_checkpoint_hides_the_import() -> None:
    out, _ = rewrite(
        """
        import torch
        from torch.utils.checkpoint import checkpoint

        class Loader:
            @torch.inference_mode(False)
            def go(self, x, ckpt_path):
                checkpoint = torch.load(ckpt_path)
                self.model = WanModel.from_config(checkpoint["config"])
                return self.model(x)
        """
    )
    assert "from torch.utils.checkpoint import checkpoint as torch_checkpoint" in out
    assert "torch.no_grad()(torch_checkpoint)(self.model, x" in out


def test_an_import_for_the_type_checker_only_is_no_import() -> None:
    out, _ = rewrite(
        """
        from typing import TYPE_CHECKING

        import torch

        if TYPE_CHECKING:
            from torch.utils.checkpoint import checkpoint

        @torch.inference_mode(False)
        def run(x):
            dit = WanModel.from_pretrained("p")
            return dit(x)
        """
    )
    assert out.count("from torch.utils.checkpoint import checkpoint") == 2  # ours too


RUN = "    def _run(self, x):\n        return self.model(x)\n\n"


@pytest.mark.parametrize(
    ("methods", "by_hand"),
    [
        (
            "",
            "def custom_forward(*a):\n    return self.model(*a)\n"
            "return torch.utils.checkpoint.checkpoint(custom_forward, x, use_reentrant=False)",
        ),
        ("", "return checkpoint(lambda *a: self.model(*a), x, use_reentrant=False)"),
        (RUN, "return checkpoint(self._run, x, use_reentrant=False)"),
    ],
)
def test_checkpoint_written_by_hand_under_any_spelling_is_not_doubled(
    methods: str, by_hand: str
) -> None:
    body = textwrap.indent(by_hand, " " * 8)
    source = (
        "import torch\nfrom torch.utils.checkpoint import checkpoint\n\n\nclass Node:\n"
        + methods
        + "    @torch.inference_mode(False)\n    def go(self, x):\n"
        '        self.model = WanModel.from_pretrained("p")\n' + body + "\n"
    ).encode()
    out, report = run_codemod("gradient-checkpointing", source, path="n.py")
    assert out == source and report.already_applied


def test_a_function_of_the_same_name_elsewhere_is_not_under_checkpoint() -> None:
    out, _ = rewrite(
        """
        import torch
        from torch.utils.checkpoint import checkpoint

        class A:
            @torch.inference_mode(False)
            def go(self, x):
                def custom_forward(*a):
                    return a[0] * 2
                return checkpoint(custom_forward, x, use_reentrant=False)

        class B:
            @torch.inference_mode(False)
            def go(self, x):
                self.model = WanModel.from_pretrained("p")
                def custom_forward(*a):
                    return self.model(*a)
                return custom_forward(x)
        """
    )
    assert "torch.no_grad()(checkpoint)(self.model, *a" in out


def test_a_checkpoint_imported_inside_a_function_is_recognised_on_the_second_run() -> None:
    rewrite(
        """
        import torch

        class Node:
            @torch.inference_mode(False)
            def go(self, x):
                from torch.utils.checkpoint import checkpoint
                self.model = WanModel.from_pretrained("p")
                def custom_forward(*a):
                    return self.model(*a)
                y = checkpoint(custom_forward, x, use_reentrant=False)
                return self.model(y)
        """
    )


def test_node_inputs_belong_to_the_method_comfyui_calls() -> None:
    out, report = rewrite(
        """
        import torch

        class Sampler:
            FUNCTION = "sample"

            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"model": ("WANVIDEOMODEL",), "t5": ("WANTEXTENCODER",),
                                     "positive": ("CONDITIONING",)}}

            def _encode(self, model, ids):
                return model(ids)

            @torch.inference_mode(False)
            def sample(self, model, t5, positive, x):
                positive(x)
                return model(self._encode(t5, x))
        """
    )
    assert "torch.no_grad()(checkpoint)(model, self._encode(t5, x)" in out
    assert "return model(ids)" in out and "positive(x)" in out


def test_a_name_bound_to_a_dit_and_a_text_encoder_is_left() -> None:
    with pytest.raises(NothingToPatch, match="ambiguous|several kinds|another kind of model"):
        rewrite(
            """
            import torch

            @torch.inference_mode(False)
            def run(x, ids):
                model = UNet2DConditionModel.from_pretrained("q")
                out = model(x)
                model = CLIPTextModel.from_pretrained("p")
                return model(ids), out
            """
        )


@pytest.mark.parametrize(
    ("around", "wrapped"),
    [
        ("@im(False)", True),  # from torch import inference_mode as im
        ("@torch.inference_mode(False)\n@torch.no_grad()", False),
        ("@torch.inference_mode(mode=False)", True),
    ],
)
def test_how_autograd_switches_are_read(around: str, wrapped: bool) -> None:
    source = f"""
        import torch
        from torch import inference_mode as im

        class Node:
            def load(self):
                self.dit = WanModel.from_pretrained("p")

            {textwrap.indent(around, " " * 12).strip()}
            def run(self, x):
                return self.dit(x)
        """
    if wrapped:
        out, _ = rewrite(source)
        assert "(checkpoint)(self.dit, x" in out
    else:
        with pytest.raises(NothingToPatch, match="already runs without autograd"):
            rewrite(source)


def test_grad_mode_back_on_inside_no_grad_outside_inference_mode_is_on() -> None:
    out, _ = rewrite(
        """
        import torch

        class Guidance:
            def load(self):
                self.dit = WanModel.from_pretrained("p")

            @torch.inference_mode(False)
            @torch.no_grad()
            def run(self, x):
                with torch.enable_grad():
                    return self.dit(x)
        """
    )
    assert "(checkpoint)(self.dit, x" in out


def test_lines_in_messages_are_the_files_in_a_big_file() -> None:
    filler = "".join(f"\n\ndef helper_{i}(x):\n    return x + {i}\n" for i in range(60))
    source = (
        "import torch\n" + filler + "\n\n@torch.inference_mode(False)\ndef run(x):\n"
        "    dit = WanModel.from_pretrained('p')\n    return dit(x)\n"
    )
    _, report = run_codemod("gradient-checkpointing", source.encode(), path="n.py")
    load_line = source.splitlines().index("    dit = WanModel.from_pretrained('p')") + 1
    assert f"WanModel.from_pretrained(...), line {load_line})" in report.changes[0].detail


def test_an_earlier_wrap_in_another_mode_is_named_not_rewritten() -> None:
    source = textwrap.dedent(
        """
        import torch
        from torch.utils.checkpoint import checkpoint

        class Fit:
            @torch.inference_mode(False)
            def go(self, x):
                self.model = WanModel.from_pretrained("p")
                y = torch.no_grad()(checkpoint)(self.model, x, use_reentrant=False)
                y.mean().backward()
        """
    ).lstrip("\n")
    out, report = run_codemod("gradient-checkpointing", source.encode(), path="n.py")
    assert out == source.encode() and report.already_applied
    stale = [f for f in report.findings if f.code == "stale-mode"]
    assert [(f.line, f.severity) for f in stale] == [(8, "warning")]
    assert "wrapped earlier with autograd: off, while this run would write autograd: keep" in (
        stale[0].message
    )
