"""Transform `is-changed`: what the post's section 4.2 claims, done the way ComfyUI reads it.

ComfyUI calls `Class.IS_CHANGED(**inputs)` (a V3 node's `fingerprint_inputs`) and re-executes
the node when the value differs from last time. The post's `def IS_CHANGED(self, **kwargs):
return float("nan")` fails twice: called on the class it raises (missing `self`), and NaN
never equals itself; both mean "changed", so the model reloads on every run. ComfyUI's own
LoadImage returns a hash of its file; ours fingerprints the inputs and the files they name,
as cheaply as stat allows.

Only a node that loads a model or weights needs one: ComfyUI already caches every other node
by its inputs, so there an IS_CHANGED only costs a call per prompt (and one returning NaN
re-runs the node on purpose). So the loading calls decide, and segments.py hands libcst only
the classes that make one, their base classes here, and NODE_CLASS_MAPPINGS: a big pack of
image utilities costs an `ast` read. That read also names every node class of the file, so
the report can say what was left alone and why in one line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, ClassVar

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext

from qpatch.codemods.base import NothingToPatch, Option, QpatchCodemod

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

# Calls that load a model or weights, by the call's last name (`X.from_pretrained(...)`,
# `load_file(...)`): a class that makes one holds what is worth keeping loaded between runs.
_LOADERS: tuple[str, ...] = (
    "from_pretrained",  # diffusers, transformers
    "from_single_file",  # diffusers: one .safetensors or .ckpt
    "load_file",  # safetensors.torch
    "safe_open",  # safetensors
    "load_state_dict",  # torch: weights into a module
    "load_torch_file",  # comfy.utils
    "load_checkpoint",  # many packs' own loaders
    "load_checkpoint_guess_config",  # comfy.sd
    "hf_hub_download",  # huggingface_hub
    "snapshot_download",  # huggingface_hub
)
# ... and these only after a module of that name, `load` and `load_*` alone being too common
# (json.load, self.load): torch.load(...) and comfy.sd.load_*(...). A name ending in "_" is a
# prefix.
_QUALIFIED_LOADERS: tuple[tuple[str, str], ...] = (("torch", "load"), ("sd", "load_"))
# The words segments.py looks for: every loading call holds one ("load" of torch.load and "sd"
# of comfy.sd.load_*, the rarer word of each).
_LOAD_WORDS = frozenset(_LOADERS) | {"load", "sd"}

_NODE_MAPPINGS = "NODE_CLASS_MAPPINGS"
_V3_BASE = "ComfyNode"  # comfy_api.latest's io.ComfyNode: a V3 node
# Bases that hold no author's IS_CHANGED (torch.nn's Module, abc's ABC): never looked up here,
# nor linked by segments.py (every class of a V3 pack names ComfyNode).
_NOT_BASES = frozenset({"object", "ABC", "Module", _V3_BASE})
_V1_METHODS = ("IS_CHANGED",)
# V3 nodes: ComfyUI calls fingerprint_inputs when the class overrides it, else IS_CHANGED.
_V3_METHODS = ("fingerprint_inputs", "IS_CHANGED")
# Through `words` linked_words learns that a class loads a model: no word of the source has a
# colon, so "loads:Name" selects nothing and tells the subclasses of Name they inherit a load.
_LOADS_MARK = "loads:"
_LISTED = 6  # class names a message spells out before "and N more"


def _loads(qualifier: str | None, name: str) -> bool:
    """Whether a call `qualifier.name(...)` (qualifier: the last name before the dot, None
    for a bare call) loads a model or weights."""
    if name in _LOADERS:
        return True
    return any(
        qualifier == module and (name.startswith(n) if n.endswith("_") else name == n)
        for module, n in _QUALIFIED_LOADERS
    )


def _looked_for() -> str:
    """The loading calls, as a message lists them: `from_pretrained, ..., comfy.sd.load_*`."""
    qualified = [
        f"{'comfy.' if module == 'sd' else ''}{module}.{name}{'*' if name.endswith('_') else ''}"
        for module, name in _QUALIFIED_LOADERS
    ]
    return ", ".join([*_LOADERS, *qualified])


def _spelled(names: Sequence[str]) -> str:
    """`A, B, C` or `A, B, C, D, E, F and 9 more`: a list that stays one line."""
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


# -- what makes a class a node: one rule, for the `ast` and the libcst read ---------------


@dataclass(frozen=True)
class _Shape:
    bases: tuple[str, ...]  # plain names, which may be classes of this file
    defines: frozenset[str]  # the names its body defines (methods, attributes)
    v3: bool  # derives from io.ComfyNode


def _lineage(name: str, shapes: Mapping[str, _Shape]) -> list[str]:
    """The class, then its base classes defined in this module, depth first as Python's
    method resolution mostly goes; each once, whatever cycles the file spells."""
    order: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop(0)
        if current in shapes and current not in order:
            order.append(current)
            todo[:0] = shapes[current].bases
    return order


def _is_node(name: str, shapes: Mapping[str, _Shape], registered: Set[str]) -> bool:
    """A V1 node defines INPUT_TYPES and FUNCTION (or inherits them from a base class here)
    or is registered in NODE_CLASS_MAPPINGS; a V3 node derives from io.ComfyNode."""
    lineage = [shapes[n] for n in _lineage(name, shapes)]
    defined = {defined for shape in lineage for defined in shape.defines}
    v1 = {"INPUT_TYPES", "FUNCTION"} <= defined or name in registered
    return v1 or any(shape.v3 for shape in lineage)


# -- the `ast` read: which statements libcst must see, and the file's node classes ---------


def _ast_last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _ast_call(func: ast.expr) -> tuple[str | None, str] | None:
    """(`sd`, `load_clip`) for `comfy.sd.load_clip(...)`, (None, `load_file`) for a bare call."""
    if isinstance(func, ast.Name):
        return None, func.id
    return (_ast_last_name(func.value), func.attr) if isinstance(func, ast.Attribute) else None


def _ast_outside_functions(node: ast.AST) -> Iterator[ast.AST]:
    """`node` and what it holds, not looking into functions (nor lambdas)."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        if not isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += ast.iter_child_nodes(current)


def _ast_classes(node: ast.AST) -> Iterator[ast.ClassDef]:
    """The classes in `node` that are not inside a function (as the libcst read records)."""
    return (n for n in _ast_outside_functions(node) if isinstance(n, ast.ClassDef))


def _ast_dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    base = _ast_dotted(node.value) if isinstance(node, ast.Attribute) else None
    return f"{base}.{node.attr}" if base and isinstance(node, ast.Attribute) else None


def _ast_load(cls: ast.ClassDef) -> str | None:
    """The callee of the first call in the class that loads a model (`torch.load`), if any:
    in its methods, and in the helper methods they call, which are the class's too."""
    calls = sorted(
        (n for n in ast.walk(cls) if isinstance(n, ast.Call)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    for call in calls:
        named = _ast_call(call.func)
        if named is not None and _loads(*named):
            return _ast_dotted(call.func) or named[1]
    return None


def _ast_shape(cls: ast.ClassDef) -> _Shape:
    names = [_ast_last_name(base) for base in cls.bases]
    bases = [b.id for b in cls.bases if isinstance(b, ast.Name) and b.id not in _NOT_BASES]
    defines: set[str] = set()
    for stmt in cls.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defines.add(stmt.name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            defines |= {t.id for t in targets if isinstance(t, ast.Name)}
    return _Shape(tuple(bases), frozenset(defines), _V3_BASE in names)


def _ast_module_level(body: Sequence[ast.AST]) -> Iterator[ast.AST]:
    """The module's own statements, also those in its `if`, `try` and `with` blocks."""
    for stmt in body:
        if not isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield stmt
            for block in ("body", "handlers", "orelse", "finalbody"):
                yield from _ast_module_level(getattr(stmt, block, []))


def _ast_registered(tree: ast.Module) -> set[str]:
    """The class names NODE_CLASS_MAPPINGS gets at module level: `= {...}`, `[k] = C`,
    `.update({...})`, as the libcst read finds them."""
    found: set[str] = set()
    for stmt in _ast_module_level(tree.body):
        if isinstance(stmt, ast.Assign):
            pairs = [(target, stmt.value) for target in stmt.targets]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            pairs = [(stmt.target, stmt.value)]
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and stmt.value.args:
            update = _ast_call(stmt.value.func) == (_NODE_MAPPINGS, "update")
            pairs = [(ast.Name(_NODE_MAPPINGS), stmt.value.args[0])] if update else []
        else:
            continue
        for target, value in pairs:
            if _ast_is_mappings(target) and isinstance(value, ast.Dict):
                found |= {v.id for v in value.values if isinstance(v, ast.Name)}
            elif isinstance(target, ast.Subscript) and _ast_is_mappings(target.value):
                found |= {value.id} if isinstance(value, ast.Name) else set()
    return found


def _ast_is_mappings(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == _NODE_MAPPINGS


@dataclass(frozen=True)
class _FileView:
    """What the whole file says, though libcst may get only part of it."""

    nodes: list[str]  # its node classes, in the order they are defined
    elsewhere: list[str]  # names NODE_CLASS_MAPPINGS registers with no class of them here
    loads: dict[str, str]  # class name -> the callee of its first loading call


def _file_view(text: str) -> _FileView | None:
    """The file's node classes by the same rule as the transform's; None when `ast` cannot
    read it (then the transform's own read is all there is)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    classes = {cls.name: cls for stmt in tree.body for cls in _ast_classes(stmt)}
    shapes = {name: _ast_shape(cls) for name, cls in classes.items()}
    registered = _ast_registered(tree)
    nodes = [name for name in shapes if _is_node(name, shapes, registered)]
    loads = {name: load for name, cls in classes.items() if (load := _ast_load(cls))}
    return _FileView(nodes, sorted(registered - shapes.keys()), loads)


# -- the libcst read: each class, its loads, the author's IS_CHANGED ----------------------


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
    name=m.Name("IS_CHANGED") | m.Name("fingerprint_inputs"),
    decorators=[m.Decorator(m.Name("classmethod"))],
    params=m.Parameters(params=[m.Param(m.Name("cls"))], star_kwarg=m.Param(m.Name("kwargs"))),
)
_FINGERPRINT = m.Call(func=m.Attribute(value=m.Name("json"), attr=m.Name("dumps")))
_MAPPINGS_UPDATE = m.Attribute(value=m.Name(_NODE_MAPPINGS), attr=m.Name("update"))


def _last_name(node: cst.BaseExpression) -> str | None:
    if isinstance(node, cst.Name):
        return node.value
    return node.attr.value if isinstance(node, cst.Attribute) else None


def _dotted(node: cst.BaseExpression) -> str | None:
    """`comfy.sd.load_clip` for a name or attribute chain; None for calls, subscripts, ..."""
    if isinstance(node, cst.Name):
        return node.value
    base = _dotted(node.value) if isinstance(node, cst.Attribute) else None
    return f"{base}.{node.attr.value}" if base and isinstance(node, cst.Attribute) else None


def _cst_call(func: cst.BaseExpression) -> tuple[str | None, str] | None:
    if isinstance(func, cst.Name):
        return None, func.value
    if isinstance(func, cst.Attribute):
        return _last_name(func.value), func.attr.value
    return None


def _assigned(stmt: cst.CSTNode) -> list[str]:
    """Names a class-body line assigns: `FUNCTION = "run"`, `INPUT_TYPES: ... = ...`."""
    if not isinstance(stmt, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
        return []
    names = []
    for small in stmt.body:
        if isinstance(small, cst.Assign):
            names += [t.target.value for t in small.targets if isinstance(t.target, cst.Name)]
        elif isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
            names.append(small.target.value)
    return names


@dataclass
class _Class:
    """One class of the module as libcst reads it."""

    node: cst.ClassDef
    bases: list[str] = field(default_factory=list)  # plain names, which may be classes here
    foreign: list[str] = field(default_factory=list)  # the others: `nodes.LoadImage` as LoadImage
    v3: bool = False
    defines: dict[str, int] = field(default_factory=dict)  # name -> index in the class body
    load: str | None = None  # the callee of its first loading call, e.g. "torch.load"

    @property
    def name(self) -> str:
        return self.node.name.value

    @property
    def shape(self) -> _Shape:
        return _Shape(tuple(self.bases), frozenset(self.defines), self.v3)

    def member(self, names: Sequence[str]) -> cst.BaseStatement | None:
        """The class's own definition of the first of `names` it defines."""
        body = self.node.body
        index = next((self.defines[n] for n in names if n in self.defines), None)
        indented = isinstance(body, cst.IndentedBlock)
        return body.body[index] if index is not None and indented else None


class _Gather(cst.CSTVisitor):
    """One read of the module: its classes (not those inside functions) and the names
    NODE_CLASS_MAPPINGS registers; the loading calls in each class only with `loads` (when
    `ast` could not read the file: else the file view has them, without a walk of every
    method in Python)."""

    def __init__(self, loads: bool) -> None:
        self.classes: list[_Class] = []
        self.registered: set[str] = set()
        self._loads = loads
        self._open: list[_Class] = []
        self._functions = 0

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if self._functions:
            return
        cls = _Class(node)
        for arg in node.bases:
            last = _last_name(arg.value)
            if isinstance(arg.value, cst.Name) and last not in _NOT_BASES:
                cls.bases.append(arg.value.value)
            elif last is not None:
                cls.foreign.append(last)
            cls.v3 = cls.v3 or last == _V3_BASE
        body = node.body.body if isinstance(node.body, cst.IndentedBlock) else [node.body]
        for index, stmt in enumerate(body):
            names = [stmt.name.value] if isinstance(stmt, cst.FunctionDef) else _assigned(stmt)
            cls.defines.update(dict.fromkeys(names, index))
        self.classes.append(cls)
        self._open.append(cls)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        if self._open and self._open[-1].node is original_node:
            self._open.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self._functions += 1
        return self._loads and bool(self._open)  # a module-level one holds no class we record

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self._functions -= 1

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        return self._line(node.body)

    def visit_SimpleStatementSuite(self, node: cst.SimpleStatementSuite) -> bool:
        return self._line(node.body)

    def _line(self, body: Sequence[cst.BaseSmallStatement]) -> bool:
        """Registrations on a module-level line; the expressions in it are visited only for
        the loading calls of a class (none to find elsewhere)."""
        if not (self._open or self._functions):
            for small in body:
                self._registration(small)
        return self._loads and bool(self._open)

    def visit_Decorator(self, node: cst.Decorator) -> bool:
        return self._loads

    def visit_Arg(self, node: cst.Arg) -> bool:
        return self._loads  # a class's bases are read in visit_ClassDef

    def visit_Call(self, node: cst.Call) -> None:
        call = _cst_call(node.func)
        if call is not None and _loads(*call):
            for cls in self._open:
                cls.load = cls.load or _dotted(node.func) or call[1]

    def _registration(self, small: cst.BaseSmallStatement) -> None:
        """`NODE_CLASS_MAPPINGS = {...}`, `NODE_CLASS_MAPPINGS["X"] = X`, `.update({...})`."""
        if isinstance(small, cst.Assign):
            for target in small.targets:
                if m.matches(target.target, m.Name(_NODE_MAPPINGS)):
                    self._register_dict(small.value)
                elif m.matches(target.target, m.Subscript(value=m.Name(_NODE_MAPPINGS))):
                    self._register(small.value)
        elif isinstance(small, cst.AnnAssign) and m.matches(small.target, m.Name(_NODE_MAPPINGS)):
            self._register_dict(small.value)
        elif m.matches(small, m.Expr(m.Call(func=_MAPPINGS_UPDATE))):
            call = small.value
            assert isinstance(call, cst.Call)
            self._register_dict(call.args[0].value if call.args else None)

    def _register_dict(self, value: cst.BaseExpression | None) -> None:
        if isinstance(value, cst.Dict):
            for element in value.elements:
                if isinstance(element, cst.DictElement):
                    self._register(element.value)

    def _register(self, value: cst.BaseExpression) -> None:
        if isinstance(value, cst.Name):
            self.registered.add(value.value)


class _Returns(cst.CSTVisitor):
    """The return statements of one function, not of the functions and classes inside it."""

    def __init__(self) -> None:
        self.found: list[cst.Return] = []

    def visit_Return(self, node: cst.Return) -> None:
        self.found.append(node)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False


def _exits(body: Sequence[cst.CSTNode]) -> bool:
    """Whether running `body` (statements, or the small ones of a line) always ends in a return
    or raise: else the function can fall off its end and return None, a value ComfyUI caches
    like any other. Loops and the rest count as not ending: replacing needs certainty."""
    last = body[-1] if body else None
    if isinstance(last, (cst.Return, cst.Raise)):
        return True
    if isinstance(last, cst.SimpleStatementLine):
        return _exits(last.body)
    if isinstance(last, cst.If):
        orelse = last.orelse
        rest = [orelse] if isinstance(orelse, cst.If) else (orelse.body.body if orelse else [])
        return _exits(last.body.body) and _exits(rest)
    if isinstance(last, cst.Try):
        ends = _exits(last.body.body) or bool(last.orelse and _exits(last.orelse.body.body))
        handled = all(_exits(h.body.body) for h in last.handlers)
        return (ends and handled) or bool(last.finalbody and _exits(last.finalbody.body.body))
    return isinstance(last, cst.With) and _exits(last.body.body)


def _nan_returns(method: cst.FunctionDef) -> tuple[int, int]:
    """How many of the method's returns give NaN, and how many it has."""
    returns = _Returns()
    method.body.visit(returns)
    nan = [r for r in returns.found if r.value is not None and m.matches(r.value, _NAN)]
    return len(nan), len(returns.found)


def _always_nan(method: cst.FunctionDef) -> bool:
    """Whether every way out of `method` returns NaN: ComfyUI re-runs the node every time.
    One that is NaN only on some paths (say, when a file is missing) is the author's choice,
    and caches the rest of the time."""
    nan, returns = _nan_returns(method)
    return 0 < nan == returns and _exits(method.body.body)


def _unfilled(method: cst.FunctionDef) -> str | None:
    """The first parameter, when ComfyUI's `Class.IS_CHANGED(**inputs)` leaves it unfilled
    (no classmethod or staticmethod): the call raises, which ComfyUI counts as changed."""
    first = method.params.posonly_params or method.params.params
    bound = any(m.matches(d, _BOUND) for d in method.decorators)
    return first[0].name.value if first and first[0].default is None and not bound else None


def _is_ours(stmt: cst.BaseStatement) -> bool:
    return m.matches(stmt, _OURS) and bool(m.findall(stmt, _FINGERPRINT))


@dataclass(frozen=True)
class _Edit:
    """What happens to one class: a method added at the end, or put where the author's was."""

    method: str  # "IS_CHANGED", or "fingerprint_inputs" for a V3 node
    replaces: int | None = None  # the index in the class body of the method it takes over


class IsChanged(QpatchCodemod):
    """Give each ComfyUI node class that loads a model an IS_CHANGED that stays equal while
    the node's inputs and the files they name do, so ComfyUI reuses the loaded model instead
    of reloading it.

    A node class is one with INPUT_TYPES and FUNCTION (its own or a base class's in this
    file), one named in NODE_CLASS_MAPPINGS, or a V3 `io.ComfyNode` (which gets
    `fingerprint_inputs`, V3's IS_CHANGED). An existing one is the author's: left alone,
    reported when it forces a reload on every run, replaced only when it is the class's own,
    returns NaN on every path, and `replace_nan: true`.
    """

    NAME: ClassVar[str] = "is-changed"
    DESCRIPTION: ClassVar[str] = (
        "Give each node class that loads a model a classmethod IS_CHANGED that fingerprints "
        "its inputs and the files they name, so ComfyUI loads the model once."
    )
    OPTIONS: ClassVar[dict[str, Option]] = {
        "replace_nan": Option(
            bool, False, help="replace an IS_CHANGED that returns NaN on every path"
        ),
        "classes": Option(
            list,
            None,
            items=str,
            help="the classes to give an IS_CHANGED, instead of those that load a model",
        ),
    }

    def __init__(self, context: CodemodContext, **options: Any) -> None:
        super().__init__(context, **options)
        self._view: _FileView | None = None  # what the whole file says, as `ast` reads it
        self._read_file = False  # whether file_seeds had the file (run_codemod calls it)
        # segments.py asks linked_words about the same statements round after round.
        self._classes_in: dict[ast.AST, list[tuple[str, tuple[str, ...], bool]]] = {}

    @property
    def _named(self) -> list[str]:
        return list(self.options["classes"] or ())

    # -- which statements libcst must see (segments.py) ------------------------------------

    def seed_words(self) -> set[str]:
        return (set(self._named) or set(_LOAD_WORDS)) | {_NODE_MAPPINGS}

    def file_seeds(self, text: str) -> set[str]:
        """The seed words; on the way, the file's node classes for the report (a cheap `ast`
        read: libcst may get none of those that load nothing)."""
        self._view, self._read_file = _file_view(text), True
        return self.seed_words()

    def linked_words(self, node: ast.AST, words: Set[str]) -> set[str]:
        """A class that loads a model (itself or through a base) links its name, so its
        subclasses come too; it and every class it links to link their bases, so what they
        inherit (FUNCTION, INPUT_TYPES, IS_CHANGED, a load) is seen."""
        if node not in self._classes_in:
            self._classes_in[node] = [
                (cls.name, _ast_shape(cls).bases, _ast_load(cls) is not None)
                for cls in _ast_classes(node)
            ]
        found: set[str] = set()
        for name, bases, loads_itself in self._classes_in[node]:
            loads = not self._named and (
                loads_itself or any(f"{_LOADS_MARK}{b}" in words for b in bases)
            )
            if loads:
                found |= {name, f"{_LOADS_MARK}{name}"}
            if loads or name in words:
                found |= set(bases)
        return found

    # -- the transform ---------------------------------------------------------------------

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        # Outside run_codemod (tests) the module is the whole file.
        view = self._view if self._read_file else _file_view(tree.code)
        gather = _Gather(loads=view is None)
        tree.visit(gather)
        for cls in gather.classes:
            cls.load = view.loads.get(cls.name) if view else cls.load
        self._registered = gather.registered
        self._classes = {cls.name: cls for cls in gather.classes}
        self._shapes = {name: cls.shape for name, cls in self._classes.items()}
        self._file = view or self._libcst_view(gather.classes)
        self._decided: dict[int, _Edit] = {}  # id(class node) -> its edit
        self._covered: dict[int, bool] = {}  # id(class node) -> it ends with our method
        targets = [cls for cls in gather.classes if self._is_target(cls)]
        for cls in targets:
            self._decide(cls)
        if not targets:
            raise self._nothing_to_patch(gather.classes)
        self._check_named()
        self._summarise(targets)
        self._ours = {
            name: self.statement(_IS_CHANGED.replace("def IS_CHANGED(", f"def {name}("), tree)
            for name in {edit.method for edit in self._decided.values()}
        }
        tree = super().transform_module_impl(tree)
        # As startup.py: nothing left to change (on its own output, or on a file it leaves).
        self.report.already_applied = not self.report.changes
        return tree

    def _libcst_view(self, classes: Sequence[_Class]) -> _FileView:
        """The file view from libcst's read, when `ast` cannot read the file: then
        segments.py gave libcst all of it."""
        nodes = [cls.name for cls in classes if self._is_node(cls)]
        loads = {cls.name: cls.load for cls in classes if cls.load}
        return _FileView(nodes, sorted(self._registered - self._classes.keys()), loads)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # node classes and their IS_CHANGED are class-level: skip method bodies

    def leave_ClassDef(
        self, original_node: cst.ClassDef, updated_node: cst.ClassDef
    ) -> cst.ClassDef:
        edit = self._decided.get(id(original_node))
        body = updated_node.body
        if edit is None or not isinstance(body, cst.IndentedBlock):
            return updated_node
        ours = self._ours[edit.method]
        if edit.replaces is None:
            ours = ours.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
            return updated_node.with_changes(body=body.with_changes(body=[*body.body, ours]))
        statements = list(body.body)
        ours = ours.with_changes(leading_lines=statements[edit.replaces].leading_lines)
        statements[edit.replaces] = ours
        return updated_node.with_changes(body=body.with_changes(body=statements))

    # -- what each class is ----------------------------------------------------------------

    def _lineage(self, cls: _Class) -> list[_Class]:
        return [self._classes[name] for name in _lineage(cls.name, self._shapes)]

    def _load(self, cls: _Class) -> tuple[_Class, str] | None:
        """The class in its lineage that loads a model, and the call it makes."""
        return next(((c, c.load) for c in self._lineage(cls) if c.load), None)

    def _is_node(self, cls: _Class) -> bool:
        return _is_node(cls.name, self._shapes, self._registered)

    def _is_target(self, cls: _Class) -> bool:
        if self._named:
            return cls.name in self._named
        return self._load(cls) is not None and self._is_node(cls)

    def _methods(self, cls: _Class) -> tuple[str, ...]:
        return _V3_METHODS if any(c.v3 for c in self._lineage(cls)) else _V1_METHODS

    # -- what to do with each target -------------------------------------------------------

    def _decide(self, cls: _Class) -> bool:
        """Decide `cls` (a target), report why, and say whether it ends with our method."""
        key = id(cls.node)
        if key not in self._covered:
            self._covered[key] = False  # a cycle of bases covers nothing
            self._covered[key] = self._decide_once(cls)
        return self._covered[key]

    def _decide_once(self, cls: _Class) -> bool:
        methods = self._methods(cls)
        for owner in self._lineage(cls):
            if owner is not cls and self._is_target(owner) and self._decide(owner):
                self.report.find(
                    f"{cls.name} inherits the {methods[0]} of {owner.name}: none added to it",
                    self.line(cls.node),
                    "info",
                )
                return True
            member = owner.member(methods)
            if member is not None:
                return self._existing(cls, owner, member)
        return self._add(cls, methods[0])

    def _add(self, cls: _Class, method: str) -> bool:
        line = self.line(cls.node)
        if not isinstance(cls.node.body, cst.IndentedBlock):
            self.report.find(f"{cls.name} is a one-line class: {method} not added", line)
            return False
        v3 = " (V3's IS_CHANGED)" if method == "fingerprint_inputs" else ""
        self.report.change(
            "is-changed",
            line,
            f"{cls.name}: add a classmethod {method}{v3} that fingerprints the inputs and the "
            f"files they name, so {self._why(cls)} only when they change",
        )
        self._decided[id(cls.node)] = _Edit(method)
        foreign = [
            base
            for c in self._lineage(cls)
            for base in [*c.foreign, *(b for b in c.bases if b not in self._classes)]
            if base not in _NOT_BASES
        ]
        if foreign:
            self.report.find(
                f"{cls.name} derives from {', '.join(foreign)}, not defined in this file: if "
                f"that class has its own {method}, the one added here takes its place",
                line,
            )
        return True

    def _why(self, cls: _Class) -> str:
        """Why the class gets one, as the middle of the sentence the report says about it. No
        line numbers in the words: segments.py maps a report's `line` to the file's, not its
        text."""
        load = self._load(cls)
        if load is None:
            return "the node (named in the option `classes`) runs again"
        owner, what = load
        where = "" if owner is cls else f" in its base class {owner.name}"
        return f"what it loads ({what}(...){where}) loads once, and again"

    def _existing(self, cls: _Class, owner: _Class, member: cst.BaseStatement) -> bool:
        """`cls` has a change check, its own or that of `owner`, a base class here: ours from an
        earlier run, or the author's, replaced only where it is the class's own, returns NaN on
        every path, and `replace_nan` is on; an inherited one is never touched from here."""
        if _is_ours(member):  # an earlier run's
            return True
        own = owner is cls
        method = member if isinstance(member, cst.FunctionDef) else None  # or `X = classmethod(f)`
        name = method.name.value if method else self._methods(cls)[0]
        held = (
            f"{cls.name} has its own {name}" if own else f"{cls.name} inherits {owner.name}.{name}"
        )
        if method is None or not (_always_nan(method) or _unfilled(method)):
            some = method is not None and _nan_returns(method)[0] > 0
            why = " (NaN on some paths only: the author's choice)" if some else ""
            self.report.find(f"{held}{why}: left as it is", self.line(cls.node), "info")
            return False
        self.report.find(
            f"{f'{cls.name}.{name}' if own else f'{held}, which'} {self._fault(method)}: the "
            "node always re-executes"
            + (", reloading the model on every run" if self._load(cls) else "")
            + f" ({self._fix(cls, owner, method)})",
            self.line(method),
        )
        if not (own and _always_nan(method) and self.options["replace_nan"]):
            return False
        self.report.change(
            "is-changed",
            self.line(cls.node),
            f"{cls.name}: replace {name} with one that fingerprints the inputs",
        )
        self._decided[id(cls.node)] = _Edit(name, cls.defines[name])
        return True

    @staticmethod
    def _fault(method: cst.FunctionDef) -> str:
        if _always_nan(method):
            return "returns NaN on every path, which never equals itself"
        return f"is not a classmethod, so calling it on the class fails (no `{_unfilled(method)}`)"

    def _fix(self, cls: _Class, owner: _Class, method: cst.FunctionDef) -> str:
        """What the user can do about a method that re-runs the node every time."""
        if not _always_nan(method):
            return f"left as it is: make {owner.name}.{method.name.value} a @classmethod"
        if owner is not cls:
            return (
                f"left as it is: it is {owner.name}'s (name {owner.name} in the option "
                "`classes`, with replace_nan: true, to replace it there)"
            )
        return "replaced" if self.options["replace_nan"] else "replace_nan: true replaces it"

    # -- the whole file --------------------------------------------------------------------

    def _summarise(self, targets: Sequence[_Class]) -> None:
        """One line for all the node classes left alone, however many the pack has."""
        chosen = {cls.name for cls in targets}
        idle = [] if self._named else [n for n in self._file.nodes if n not in chosen]
        if idle:
            count = "1 node class loads" if len(idle) == 1 else f"{len(idle)} node classes load"
            self.report.find(
                f"{count} no model ({_spelled(idle)}): ComfyUI caches them by their inputs; "
                "no IS_CHANGED added",
                None,
                "info",
            )

    def _check_named(self) -> None:
        missing = [name for name in self._named if name not in self._classes]
        if missing:
            self.report.find(
                f"the option `classes` names {', '.join(missing)}: no such class in this file"
            )
        for cls in (self._classes[n] for n in self._named if n in self._classes):
            if not self._is_node(cls):
                self.report.find(
                    f"{cls.name} is no node class as far as this file tells (no INPUT_TYPES and "
                    f"FUNCTION, not in {_NODE_MAPPINGS}, no io.ComfyNode base): changed as the "
                    "option `classes` asks",
                    self.line(cls.node),
                    "info",
                )

    def _nothing_to_patch(self, classes: Sequence[_Class]) -> NothingToPatch:
        if self._named:
            return NothingToPatch(
                f"{self.path}: no class named in the option `classes` "
                f"({', '.join(self._named)}) is defined in this file"
            )
        view = self._file
        seen = (
            f"; node classes seen: {_spelled(view.nodes)} (ComfyUI caches them by their "
            "inputs, so they need none)"
            if view.nodes
            else ""
        )
        loaders = [cls.name for cls in classes if cls.load]  # loads, yet no node: a helper
        helpers = (
            f"; {_spelled(loaders)} "
            + ("loads weights but is no node class" if len(loaders) == 1 else "load weights but")
            + ("" if len(loaders) == 1 else " are no node classes")
            if loaders
            else ""
        )
        hint = (
            f"{_NODE_MAPPINGS} here names {', '.join(view.elsewhere)}, defined in another file: "
            "patch that file"
            if view.elsewhere and not view.nodes
            else "to give a node an IS_CHANGED anyway, name it in the codemod option `classes`, "
            f"e.g. [{(view.nodes or ['MyNode'])[0]}]"
        )
        return NothingToPatch(
            f"{self.path}: no ComfyUI node class found that loads a model or weights (looked "
            f"for calls of {_looked_for()}){seen}{helpers}",
            hint=hint,
        )
