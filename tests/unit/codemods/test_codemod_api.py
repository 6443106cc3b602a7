"""The interface the engine and the patch-spec loader use, and its errors (all exit 2)."""

from __future__ import annotations

import pytest

from qpatch.codemods import (
    CODEMODS,
    CodemodError,
    NothingToPatch,
    SourceSyntaxError,
    check_codemod_options,
    run_codemod,
)
from qpatch.errors import BadInput


def test_each_codemod_describes_itself_and_declares_its_options() -> None:
    assert set(CODEMODS) == {"gradient-checkpointing", "is-changed"}
    for transform in CODEMODS.values():
        assert transform.DESCRIPTION.endswith(".") and ". " not in transform.DESCRIPTION
        assert all(option.help for option in transform.OPTIONS.values())


def test_options_get_their_defaults() -> None:
    assert check_codemod_options("gradient-checkpointing") == {
        "use_reentrant": False,
        "preserve_rng_state": None,
        "models": None,
        "autograd": "auto",
    }
    assert check_codemod_options("is-changed", {"replace_nan": True}) == {
        "replace_nan": True,
        "classes": None,
    }


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("gradient-checkpoint", {}, "unknown codemod 'gradient-checkpoint' (known: "),
        ("is-changed", {"replace_nans": True}, "unknown option 'replace_nans' (its options: "),
        ("is-changed", {"replace_nan": "yes"}, "'replace_nan' must be true or false, got 'yes'"),
        ("is-changed", {"replace_nan": None}, "'replace_nan' must be true or false, got None"),
        ("gradient-checkpointing", {"use_reentrant": 0}, "must be true or false, got 0 (int)"),
        ("gradient-checkpointing", {"models": "self.model"}, "must be a list of strings or null"),
        ("gradient-checkpointing", {"models": [1]}, "must be a list of strings or null, got [1]"),
    ],
)
def test_bad_name_or_option_is_bad_input(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(BadInput, match=None) as raised:
        run_codemod(name, b"x = 1\n", path="n.py", options=options)
    assert message in str(raised.value)
    assert raised.value.exit_code == 2


def test_unknown_option_suggests_the_near_one() -> None:
    with pytest.raises(BadInput) as raised:
        check_codemod_options("is-changed", {"replace_nans": True})
    assert raised.value.hint == "did you mean 'replace_nan'?"


def test_models_must_be_names() -> None:
    with pytest.raises(BadInput, match="takes names like self.model, got 'self.models\\[0\\]'"):
        run_codemod(
            "gradient-checkpointing", b"", path="n.py", options={"models": ["self.models[0]"]}
        )


def test_codemod_errors_are_bad_input() -> None:
    assert issubclass(NothingToPatch, CodemodError)
    assert issubclass(SourceSyntaxError, CodemodError)
    assert issubclass(CodemodError, BadInput)


def test_syntax_error_names_file_and_line() -> None:
    source = b"import torch\n\nclass Loader:\n    def load(self:\n        pass\n"
    with pytest.raises(SourceSyntaxError) as raised:
        run_codemod("gradient-checkpointing", source, path="nodes/loader.py")
    assert str(raised.value).startswith("nodes/loader.py:4: syntax error: ")
    assert raised.value.line == 4


def test_undecodable_file_is_an_error() -> None:
    with pytest.raises(CodemodError, match="^n.py: cannot decode the file: "):
        run_codemod("is-changed", b"x = '\xff'\n", path="n.py")
    with pytest.raises(CodemodError, match="^n.py: cannot decode the file: unknown encoding"):
        run_codemod("is-changed", b"# coding: nonsense\nx = 1\n", path="n.py")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            b"import torch\nmodel = torch.load('m.pt')\ny = model(1)\n",
            "n.py: no model to patch: looked for a diffusion model (a DiT, UNet or transformer) "
            "loaded with from_pretrained/from_single_file or built by its class, or received as "
            "a node input of a DiT type, and for its calls\n"
            "  hint: name the model with the codemod option `models`, e.g. [self.model]",
        ),
        (
            b"tok = AutoTokenizer.from_pretrained('t')\nids = tok('a cat')\n",
            "n.py: nothing to wrap: line 2: tok(...) (not a model: AutoTokenizer.from_pretrained"
            "(...), line 1): holds no weights to checkpoint",
        ),
        (
            b"class L:\n    def load(self):\n        self.model = M.from_pretrained('m')\n"
            b"        self.model.eval()\n",
            "n.py: no call of self.model (M.from_pretrained(...), line 3) to wrap: looked for "
            "`X(...)` and `X.forward(...)` in the scope that holds it",
        ),
    ],
)
def test_nothing_to_patch_says_what_was_looked_for(source: bytes, message: str) -> None:
    with pytest.raises(NothingToPatch) as raised:
        run_codemod("gradient-checkpointing", source, path="n.py")
    assert str(raised.value).startswith(message)


def test_no_node_class_is_nothing_to_patch() -> None:
    with pytest.raises(NothingToPatch, match="^n.py: no ComfyUI node class found"):
        run_codemod("is-changed", b"class Helper:\n    pass\n", path="n.py")
