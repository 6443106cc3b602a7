"""Golden before/after tests of `is-changed`: which classes get one, what it says about the
rest, and that the segment selection (segments.py) gives what the whole file gives."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest
from libcst.codemod import CodemodContext, CodemodTest

from qpatch.codemods import NothingToPatch, run_codemod
from qpatch.codemods.is_changed import IsChanged
from qpatch.codemods.segments import plan

# The method as the codemod writes it into a class (golden: a change here is deliberate).
IS_CHANGED = """
@classmethod
def IS_CHANGED(cls, **kwargs):
    # qpatch: same inputs and files, same value, so the model loads once. Not NaN:
    # NaN != NaN, so ComfyUI would re-execute (reload) every run.
    import itertools
    import json
    import os

    roots = [""]
    try:  # inside ComfyUI: also look for the inputs under its model folders
        import folder_paths

        base = folder_paths.models_dir
        roots += [base] + [os.path.join(base, d) for d in sorted(os.listdir(base))]
        roots += [d for dirs, *_ in folder_paths.folder_names_and_paths.values() for d in dirs]
    except Exception:
        pass

    def stat(path):
        return [path, os.stat(path).st_size, os.stat(path).st_mtime_ns]

    found = []
    for value in kwargs.values():
        if not isinstance(value, str) or not value.strip():
            continue
        path = next((p for p in (os.path.join(r, value) for r in roots) if os.path.exists(p)), None)
        if path and os.path.isfile(path):
            found.append(stat(path))
        elif path:  # a model folder: its files (the first 10000, to stay cheap)
            files = (os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
            found += [stat(f) for f in itertools.islice(files, 10000) if os.path.isfile(f)]
    return json.dumps([kwargs, sorted(found)], sort_keys=True, default=str)
"""
# ... at the end of a class body in a test's triple-quoted source (12 spaces + the class's 4).
METHOD = textwrap.indent(IS_CHANGED, " " * 16)
# A V3 node (comfy_api's io.ComfyNode) gets the same body as V3's fingerprint_inputs.
FINGERPRINT = METHOD.replace("def IS_CHANGED(", "def fingerprint_inputs(")

LOADER = textwrap.dedent(
    """
    class QwenImageLoader:
        CATEGORY = "loaders"
        FUNCTION = "load"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model_path": ("STRING", {"default": "qwen"})}}

        def load(self, model_path):
            return (Model.from_pretrained(model_path),)
    """
)
# A node that loads nothing: ComfyUI caches it by its inputs already.
IMAGE_OP = textwrap.dedent(
    """
    class Invert:
        FUNCTION = "run"
        INPUT_TYPES = classmethod(lambda cls: {"required": {"image": ("IMAGE",)}})

        def run(self, image):
            return (1.0 - image,)
    """
)


def indented(source: str) -> str:
    """A module-level snippet above, indented like the test's own triple-quoted sources."""
    return textwrap.indent(source, " " * 12)


class IsChangedTest(CodemodTest):
    TRANSFORM = IsChanged

    def test_node_that_loads_a_model_gets_one(self) -> None:
        before = indented(LOADER)
        after = before + METHOD
        self.assertCodemod(before, after)

    def test_node_that_loads_nothing_gets_none(self) -> None:
        before = indented(IMAGE_OP + LOADER)
        after = before + METHOD
        self.assertCodemod(before, after)

    def test_classes_option_names_the_classes_instead(self) -> None:
        before = indented(LOADER + IMAGE_OP)
        after = before + METHOD
        self.assertCodemod(before, after, classes=["Invert"])

    def test_function_and_input_types_from_a_base_class_here(self) -> None:
        before = """
            class Base:
                FUNCTION = "run"
                INPUT_TYPES = classmethod(lambda cls: {"required": {"path": ("STRING",)}})

            class Loader(Base):
                def run(self, path):
                    return (safetensors.torch.load_file(path),)
        """
        after = before + METHOD
        self.assertCodemod(before, after)

    def test_load_in_a_base_class_here(self) -> None:
        before = """
            class Weights:
                def weights(self, path):
                    return torch.load(path, weights_only=True)

            class Loader(Weights):
                FUNCTION = "run"
                INPUT_TYPES = None
        """
        after = before + METHOD
        self.assertCodemod(before, after)

    def test_registered_class_whose_base_is_elsewhere(self) -> None:
        loader = """
            class Loader(nodes.CheckpointLoaderSimple):
                def run(self, name):
                    return comfy.sd.load_checkpoint_guess_config(name)
        """
        mappings = """
            NODE_CLASS_MAPPINGS = {"Loader": Loader}
        """
        self.assertCodemod(loader + mappings, loader + METHOD + mappings)

    def test_subclass_of_a_node_that_gets_one_inherits_it(self) -> None:
        subclass = """
            class QwenImageLoader2512(QwenImageLoader):
                CATEGORY = "loaders/2512"
        """
        before = indented(LOADER) + subclass
        after = indented(LOADER) + METHOD + subclass
        self.assertCodemod(before, after)

    def test_inherited_non_classmethod_is_left_alone(self) -> None:
        before = """
            class Base:
                def IS_CHANGED(self, **kwargs):
                    return "same"

            class Loader(Base):
                FUNCTION = "run"
                INPUT_TYPES = None

                def run(self, path):
                    return (Model.from_pretrained(path),)
        """
        self.assertCodemod(before, before, replace_nan=True)

    def test_inherited_nan_is_left_alone(self) -> None:
        before = """
            class Base:
                @classmethod
                def IS_CHANGED(cls, **kwargs):
                    return float("nan")

            class Loader(Base):
                FUNCTION = "run"
                INPUT_TYPES = None

                def run(self, path):
                    return (Model.from_pretrained(path),)
        """
        self.assertCodemod(before, before, replace_nan=True)

    def test_nan_one_is_left_without_replace_nan(self) -> None:
        before = (
            indented(LOADER)
            + """
                @classmethod
                def IS_CHANGED(cls, **kwargs):
                    return float("NaN")
        """
        )
        self.assertCodemod(before, before)

    def test_nan_one_is_replaced_in_place_with_replace_nan(self) -> None:
        before = """
            class Loader:
                FUNCTION = "load"
                INPUT_TYPES = classmethod(lambda cls: {"required": {}})

                def IS_CHANGED(self, **kwargs):
                    return float("nan")  # 强制单例加载

                def load(self):
                    return (torch.load("m.pt"),)
        """
        after = (
            """
            class Loader:
                FUNCTION = "load"
                INPUT_TYPES = classmethod(lambda cls: {"required": {}})
            """
            + METHOD
            + """
                def load(self):
                    return (torch.load("m.pt"),)
            """
        )
        self.assertCodemod(before, after, replace_nan=True)

    def test_nan_on_the_error_path_only_is_left_with_replace_nan(self) -> None:
        before = (
            indented(LOADER)
            + """
                @classmethod
                def IS_CHANGED(cls, model_path):
                    try:
                        return folder_md5(model_path)
                    except OSError:
                        return float("nan")
        """
        )
        self.assertCodemod(before, before, replace_nan=True)

    def test_nan_that_can_fall_through_to_none_is_left_with_replace_nan(self) -> None:
        before = (
            indented(LOADER)
            + """
                @classmethod
                def IS_CHANGED(cls, model_path):
                    if model_path.startswith("http"):
                        return float("nan")
        """
        )
        self.assertCodemod(before, before, replace_nan=True)

    def test_nan_on_every_branch_is_replaced_with_replace_nan(self) -> None:
        before = (
            indented(LOADER)
            + """
                @classmethod
                def IS_CHANGED(cls, model_path):
                    if model_path:
                        return math.nan
                    else:
                        return float("nan")
        """
        )
        after = indented(LOADER) + METHOD
        self.assertCodemod(before, after, replace_nan=True)

    def test_correct_one_is_left(self) -> None:
        before = (
            indented(LOADER)
            + """
                @classmethod
                def IS_CHANGED(cls, model_path):
                    return hashlib.sha256(open(model_path, "rb").read()).hexdigest()
        """
        )
        self.assertCodemod(before, before, replace_nan=True)

    def test_already_applied_is_unchanged(self) -> None:
        patched = indented(LOADER) + METHOD
        self.assertCodemod(patched, patched)

    def test_v3_node_that_loads_gets_fingerprint_inputs(self) -> None:
        before = """
            class QwenLoader(io.ComfyNode):
                @classmethod
                def define_schema(cls):
                    return io.Schema(node_id="QwenLoader", inputs=[io.String.Input("path")])

                @classmethod
                def execute(cls, path):
                    return io.NodeOutput(Model.from_pretrained(path))
        """
        after = before + FINGERPRINT
        self.assertCodemod(before, after)

    def test_v3_node_with_its_own_fingerprint_inputs_is_left(self) -> None:
        before = """
            class QwenLoader(io.ComfyNode):
                @classmethod
                def execute(cls, path):
                    return io.NodeOutput(Model.from_pretrained(path))

                @classmethod
                def fingerprint_inputs(cls, path):
                    return path
        """
        self.assertCodemod(before, before)


def report(source: str, **options: object) -> list[str]:
    """The changes and findings of a run, as the report prints them."""
    _, got = run_codemod(
        "is-changed", textwrap.dedent(source).encode(), path="n.py", options=options
    )
    return [str(c) for c in got.changes] + [str(f) for f in got.findings]


def nothing_to_patch(source: str, **options: object) -> NothingToPatch:
    with pytest.raises(NothingToPatch) as raised:
        run_codemod("is-changed", textwrap.dedent(source).encode(), path="n.py", options=options)
    return raised.value


LOADS = [
    "Model.from_pretrained(p)",
    "StableDiffusionPipeline.from_single_file(p)",
    "torch.load(p)",
    "safetensors.torch.load_file(p)",
    "load_file(p)",
    "safe_open(p, 'pt')",
    "self.net.load_state_dict(weights)",
    "comfy.utils.load_torch_file(p)",
    "comfy.sd.load_clip([p])",
    "comfy.sd.load_checkpoint_guess_config(p)",
    "load_checkpoint(p)",
    "hf_hub_download('org/repo', p)",
    "huggingface_hub.snapshot_download('org/repo')",
]
CALLING = """
class Node:
    FUNCTION = "run"
    INPUT_TYPES = None

    def run(self, p):
        return ({call},)
"""
NOT_LOADS = ["json.load(f)", "self.load(p)", "yaml.safe_load(f)", "Image.open(p)", "load(p)"]


@pytest.mark.parametrize("call", LOADS)
def test_calls_that_load_a_model(call: str) -> None:
    source = CALLING.format(call=call)
    callee = call.split("(")[0]
    assert f"so what it loads ({callee}(...)) loads once" in report(source)[0]


@pytest.mark.parametrize("call", NOT_LOADS)
def test_calls_that_load_no_model(call: str) -> None:
    source = CALLING.format(call=call)
    assert str(nothing_to_patch(source)).startswith(
        "n.py: no ComfyUI node class found that loads a model or weights"
    )


def test_added_one_says_why() -> None:
    assert report(LOADER) == [
        "line 2: QwenImageLoader: add a classmethod IS_CHANGED that fingerprints the inputs and "
        "the files they name, so what it loads (Model.from_pretrained(...)) loads once, and "
        "again only when they change"
    ]


def test_nodes_left_alone_are_one_summary_line() -> None:
    ops = "".join(IMAGE_OP.replace("Invert", f"Invert{i}") for i in range(60))
    mappings = ", ".join(f'"Invert{i}": Invert{i}' for i in range(60))
    source = LOADER + ops + f"\nNODE_CLASS_MAPPINGS = {{{mappings}}}\n"
    assert report(source)[1:] == [
        "info: 60 node classes load no model (Invert0, Invert1, Invert2, Invert3, Invert4, "
        "Invert5 and 54 more): ComfyUI caches them by their inputs; no IS_CHANGED added"
    ]


def test_nan_warning_mentions_the_model_of_a_loading_class() -> None:
    source = (
        LOADER + "\n    @classmethod\n    def IS_CHANGED(cls, **kwargs):\n        return np.nan\n"
    )
    assert report(source) == [
        "warning: line 14: QwenImageLoader.IS_CHANGED returns NaN on every path, which never "
        "equals itself: the node always re-executes, reloading the model on every run "
        "(replace_nan: true replaces it)"
    ]


def test_nan_warning_of_a_named_class_that_loads_nothing_mentions_no_model() -> None:
    source = IMAGE_OP + "\n    def IS_CHANGED(self, **kwargs):\n        return float('nan')\n"
    assert report(source, classes=["Invert"], replace_nan=True) == [
        "line 2: Invert: replace IS_CHANGED with one that fingerprints the inputs",
        "warning: line 9: Invert.IS_CHANGED returns NaN on every path, which never equals "
        "itself: the node always re-executes (replaced)",
    ]


def test_non_classmethod_is_reported_and_kept() -> None:
    source = LOADER + "\n    def IS_CHANGED(self, model_path):\n        return model_path\n"
    assert report(source, replace_nan=True) == [
        "warning: line 13: QwenImageLoader.IS_CHANGED is not a classmethod, so calling it on "
        "the class fails (no `self`): the node always re-executes, reloading the model on every "
        "run (left as it is: make QwenImageLoader.IS_CHANGED a @classmethod)"
    ]


def test_inherited_non_classmethod_is_reported_and_kept() -> None:
    source = """
        class Base:
            def IS_CHANGED(self, **kwargs):
                return "same"

        class Loader(Base):
            FUNCTION = "run"
            INPUT_TYPES = None

            def run(self, path):
                return (Model.from_pretrained(path),)
    """
    assert report(source) == [
        "warning: line 3: Loader inherits Base.IS_CHANGED, which is not a classmethod, so "
        "calling it on the class fails (no `self`): the node always re-executes, reloading the "
        "model on every run (left as it is: make Base.IS_CHANGED a @classmethod)"
    ]


def test_nan_on_the_error_path_only_is_reported_as_left() -> None:
    source = LOADER + (
        "\n    @classmethod\n    def IS_CHANGED(cls, model_path):\n        try:\n"
        "            return folder_md5(model_path)\n        except OSError:\n"
        "            return float('nan')\n"
    )
    assert report(source, replace_nan=True) == [
        "info: line 2: QwenImageLoader has its own IS_CHANGED (NaN on some paths only: the "
        "author's choice): left as it is"
    ]


def test_subclass_inheriting_the_added_one_is_reported() -> None:
    source = LOADER + "\nclass QwenImageLoader2512(QwenImageLoader):\n    pass\n"
    assert report(source)[1:] == [
        "info: line 13: QwenImageLoader2512 inherits the IS_CHANGED of QwenImageLoader: none "
        "added to it"
    ]


def test_base_class_from_elsewhere_is_a_warning() -> None:
    source = "class Loader(BaseLoader):\n    def run(self, p):\n        return torch.load(p)\n"
    source += '\nNODE_CLASS_MAPPINGS = {"Loader": Loader}\n'
    assert report(source)[1:] == [
        "warning: line 1: Loader derives from BaseLoader, not defined in this file: if that "
        "class has its own IS_CHANGED, the one added here takes its place"
    ]


def test_v3_change_says_fingerprint_inputs() -> None:
    source = (
        "class Loader(io.ComfyNode):\n    @classmethod\n    def execute(cls, p):\n"
        "        return io.NodeOutput(torch.load(p))\n"
    )
    assert report(source) == [
        "line 1: Loader: add a classmethod fingerprint_inputs (V3's IS_CHANGED) that "
        "fingerprints the inputs and the files they name, so what it loads (torch.load(...)) "
        "loads once, and again only when they change"
    ]


def test_second_run_is_already_applied() -> None:
    once, _ = run_codemod("is-changed", textwrap.dedent(LOADER).encode(), path="n.py")
    twice, again = run_codemod("is-changed", once, path="n.py")
    assert (twice, again.changes, again.already_applied) == (once, [], True)


def test_named_class_that_is_no_node_is_changed_as_asked() -> None:
    source = "class Helper:\n    pass\n"
    assert report(source, classes=["Helper"])[1:] == [
        "info: line 1: Helper is no node class as far as this file tells (no INPUT_TYPES and "
        "FUNCTION, not in NODE_CLASS_MAPPINGS, no io.ComfyNode base): changed as the option "
        "`classes` asks"
    ]


def test_named_class_missing_is_a_warning() -> None:
    assert report(LOADER, classes=["QwenImageLoader", "Qwen2"])[1:] == [
        "warning: the option `classes` names Qwen2: no such class in this file"
    ]


def test_no_named_class_here_is_nothing_to_patch() -> None:
    assert str(nothing_to_patch(LOADER, classes=["Qwen2"])) == (
        "n.py: no class named in the option `classes` (Qwen2) is defined in this file"
    )


def test_pack_that_loads_nothing_is_nothing_to_patch() -> None:
    source = IMAGE_OP + IMAGE_OP.replace("Invert", "Blur")
    source += '\nNODE_CLASS_MAPPINGS = {"Invert": Invert, "Blur": Blur}\n'
    raised = nothing_to_patch(source)
    assert str(raised) == (
        "n.py: no ComfyUI node class found that loads a model or weights (looked for calls of "
        "from_pretrained, from_single_file, load_file, safe_open, load_state_dict, "
        "load_torch_file, load_checkpoint, load_checkpoint_guess_config, hf_hub_download, "
        "snapshot_download, torch.load, comfy.sd.load_*); node classes seen: Invert, Blur "
        "(ComfyUI caches them by their inputs, so they need none)\n"
        "  hint: to give a node an IS_CHANGED anyway, name it in the codemod option `classes`, "
        "e.g. [Invert]"
    )


def test_loader_that_is_no_node_is_named_in_nothing_to_patch() -> None:
    source = "class Weights:\n    def get(self, p):\n        return torch.load(p)\n"
    assert str(nothing_to_patch(source)).endswith(
        "comfy.sd.load_*); Weights loads weights but is no node class\n"
        "  hint: to give a node an IS_CHANGED anyway, name it in the codemod option `classes`, "
        "e.g. [MyNode]"
    )


@pytest.mark.parametrize(
    "registers",
    [
        'NODE_CLASS_MAPPINGS = {"Loader": Loader}',
        'NODE_CLASS_MAPPINGS: dict = {"Loader": Loader}',
        'NODE_CLASS_MAPPINGS["Loader"] = Loader',
        'NODE_CLASS_MAPPINGS.update({"Loader": Loader})',
        'if True:\n    NODE_CLASS_MAPPINGS = {"Loader": Loader}',
    ],
)
def test_a_registered_class_is_a_node(registers: str) -> None:
    source = (
        f"class Loader(Base):\n    def run(self, p):\n        return torch.load(p)\n\n{registers}\n"
    )
    assert report(source)[0].startswith("line 1: Loader: add a classmethod IS_CHANGED")


def test_a_file_this_python_cannot_read_is_read_by_libcst_alone() -> None:
    """`ast` may not know syntax libcst does (PEP 695 below 3.12): then segments.py gives
    libcst the whole file, and the codemod finds the loads itself."""
    source = "type Path = str\n" + LOADER
    out, got = run_codemod("is-changed", source.encode(), path="n.py")
    assert out.decode() == source + textwrap.indent(IS_CHANGED, "    ")
    assert [c.line for c in got.changes] == [3]


def test_mappings_of_classes_from_elsewhere_is_nothing_to_patch() -> None:
    source = (
        b'from .loader import QwenImageLoader\n\nNODE_CLASS_MAPPINGS = {"Q": QwenImageLoader}\n'
    )
    with pytest.raises(NothingToPatch) as raised:
        run_codemod("is-changed", source, path="custom_nodes/q/__init__.py")
    assert raised.value.hint == (
        "NODE_CLASS_MAPPINGS here names QwenImageLoader, defined in another file: patch that file"
    )


# -- the segment selection: the same bytes as the whole file, from a small part of it --------

FILLER = "".join(
    f"\n\ndef helper_{i}(x):\n    return json.loads(x) if x else {i}\n" for i in range(200)
)
PACKS = {
    "loader among image ops": LOADER + IMAGE_OP,
    "base class after helpers": "class Base:\n    FUNCTION = 'run'\n    INPUT_TYPES = None\n"
    + FILLER
    + "\n\nclass Loader(Base):\n    def run(self, p):\n        return (torch.load(p),)\n",
    "load two bases up": "class Weights:\n    def get(self, p):\n        return load_file(p)\n"
    + FILLER
    + "\n\nclass Middle(Weights):\n    pass\n"
    + FILLER
    + "\n\nclass Node(Middle):\n    FUNCTION = 'run'\n    INPUT_TYPES = None\n",
    "inherited bad one": "class Base:\n    def IS_CHANGED(self, **kw):\n        return 1\n"
    + FILLER
    + "\n\nclass Loader(Base):\n    def run(self, p):\n        return (torch.load(p),)\n"
    + "\n\nNODE_CLASS_MAPPINGS = {'Loader': Loader}\n",
    "v3": "class Loader(io.ComfyNode):\n    @classmethod\n    def execute(cls, p):\n"
    "        return io.NodeOutput(comfy.sd.load_diffusion_model(p))\n",
}


OPTIONS: dict[str, dict[str, object]] = {
    "defaults": {},
    "named": {"classes": ["Invert", "Loader", "Node"], "replace_nan": True},
}


def whole_file(text: str, **options: object) -> tuple[str, list[str]]:
    transform = IsChanged(CodemodContext(filename="n.py"), **options)
    module = transform.transform_module(cst.parse_module(text))
    return module.code, [str(c) for c in transform.report.changes + transform.report.findings]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("pack", PACKS)
def test_segments_give_what_the_whole_file_gives(pack: str, options: str) -> None:
    text = textwrap.dedent(PACKS[pack]) + FILLER
    out, got = run_codemod("is-changed", text.encode(), path="n.py", options=OPTIONS[options])
    said = [str(c) for c in got.changes + got.findings]
    assert (out.decode(), said) == whole_file(text, **OPTIONS[options])


def test_a_pack_that_loads_nothing_sends_libcst_next_to_nothing() -> None:
    ops = "".join(IMAGE_OP.replace("Invert", f"Invert{i}") for i in range(100))
    text = "import torch\n" + ops + '\nNODE_CLASS_MAPPINGS = {"Invert0": Invert0}\n'
    transform = IsChanged(CodemodContext())
    assert len(plan(text, transform.file_seeds(text), transform.linked_words).text) < len(text) / 50
