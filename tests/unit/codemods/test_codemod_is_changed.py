"""Golden before/after tests of `is-changed`, and what it reports about an existing one."""

from __future__ import annotations

import textwrap

import pytest
from libcst.codemod import CodemodTest

from qpatch.codemods import NothingToPatch, run_codemod
from qpatch.codemods.is_changed import IsChanged

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

LOADER = """
    class QwenImageLoader:
        CATEGORY = "loaders"
        FUNCTION = "load"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model_path": ("STRING", {"default": "qwen"})}}

        def load(self, model_path):
            return (Model.from_pretrained(model_path),)
"""


class IsChangedTest(CodemodTest):
    TRANSFORM = IsChanged

    def test_node_class_gets_one(self) -> None:
        before = textwrap.indent(LOADER, " " * 8)
        after = before + METHOD
        self.assertCodemod(before, after)

    def test_class_named_in_node_class_mappings(self) -> None:
        before = """
            class Base:
                FUNCTION = "run"

            class Loader(Base):
                pass

            class Helper:
                pass

            NODE_CLASS_MAPPINGS = {"Loader": Loader}
        """
        after = (
            """
            class Base:
                FUNCTION = "run"

            class Loader(Base):
                pass
            """
            + METHOD
            + """
            class Helper:
                pass

            NODE_CLASS_MAPPINGS = {"Loader": Loader}
            """
        )
        self.assertCodemod(before, after)

    def test_nan_one_is_left_without_replace_nan(self) -> None:
        before = """
            class Loader:
                FUNCTION = "load"
                INPUT_TYPES = classmethod(lambda cls: {"required": {}})

                @classmethod
                def IS_CHANGED(cls, **kwargs):
                    return float("NaN")
        """
        self.assertCodemod(before, before)

    def test_nan_one_is_replaced_in_place_with_replace_nan(self) -> None:
        before = """
            class Loader:
                FUNCTION = "load"
                INPUT_TYPES = classmethod(lambda cls: {"required": {}})

                def IS_CHANGED(self, **kwargs):
                    return float("nan")  # 强制单例加载

                def load(self):
                    pass
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
                    pass
            """
        )
        self.assertCodemod(before, after, replace_nan=True)

    def test_correct_one_is_left(self) -> None:
        before = """
            class LoadImage:
                FUNCTION = "load_image"

                @classmethod
                def INPUT_TYPES(cls):
                    return {"required": {"image": ("STRING",)}}

                @classmethod
                def IS_CHANGED(cls, image):
                    return hashlib.sha256(open(image, "rb").read()).hexdigest()
        """
        self.assertCodemod(before, before, replace_nan=True)

    def test_already_applied_is_unchanged(self) -> None:
        patched = textwrap.indent(LOADER, " " * 8) + METHOD
        self.assertCodemod(patched, patched)


def findings(source: str, **options: object) -> list[str]:
    _, report = run_codemod(
        "is-changed", textwrap.dedent(source).encode(), path="n.py", options=options
    )
    return [str(f) for f in report.findings]


@pytest.mark.parametrize(
    "returns", ['float("nan")', "float('NaN')", "math.nan", "numpy.nan", "np.NaN", "torch.nan"]
)
def test_nan_is_reported_as_reload_every_run(returns: str) -> None:
    source = f"""
        class Loader:
            FUNCTION = "load"
            INPUT_TYPES = None

            @classmethod
            def IS_CHANGED(cls, **kwargs):
                return {returns}
    """
    assert findings(source) == [
        "warning: line 7: Loader.IS_CHANGED returns NaN, which never equals itself: the node "
        "always re-executes, reloading the model on every run (replace_nan: true fixes it)"
    ]


def test_plain_method_is_reported_as_failing_on_the_class() -> None:
    source = """
        class Loader:
            FUNCTION = "load"
            INPUT_TYPES = None

            def IS_CHANGED(self, **kwargs):
                return "same"
    """
    assert findings(source) == [
        "warning: line 6: Loader.IS_CHANGED is not a classmethod, so calling it on the class "
        "fails (no `self`): the node always re-executes, reloading the model on every run "
        "(replace_nan: true fixes it)"
    ]


def test_correct_one_is_reported_as_left() -> None:
    source = """
        class Loader:
            FUNCTION = "load"
            INPUT_TYPES = None

            @staticmethod
            def IS_CHANGED(**kwargs):
                return "same"
    """
    assert findings(source) == ["info: line 2: Loader has its own IS_CHANGED: left as it is"]


def test_replacing_reports_the_change() -> None:
    source = (
        b'class L:\n    FUNCTION = "f"\n    INPUT_TYPES = None\n\n'
        b'    def IS_CHANGED(self):\n        return float("nan")\n'
    )
    _, report = run_codemod("is-changed", source, path="n.py", options={"replace_nan": True})
    assert [str(c) for c in report.changes] == [
        "line 1: L: replace IS_CHANGED with one that fingerprints the inputs"
    ]
    assert not report.already_applied


def test_mappings_of_classes_from_elsewhere_is_nothing_to_patch() -> None:
    source = (
        b'from .loader import QwenImageLoader\n\nNODE_CLASS_MAPPINGS = {"Q": QwenImageLoader}\n'
    )
    with pytest.raises(NothingToPatch) as raised:
        run_codemod("is-changed", source, path="custom_nodes/q/__init__.py")
    assert str(raised.value) == (
        "custom_nodes/q/__init__.py: no ComfyUI node class found: looked for a class with "
        "INPUT_TYPES and FUNCTION, or one named in NODE_CLASS_MAPPINGS\n"
        "  hint: NODE_CLASS_MAPPINGS here names QwenImageLoader, defined in another file: "
        "patch that file"
    )
