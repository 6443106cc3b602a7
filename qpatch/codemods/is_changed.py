"""Transform `is-changed`: what the post's section 4.2 claims, done the way ComfyUI reads it.

ComfyUI calls `Class.IS_CHANGED(**inputs)` and re-executes the node when the value differs
from last time. The post's `def IS_CHANGED(self, **kwargs): return float("nan")` fails twice:
called on the class it raises (missing `self`), and NaN never equals itself; both mean
"changed", so the model reloads on every run. ComfyUI's own LoadImage returns a hash of
its file; ours fingerprints the inputs and the files they name, as cheaply as stat allows.
"""

from __future__ import annotations

import ast
from collections.abc import Set
from typing import ClassVar

import libcst as cst
import libcst.matchers as m

from qpatch.codemods.base import NothingToPatch, Option, QpatchCodemod
from qpatch.codemods.segments import words_of

# Stdlib only and imports inside: the user's node gains no dependency and no module name.
_IS_CHANGED = """\
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

_NODE_MAPPINGS = "NODE_CLASS_MAPPINGS"


def _says_nan(literal: str) -> bool:
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        return False
    return isinstance(value, str) and value.strip().lower().lstrip("+-") == "nan"


_NAN_NAME = m.Name(m.MatchIfTrue(lambda name: name.lower() == "nan"))
# float("nan"), float('NaN'), math.nan, numpy.nan, np.NaN, torch.nan, a bare `nan`.
_NAN = m.OneOf(
    m.Call(func=m.Name("float"), args=[m.Arg(m.SimpleString(m.MatchIfTrue(_says_nan)))]),
    m.Attribute(attr=_NAN_NAME),
    _NAN_NAME,
)
_BOUND = m.Decorator(m.Name("classmethod") | m.Name("staticmethod"))
_OURS = m.FunctionDef(
    name=m.Name("IS_CHANGED"),
    decorators=[m.Decorator(m.Name("classmethod"))],
    params=m.Parameters(params=[m.Param(m.Name("cls"))], star_kwarg=m.Param(m.Name("kwargs"))),
)
_FINGERPRINT = m.Call(func=m.Attribute(value=m.Name("json"), attr=m.Name("dumps")))


def _defines(body: cst.BaseSuite, name: str) -> bool:
    """Whether the class body defines `name` itself (as a method or an attribute)."""
    for stmt in body.body:
        if isinstance(stmt, cst.FunctionDef) and stmt.name.value == name:
            return True
        assigned = m.Assign(targets=[m.AssignTarget(m.Name(name))]) | m.AnnAssign(m.Name(name))
        if m.matches(stmt, m.SimpleStatementLine(body=[assigned])):
            return True
    return False


def _why_always_changed(method: cst.FunctionDef) -> str | None:
    """Why ComfyUI would see this IS_CHANGED as "changed" on every run, if it would."""
    if m.findall(method.body, m.Return(value=_NAN)):
        return "returns NaN, which never equals itself"
    first = method.params.posonly_params or method.params.params
    if (
        not any(m.matches(d, _BOUND) for d in method.decorators)
        and first
        and first[0].default is None
    ):
        return (
            f"is not a classmethod, so calling it on the class fails (no `{first[0].name.value}`)"
        )
    return None


class _NodeMappings(cst.CSTVisitor):
    """Class names this module registers in NODE_CLASS_MAPPINGS, however it fills it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            if m.matches(target.target, m.Name(_NODE_MAPPINGS)):
                self._dict(node.value)
            elif m.matches(target.target, m.Subscript(value=m.Name(_NODE_MAPPINGS))):
                self._name(node.value)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if m.matches(node.target, m.Name(_NODE_MAPPINGS)) and node.value is not None:
            self._dict(node.value)

    def visit_Call(self, node: cst.Call) -> None:
        update = m.Attribute(value=m.Name(_NODE_MAPPINGS), attr=m.Name("update"))
        if m.matches(node.func, update) and node.args:
            self._dict(node.args[0].value)

    def _dict(self, value: cst.BaseExpression) -> None:
        if isinstance(value, cst.Dict):
            for element in value.elements:
                if isinstance(element, cst.DictElement):
                    self._name(element.value)

    def _name(self, value: cst.BaseExpression) -> None:
        if isinstance(value, cst.Name):
            self.names.add(value.value)


class IsChanged(QpatchCodemod):
    """Give each ComfyUI node class an IS_CHANGED that stays equal while the node's inputs
    and the files they name do, so ComfyUI reuses the loaded model instead of reloading it.

    A node class is one with INPUT_TYPES and FUNCTION, or one named in NODE_CLASS_MAPPINGS.
    An existing IS_CHANGED is the author's: left alone, reported when it forces a reload on
    every run, replaced only with `replace_nan: true`.
    """

    NAME: ClassVar[str] = "is-changed"
    DESCRIPTION: ClassVar[str] = (
        "Give each node class a classmethod IS_CHANGED that fingerprints its inputs and the "
        "files they name, so ComfyUI loads the model once."
    )
    OPTIONS: ClassVar[dict[str, Option]] = {
        "replace_nan": Option(bool, False, help="replace an IS_CHANGED that always re-executes"),
    }

    def seed_words(self) -> set[str]:
        return {"INPUT_TYPES", _NODE_MAPPINGS}

    def linked_words(self, node: ast.AST, words: Set[str]) -> set[str]:
        """Where NODE_CLASS_MAPPINGS is filled, the names of the classes it registers."""
        found = words_of(node)
        return found if _NODE_MAPPINGS in found else set()

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        mappings = _NodeMappings()
        for stmt in tree.body:  # the mappings are filled at module level, not in a class
            if not isinstance(stmt, (cst.ClassDef, cst.FunctionDef)):
                stmt.visit(mappings)
        self._registered = mappings.names
        self._ours = self.statement(_IS_CHANGED, tree)
        self._nodes: list[str] = []
        self._earlier_work = False
        tree = super().transform_module_impl(tree)
        if not self._nodes:
            elsewhere = ", ".join(sorted(self._registered))
            raise NothingToPatch(
                f"{self.path}: no ComfyUI node class found: looked for a class with INPUT_TYPES "
                f"and FUNCTION, or one named in {_NODE_MAPPINGS}",
                hint=f"{_NODE_MAPPINGS} here names {elsewhere}, defined in another file: "
                "patch that file"
                if elsewhere
                else None,
            )
        self.report.already_applied = self._earlier_work and not self.report.changes
        return tree

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # node classes and their IS_CHANGED are class-level: skip method bodies

    def leave_ClassDef(
        self, original_node: cst.ClassDef, updated_node: cst.ClassDef
    ) -> cst.ClassDef:
        body = updated_node.body
        name = updated_node.name.value
        is_node = _defines(body, "INPUT_TYPES") and _defines(body, "FUNCTION")
        if not (is_node or name in self._registered):
            return updated_node
        self._nodes.append(name)
        line = self.line(original_node)
        if not isinstance(body, cst.IndentedBlock):
            self.report.find(f"{name} is a one-line class: IS_CHANGED not added", line)
            return updated_node
        ours = self._ours
        existing = [s for s in body.body if m.matches(s, m.FunctionDef(name=m.Name("IS_CHANGED")))]
        if not existing:
            self.report.change(
                "is-changed",
                line,
                f"{name}: add a classmethod IS_CHANGED that fingerprints the inputs and the files "
                "they name, so the model loads once and again only when they change",
            )
            ours = ours.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
            return updated_node.with_changes(body=body.with_changes(body=[*body.body, ours]))
        method = existing[0]
        assert isinstance(method, cst.FunctionDef)
        if m.matches(method, _OURS) and m.findall(method.body, _FINGERPRINT):
            self._earlier_work = True
            return updated_node
        why = _why_always_changed(method)
        if why is None:
            self.report.find(f"{name} has its own IS_CHANGED: left as it is", line, "info")
            return updated_node
        self.report.find(
            f"{name}.IS_CHANGED {why}: the node always re-executes, reloading the model on "
            "every run" + ("" if self.options["replace_nan"] else " (replace_nan: true fixes it)"),
            self.line(self._original_of(original_node, method)),
        )
        if not self.options["replace_nan"]:
            return updated_node
        self.report.change(
            "is-changed", line, f"{name}: replace IS_CHANGED with one that fingerprints the inputs"
        )
        ours = ours.with_changes(leading_lines=method.leading_lines)
        return updated_node.with_changes(
            body=body.with_changes(body=[ours if s is method else s for s in body.body])
        )

    @staticmethod
    def _original_of(original: cst.ClassDef, method: cst.FunctionDef) -> cst.CSTNode:
        """The method as it was read (positions exist only for the original tree)."""
        for stmt in original.body.body:
            if m.matches(stmt, m.FunctionDef(name=m.Name("IS_CHANGED"))):
                return stmt
        return original
