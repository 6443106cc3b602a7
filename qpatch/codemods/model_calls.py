"""Which calls in a node file run the diffusion model, and whether autograd is on there.

One read of the module (a libcst visitor) gathers facts by scope — what each `self.<attr>`
of a class, each local of a function and each module name is bound to, what each function
returns, which parameters arrive as which ComfyUI type, which `with` blocks and decorators
turn autograd off or on — and `resolve()` then decides every call by data flow: a name is a
DiT because it was bound to `QwenImageTransformer2DModel.from_pretrained(...)`, to a helper
of the same class that returns one, to `pipe.transformer` of a loaded pipeline, or to a node
input of a DiT type; never because another class of the file spells a name the same way.

The transform (checkpoint.py) only applies the decisions, keyed by the call node itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import libcst as cst
import libcst.matchers as m
from libcst.metadata import PositionProvider

from qpatch.codemods.kinds import Kind, kind_of_class, kind_of_input_type, kind_of_part

# Class methods that build an instance from weights; a plain constructor `Cls(...)` counts
# too, but only for class names that clearly name a model (see _constructed_class).
_LOADERS = frozenset({"from_pretrained", "from_single_file", "from_config"})
# Calls on a model that return the same model: `X.from_pretrained(p).to(device).eval()`.
_SAME_OBJECT = frozenset(
    {"to", "eval", "train", "half", "float", "bfloat16", "cuda", "cpu", "requires_grad_"}
)
_MODEL_WORDS = ("Model", "Transformer", "UNet", "Unet", "DiT", "Prior")
# Methods that run a model's own forward pass (`X.forward(...)`, a VAE's `X.decode(...)`),
# so a call of one is a call of X.
_CALLED_AS = frozenset({"forward", "decode", "encode", "generate", "encode_prompt"})


class Autograd(enum.Enum):
    """Whether autograd records at a place in the code.

    Two switches decide it: inference mode (ComfyUI runs nodes inside
    `torch.inference_mode()`; only `inference_mode(False)` leaves it) and grad mode
    (`no_grad()`, `enable_grad()`, `set_grad_enabled(x)`). It records only outside inference
    mode with grad mode on. GRAD: grad mode on, inference mode as ComfyUI left it."""

    OFF = "off"
    ON = "on"
    GRAD = "grad mode only"
    AT_RUN_TIME = "decided at run time"


class Switch(enum.Enum):
    """What one `with` item or decorator sets."""

    INFERENCE_ON = "inference mode on"
    INFERENCE_OFF = "inference mode off"
    GRAD_OFF = "grad mode off"
    GRAD_ON = "grad mode on"
    INFERENCE_AT_RUN_TIME = "inference mode decided at run time"
    GRAD_AT_RUN_TIME = "grad mode decided at run time"


# A symbol is where a value lives: ("attr", class, name), ("local", function, name),
# ("global", name), ("returns", function). Functions are named by their qualified name.
Symbol = tuple[str, ...]


@dataclass(frozen=True)
class Load:
    """An object whose kind a load or an input type tells."""

    kind: Kind
    evidence: str  # e.g. "QwenImagePipeline.from_pretrained(...), line 12"


@dataclass(frozen=True)
class Ref:
    """A value that is another name's (an alias, a helper's return, a pipeline's part)."""

    scope: tuple[str, ...]  # the enclosing functions' qualified names, outermost first
    owner: str | None  # the enclosing class, for `self.`
    dotted: str  # e.g. "self.pipe.transformer", "model", "self._load_dit()"
    index: int | None = None  # the item of a tuple a helper returns: `a, b = self._load()`


Value = Load | Ref


@dataclass
class Site:
    """One call of a name: where it is and what autograd does around it."""

    node: cst.Call
    ref: Ref
    line: int
    autograd: Autograd | None  # set by the innermost `with`/decorator that decides it
    within: tuple[int, ...] = ()  # ids of the classes and functions around it
    callee: str = ""  # as written: `self.model`, `model.forward`, `self.vae.decode`
    in_checkpoint: bool = False  # inside what a checkpoint() call runs (a lambda, an argument)


@dataclass
class Facts:
    bindings: dict[Symbol, list[Value]] = field(default_factory=dict)
    sites: list[Site] = field(default_factory=list)
    bases: dict[str, list[str]] = field(default_factory=dict)
    locals_of: dict[str, set[str]] = field(default_factory=dict)  # function -> bound names
    asks_for_gradients: bool = False  # anything in the file runs a backward pass or trains
    turns_autograd_on: bool = False
    passed: set[str] = field(default_factory=set)  # functions handed to checkpoint() by hand
    wrapped: list[tuple[cst.Call, Ref]] = field(default_factory=list)  # checkpoint(model, ...)
    #: id(call) -> (line, the mode it was written in) of each of those
    wrapped_modes: dict[int, tuple[int, Mode]] = field(default_factory=dict)
    # Assignments from a call: (line, target, the Load it is when a load tells its kind).
    loads: list[tuple[cst.SimpleStatementLine, str, Load | None]] = field(default_factory=list)
    load_within: dict[int, tuple[int, ...]] = field(default_factory=dict)  # id(line) -> scopes
    one_line_loads: list[tuple[int, str, Load | None]] = field(default_factory=list)


def dotted(node: cst.BaseExpression) -> str | None:
    """`self.model` for a name or attribute chain; None for subscripts, calls and the rest."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def _literal(node: cst.BaseExpression) -> bool | None:
    return {"True": True, "False": False}.get(node.value) if isinstance(node, cst.Name) else None


def autograd_effect(
    expr: cst.BaseExpression, aliases: Mapping[str, str] | None = None
) -> Switch | None:
    """What `with <expr>:` or `@<expr>` switches (None: nothing to do with autograd).
    `aliases`: names imported from torch under another name (`im` for inference_mode)."""
    call = expr if isinstance(expr, cst.Call) else None
    name = dotted(call.func if call else expr) or ""
    last = name.rsplit(".", 1)[-1]
    last = (aliases or {}).get(last, last) if "." not in name else last
    first = call.args[0].value if call and call.args else None
    if call and not first:  # inference_mode(mode=False)
        first = next((a.value for a in call.args if a.keyword and a.keyword.value == "mode"), None)
    if last == "no_grad":
        return Switch.GRAD_OFF
    if last == "enable_grad":
        return Switch.GRAD_ON
    if last == "inference_mode":
        mode = True if first is None else _literal(first)
        if mode is None:
            return Switch.INFERENCE_AT_RUN_TIME
        return Switch.INFERENCE_ON if mode else Switch.INFERENCE_OFF
    if last == "set_grad_enabled" and first is not None:
        value = _literal(first)
        if value is None:
            return Switch.GRAD_AT_RUN_TIME
        return Switch.GRAD_ON if value else Switch.GRAD_OFF
    return None


_INFERENCE = (Switch.INFERENCE_ON, Switch.INFERENCE_OFF, Switch.INFERENCE_AT_RUN_TIME)


def context(switches: Sequence[Switch | None]) -> Autograd | None:
    """Autograd where code sits inside `switches` (outermost first): the innermost switch of
    each kind counts. None: nothing around it says (ComfyUI's inference mode, grad mode on)."""
    inference = next((s for s in reversed(switches) if s in _INFERENCE), None)
    grad = next((s for s in reversed(switches) if s and s not in _INFERENCE), None)
    if inference is Switch.INFERENCE_ON or grad is Switch.GRAD_OFF:
        return Autograd.OFF
    if Switch.INFERENCE_AT_RUN_TIME in (inference,) or grad is Switch.GRAD_AT_RUN_TIME:
        return Autograd.AT_RUN_TIME
    if inference is Switch.INFERENCE_OFF:
        return Autograd.ON
    return Autograd.GRAD if grad is Switch.GRAD_ON else None


def _turns_on(call: cst.Call, aliases: Mapping[str, str]) -> bool:
    """Whether a call can bring autograd back inside ComfyUI's inference_mode()."""
    return autograd_effect(call, aliases) in (Switch.INFERENCE_OFF, Switch.INFERENCE_AT_RUN_TIME)


_OPTIMIZERS = frozenset({"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adafactor", "Prodigy"})


def _asks_for_gradients(call: cst.Call) -> bool:
    """`.backward()` on anything, `torch.autograd.grad(...)`, an optimizer or its `step()`,
    `requires_grad_()` training."""
    func = call.func
    last = func.attr.value if isinstance(func, cst.Attribute) else dotted(func) or ""
    name = dotted(func) or ""
    if last == "backward" or name.endswith("autograd.grad") or ".optim." in f".{name}.":
        return True
    if last in _OPTIMIZERS or (last == "step" and "optim" in name.lower()):
        return True
    first = call.args[0].value if call.args else None
    return last == "requires_grad_" and (first is None or _literal(first) is True)


def _constructed_class(call: cst.Call) -> str | None:
    """`Cls` of `Cls(...)` or `Cls.from_pretrained(...)`, under `.to(device)` and the like."""
    while isinstance(call.func, cst.Attribute) and call.func.attr.value in _SAME_OBJECT:
        if not isinstance(call.func.value, cst.Call):
            return None
        call = call.func.value
    func = call.func
    if isinstance(func, cst.Attribute) and func.attr.value in _LOADERS:
        return dotted(func.value)
    name = dotted(func)
    last = (name or "").rsplit(".", 1)[-1]
    if name and last[:1].isupper() and any(word in last for word in _MODEL_WORDS):
        return name
    return None


def _input_types(cls: cst.ClassDef, custom: dict[str, str]) -> dict[str, str]:
    """Input name -> ComfyUI type, from `"name": ("TYPE", ...)` in INPUT_TYPES, or from a V3
    schema's `io.Custom("TYPE").Input("name")` / `io.Model.Input("name")` / `T.Input("name")`
    (`custom`: module names bound to `io.Custom("TYPE")`)."""
    found: dict[str, str] = {}
    for stmt in cls.body.body:
        if m.matches(stmt, m.FunctionDef(name=m.Name("INPUT_TYPES"))):
            pairs = m.findall(stmt, m.DictElement(key=m.SimpleString(), value=m.Tuple()))
            for pair in pairs:
                assert isinstance(pair, cst.DictElement) and isinstance(pair.value, cst.Tuple)
                first = pair.value.elements[0].value if pair.value.elements else None
                if isinstance(first, cst.SimpleString) and isinstance(pair.key, cst.SimpleString):
                    found[str(pair.key.evaluated_value)] = str(first.evaluated_value)
        elif m.matches(stmt, m.FunctionDef(name=m.Name("define_schema"))):
            inputs = m.findall(stmt, m.Call(func=m.Attribute(attr=m.Name("Input"))))
            for call in inputs:
                assert isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute)
                name = call.args[0].value if call.args else None
                kind = _v3_type(call.func.value, custom)
                if isinstance(name, cst.SimpleString) and kind:
                    found[str(name.evaluated_value)] = kind
    return found


def _function_name(cls: cst.ClassDef) -> str | None:
    """The method ComfyUI calls with the node's inputs: `FUNCTION = "run"`, or a V3 node's
    `execute`; None where the class does not say (it may inherit FUNCTION)."""
    for stmt in cls.body.body:
        assign = m.SimpleStatementLine(
            body=[m.Assign(targets=[m.AssignTarget(m.Name("FUNCTION"))], value=m.SimpleString())]
        )
        if m.matches(stmt, assign):
            value = stmt.body[0].value  # type: ignore[union-attr]
            assert isinstance(value, cst.SimpleString)
            return str(value.evaluated_value)
        if m.matches(stmt, m.FunctionDef(name=m.Name("define_schema"))):
            return "execute"
    return None


def _v3_type(socket: cst.BaseExpression, custom: dict[str, str]) -> str | None:
    """ "HUNYUAN_DIT" for `io.Custom("HUNYUAN_DIT")` or a name bound to it; "MODEL" for
    `io.Model`."""
    if isinstance(socket, cst.Call) and socket.args:
        first = socket.args[0].value
        return str(first.evaluated_value) if isinstance(first, cst.SimpleString) else None
    if isinstance(socket, cst.Name):
        return custom.get(socket.value)
    if isinstance(socket, cst.Attribute):
        return socket.attr.value.upper()
    return None


class _Gather(cst.CSTVisitor):
    """The one read of the module that fills Facts."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(
        self, checkpoint: str, file_line: Callable[[int], int | None] = lambda line: line
    ) -> None:
        self.facts = Facts()
        self.file_line = file_line
        self.checkpoint = checkpoint
        self.classes: list[str] = []
        self.functions: list[str] = []  # qualified names
        self.owners: list[str | None] = []  # the class a function belongs to
        self.autograd: list[list[Switch | None]] = []  # per `with`/def: what it switches
        self.torch_names: dict[str, str] = {}  # `im` -> `inference_mode` (from torch import ...)
        self.inputs: list[dict[str, str]] = []
        self.node_function: list[str | None] = []  # the method ComfyUI calls with the inputs
        self.custom_types: dict[str, str] = {}  # module names bound to io.Custom("TYPE")
        self.within: list[int] = []  # ids of the enclosing classes and functions
        self.checkpoint_names = {checkpoint}  # what torch's checkpoint is called in the file
        self.checkpointed_args: set[int] = set()  # ids of first arguments of checkpoint()
        self.in_checkpointed = 0  # how deep inside one of those the visit is

    # -- where we are ------------------------------------------------------------------

    def _ref(self, text: str) -> Ref:
        return Ref(tuple(self.functions), self._owner(), text)

    def _owner(self) -> str | None:
        return self.owners[-1] if self.owners else (self.classes[-1] if self.classes else None)

    def _line(self, node: cst.CSTNode) -> int:
        return self.get_metadata(PositionProvider, node).start.line

    def _context(self) -> Autograd | None:
        return context([switch for frame in self.autograd for switch in frame])

    def _bind(self, target: str, value: Value) -> Symbol | None:
        symbol = self._symbol_for_target(target)
        if symbol is not None:
            self.facts.bindings.setdefault(symbol, []).append(value)
        return symbol

    def _symbol_for_target(self, target: str) -> Symbol | None:
        parts = target.split(".")
        if len(parts) == 1:
            if self.functions:
                self.facts.locals_of.setdefault(self.functions[-1], set()).add(target)
                return ("local", self.functions[-1], target)
            if self.classes:
                return ("attr", self.classes[-1], target)  # a class attribute
            return ("global", target)
        if len(parts) == 2 and parts[0] in ("self", "cls") and self._owner():
            return ("attr", self._owner() or "", parts[1])
        return None

    # -- scopes ------------------------------------------------------------------------

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.within.append(id(node))
        name = node.name.value
        self.classes.append(name)
        self.facts.bases[name] = [b for arg in node.bases if (b := dotted(arg.value))]
        self.inputs.append(_input_types(node, self.custom_types))
        self.node_function.append(_function_name(node))

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.within.pop()
        self.node_function.pop()
        self.classes.pop()
        self.inputs.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.within.append(id(node))
        in_class = bool(self.classes) and (
            not self.functions or self.owners[-1] != self.classes[-1]
        )
        owner = self.classes[-1] if in_class else (self.owners[-1] if self.owners else None)
        prefix = (
            f"{self.functions[-1]}."
            if self.functions
            else (f"{self.classes[-1]}." if in_class else "")
        )
        qualname = prefix + node.name.value
        self.functions.append(qualname)
        self.owners.append(owner)
        names = self.torch_names
        self.autograd.append([autograd_effect(d.decorator, names) for d in node.decorators])
        function = self.node_function[-1] if in_class and self.node_function else None
        takes_inputs = function is None or node.name.value == function
        inputs = self.inputs[-1] if in_class and self.inputs and takes_inputs else {}
        params = node.params
        for param in [*params.posonly_params, *params.params, *params.kwonly_params]:
            name = param.name.value
            self.facts.locals_of.setdefault(qualname, set()).add(name)
            if name in inputs:
                kind = kind_of_input_type(inputs[name])
                if kind is not Kind.UNKNOWN:
                    evidence = f"node input {name!r} of type {inputs[name]}"
                    self._bind(name, Load(kind, evidence))

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.within.pop()
        self.functions.pop()
        self.owners.pop()
        self.autograd.pop()

    def visit_With(self, node: cst.With) -> None:
        self.autograd.append([autograd_effect(item.item, self.torch_names) for item in node.items])

    def leave_With(self, original_node: cst.With) -> None:
        self.autograd.pop()

    # -- bindings ----------------------------------------------------------------------

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> None:
        self._statements(node, node.body)

    def visit_SimpleStatementSuite(self, node: cst.SimpleStatementSuite) -> None:
        self._statements(None, node.body, line=self._line(node))

    def _statements(
        self,
        line_node: cst.SimpleStatementLine | None,
        body: Sequence[cst.BaseSmallStatement],
        line: int = 0,
    ) -> None:
        for stmt in body:
            if isinstance(stmt, cst.Assign) and not self.functions and not self.classes:
                socket = _v3_type(stmt.value, {}) if isinstance(stmt.value, cst.Call) else None
                for t in stmt.targets:
                    if socket and isinstance(t.target, cst.Name):
                        self.custom_types[t.target.value] = socket
            if isinstance(stmt, cst.Assign):
                targets = [t.target for t in stmt.targets]
            elif isinstance(stmt, cst.AnnAssign) and stmt.value is not None:
                targets = [stmt.target]
            elif isinstance(stmt, cst.Return) and stmt.value is not None and self.functions:
                self._returns(stmt.value)
                continue
            else:
                continue
            trained = any((dotted(t) or "").endswith(".requires_grad") for t in targets)
            if trained and stmt.value is not None and _literal(stmt.value) is True:
                self.facts.asks_for_gradients = True
            if stmt.value is None:
                continue
            pairs = [pair for target in targets for pair in self._unpacked(target, stmt.value)]
            for target, value_expr, value in pairs:
                text = dotted(target)
                symbol = self._bind(text, value) if text else None
                if symbol is None or not isinstance(value_expr, cst.Call):
                    continue
                load = value if isinstance(value, Load) else None
                if line_node is not None:
                    self.facts.loads.append((line_node, text or "", load))
                    self.facts.load_within[id(line_node)] = tuple(self.within)
                else:
                    self.facts.one_line_loads.append((line, text or "", load))

    def _returns(self, expr: cst.BaseExpression) -> None:
        function = self.functions[-1]
        items = expr.elements if isinstance(expr, cst.Tuple) else ()
        for i, element in enumerate(items):
            if (value := self._value(element.value)) is not None:
                self.facts.bindings.setdefault(("returns", function, str(i)), []).append(value)
        if not items and (value := self._value(expr)) is not None:
            self.facts.bindings.setdefault(("returns", function), []).append(value)

    def _unpacked(
        self, target: cst.BaseExpression, expr: cst.BaseExpression
    ) -> list[tuple[cst.BaseExpression, cst.BaseExpression, Value]]:
        """(target, value expression, value) for `a = x`, `a, b = x, y` and `a, b = f()`."""
        if not isinstance(target, (cst.Tuple, cst.List)):
            value = self._value(expr)
            return [(target, expr, value)] if value is not None else []
        names = [e.value for e in target.elements]
        if isinstance(expr, (cst.Tuple, cst.List)) and len(expr.elements) == len(names):
            return [
                pair
                for name, element in zip(names, expr.elements, strict=True)
                for pair in self._unpacked(name, element.value)
            ]
        ref = self._value(expr)
        if not isinstance(ref, Ref) or not ref.dotted.endswith("()"):
            return []
        return [(name, expr, replace(ref, index=i)) for i, name in enumerate(names)]

    def _value(self, expr: cst.BaseExpression) -> Value | None:
        """What an assigned or returned expression is, as far as models go."""
        text = dotted(expr)
        if text is not None:
            return self._ref(text)
        if isinstance(expr, cst.Subscript) and (held := dotted(expr.value)):
            return self._ref(held)  # `t5["model"]`: node types are often dicts of the model
        if not isinstance(expr, cst.Call):
            return None
        if cls := _constructed_class(expr):
            loader = expr.func.attr.value if isinstance(expr.func, cst.Attribute) else ""
            how = f".{loader}" if loader in _LOADERS else ""
            line = self.file_line(self._line(expr))
            return Load(kind_of_class(cls), f"{cls}{how}(...), line {line}")
        func = expr.func
        while isinstance(func, cst.Attribute) and func.attr.value in _SAME_OBJECT:
            inner = func.value
            if not isinstance(inner, cst.Call):
                return self._ref(dotted(inner) or "") if dotted(inner) else None
            func = inner.func
            expr = inner
        called = dotted(func)
        return self._ref(f"{called}()") if called else None

    # -- calls -------------------------------------------------------------------------

    def _is_checkpoint(self, func: cst.BaseExpression) -> bool:
        """torch's checkpoint under any name the file gives it (imported at module level or in
        a function, `torch.utils.checkpoint.checkpoint`), or `torch.no_grad()(checkpoint)` as
        the rewrite writes it."""
        if isinstance(func, cst.Call) and len(func.args) == 1:
            no_grad = m.Call(func=m.Attribute(attr=m.Name("no_grad")) | m.Name("no_grad"))
            if m.matches(func.func, no_grad):
                func = func.args[0].value
        name = dotted(func) or ""
        return name in self.checkpoint_names or name.endswith("utils.checkpoint.checkpoint")

    def _functions_named(self, callee: str) -> set[str]:
        """The qualified names a function handed to checkpoint() may have: nested in an
        enclosing function, a method of this class (`self._run`), or a module function."""
        parts = callee.split(".")
        if parts[0] in ("self", "cls") and len(parts) == 2 and self._owner():
            return {f"{self._owner()}.{parts[1]}"}
        if len(parts) == 1:
            return {f"{fn}.{callee}" for fn in self.functions} | {callee}
        return set()

    def visit_Arg(self, node: cst.Arg) -> None:
        if id(node) in self.checkpointed_args:
            self.in_checkpointed += 1

    def leave_Arg(self, original_node: cst.Arg) -> None:
        if id(original_node) in self.checkpointed_args:
            self.in_checkpointed -= 1

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        module = dotted(node.module) if node.module else None
        if module not in ("torch", "torch.utils.checkpoint") or isinstance(
            node.names, cst.ImportStar
        ):
            return
        for alias in node.names:
            name = dotted(alias.name) or ""
            asname = dotted(alias.asname.name) if alias.asname else name
            if module == "torch":
                self.torch_names[asname or name] = name
            elif name == "checkpoint":
                self.checkpoint_names.add(asname or name)

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            if dotted(alias.name) == "torch.utils.checkpoint" and alias.asname:
                self.checkpoint_names.add(f"{dotted(alias.asname.name)}.checkpoint")

    def visit_Call(self, node: cst.Call) -> None:
        if _turns_on(node, self.torch_names):
            self.facts.turns_autograd_on = True
        if _asks_for_gradients(node):
            self.facts.asks_for_gradients = True
        func = node.func
        if self._is_checkpoint(func) and node.args:
            first = node.args[0].value
            self.checkpointed_args.add(id(node.args[0]))
            if (callee := dotted(first)) is not None:
                self.facts.wrapped.append((node, self._ref(callee.removesuffix(".forward"))))
                self.facts.passed |= self._functions_named(callee)
                mode = Mode.OFF if isinstance(func, cst.Call) else Mode.KEEP
                self.facts.wrapped_modes[id(node)] = (self._line(node), mode)
            return
        name = dotted(func)
        if name is None:
            return
        model = name
        if isinstance(func, cst.Attribute) and func.attr.value in _CALLED_AS:
            model = name.rsplit(".", 1)[0]
        site = Site(
            node,
            self._ref(model),
            self._line(node),
            self._context(),
            tuple(self.within),
            name,
            self.in_checkpointed > 0,
        )
        self.facts.sites.append(site)


class Resolver:
    """Kinds of names, by following the bindings Facts recorded."""

    def __init__(self, facts: Facts, named: Sequence[str] | None) -> None:
        self.facts = facts
        self.named = set(named) if named is not None else None
        self._memo: dict[Symbol, Load | None] = {}

    def _bases(self, cls: str) -> Iterator[str]:
        seen = {cls}
        todo = [cls]
        while todo:
            current = todo.pop(0)
            yield current
            for base in self.facts.bases.get(current, ()):
                base = base.rsplit(".", 1)[-1]
                if base in self.facts.bases and base not in seen:
                    seen.add(base)
                    todo.append(base)

    def symbol(self, ref: Ref, name: str) -> Symbol | None:
        """The symbol a bare name means where `ref` was written: a local of the innermost
        function binding it, else a module name."""
        for function in reversed(ref.scope):
            if name in self.facts.locals_of.get(function, ()):
                return ("local", function, name)
        return ("global", name)

    def kind(self, ref: Ref) -> Load | None:
        """What `ref` holds, or None when it is nothing we track (not a model)."""
        text = ref.dotted
        if text.endswith("()"):
            item = () if ref.index is None else (str(ref.index),)
            return self._returned(ref, text[:-2], item)
        parts = text.split(".")
        if parts[0] in ("self", "cls") and ref.owner and len(parts) >= 2:
            holder = self._attr(ref.owner, parts[1])
            rest = parts[2:]
        else:
            symbol = self.symbol(ref, parts[0])
            holder = self._of(symbol) if symbol else None
            rest = parts[1:]
        for part in rest:
            kind = kind_of_part(holder.kind, part) if holder is not None else None
            if holder is None or kind is None:
                return None
            holder = Load(kind, f"{holder.evidence} -> .{part}")
        return holder

    def _attr(self, cls: str, attr: str) -> Load | None:
        for owner in self._bases(cls):
            found = self._of(("attr", owner, attr))
            if found is not None:
                return found
        return None

    def _returned(self, ref: Ref, called: str, item: tuple[str, ...]) -> Load | None:
        parts = called.split(".")
        if parts[0] in ("self", "cls") and ref.owner and len(parts) == 2:
            for owner in self._bases(ref.owner):
                found = self._of(("returns", f"{owner}.{parts[1]}", *item))
                if found is not None:
                    return found
            return None
        if len(parts) == 1:
            return self._of(("returns", called, *item))
        return None

    def _of(self, symbol: Symbol) -> Load | None:
        if symbol in self._memo:
            return self._memo[symbol]
        self._memo[symbol] = None  # a cycle of aliases holds nothing
        loads = [
            load
            for value in self.facts.bindings.get(symbol, ())
            if (load := value if isinstance(value, Load) else self.kind(value)) is not None
        ]
        kinds = {load.kind for load in loads} - {Kind.UNKNOWN}
        found = next((load for load in loads if load.kind is not Kind.UNKNOWN), None)
        if Kind.DIFFUSION in kinds and len(kinds) > 1:
            # assigned a DiT in one place and something else in another: which one a call
            # reaches depends on the order the code runs in, which this read does not follow
            seen = ", ".join(f"{load.kind.value} ({load.evidence})" for load in loads)
            found = Load(Kind.AMBIGUOUS, seen)
        found = found or (loads[0] if loads else None)
        self._memo[symbol] = found
        return found


class Mode(enum.Enum):
    """How a wrapped call treats autograd (the codemod's `autograd` option)."""

    KEEP = "keep"  # checkpoint only: the node runs a backward pass, recompute there
    OFF = "off"  # checkpoint under no_grad: nothing kept for a backward that never comes


_SKIPS: dict[Kind, str] = {
    Kind.PIPELINE: "the pipeline runs without autograd (a diffusers pipeline runs its steps "
    "under torch.no_grad()): nothing to save",
    Kind.TEXT_ENCODER: "a text encoder runs once per prompt, not once per step: not the "
    "diffusion model",
    Kind.VAE: "a VAE encodes or decodes once, not once per step: not the diffusion model",
    Kind.NOT_A_MODEL: "holds no weights to checkpoint",
    Kind.AMBIGUOUS: "the name holds a diffusion model in one place and another kind of model "
    "in another: left alone (name it in the option `models` to wrap it)",
}
CHECKPOINT_KEYWORDS = frozenset(
    {"use_reentrant", "preserve_rng_state", "context_fn", "determinism_check", "debug"}
)


@dataclass(frozen=True)
class Decision:
    """What to do with one call, and the words the report says about it."""

    callee: str
    line: int
    code: str  # "wrap", "already-wrapped", or why it is left alone: a Kind's code, "no-grad", ...
    message: str
    mode: Mode | None = None
    load: Load | None = None
    severity: Literal["info", "warning"] = "info"
    model: str = ""  # the name the call reaches the model by (`self.model` for its .forward)

    @property
    def wraps(self) -> bool:
        return self.code == "wrap"


@dataclass
class Decisions:
    by_call: dict[int, Decision]  # id(call node) -> decision
    enable_after: dict[int, list[str]]  # id(load line) -> models to turn on checkpointing for
    touched: set[int]  # ids of the classes and functions the transform must enter
    one_line_loads: list[tuple[int, str]]
    earlier_work: bool
    modes: dict[str | None, Mode]  # the class of each wrapped call -> how it was wrapped
    #: (line, words) for an earlier wrap written in another mode than this run would choose
    stale: list[tuple[int, str]] = field(default_factory=list)


_NO = Decision("", 0, "none", "")


def decide(facts: Facts, named: Sequence[str] | None, autograd: str) -> Decisions:
    """Every model call's fate: wrapped (and how), or left alone and why."""
    resolver = Resolver(facts, named)
    loads = [(site, _load_of(resolver, site.ref, named)) for site in facts.sites]
    wrapped = [_load_of(resolver, ref, named) for _, ref in facts.wrapped]
    has_diffusion = any(
        load and load.kind is Kind.DIFFUSION for load in [*wrapped, *(load for _, load in loads)]
    )
    by_call: dict[int, Decision] = {}
    modes: dict[str | None, Mode] = {}
    for site, load in loads:
        method = site.callee.rsplit(".", 1)[-1] if site.callee != site.ref.dotted else "forward"
        if load is None or (method != "forward" and load.kind not in _SKIPS):
            continue  # a DiT's own encode()/decode() is no denoising step
        decision = _decide_site(site, load, facts, has_diffusion, named is not None, autograd)
        decision = replace(decision, model=site.ref.dotted)
        by_call[id(site.node)] = decision
        if decision.mode is not None:
            modes[site.ref.owner] = decision.mode
    earlier = any(load is not None for load in wrapped) or any(
        d.code == "already-wrapped" for d in by_call.values()
    )
    kept = {d.load for d in by_call.values() if d.wraps and d.mode is Mode.KEEP}
    kept_names = {d.model for d in by_call.values() if d.wraps and d.mode is Mode.KEEP}

    def enables(target: str, load: Load | None) -> bool:
        """Named models get it after any call assigned to them; found ones after their load."""
        return target in kept_names if named is not None else load is not None and load in kept

    enable_after: dict[int, list[str]] = {}
    for line_node, target, load in facts.loads:
        if enables(target, load):
            enable_after.setdefault(id(line_node), []).append(target)
    one_line = [
        (line, target) for line, target, load in facts.one_line_loads if enables(target, load)
    ]
    touched = {
        i for site in facts.sites if by_call.get(id(site.node), _NO).wraps for i in site.within
    }
    touched |= {i for line in enable_after for i in facts.load_within.get(line, ())}
    wanted = (
        Mode(autograd)
        if autograd != "auto"
        else (Mode.KEEP if facts.asks_for_gradients else Mode.OFF)
    )
    stale = [
        (
            line,
            f"{ref.dotted}: wrapped earlier with autograd: {mode.value}, while this run "
            f"would write autograd: {wanted.value}: left as it is (roll back and apply again to "
            "rewrite it)",
        )
        for (node, ref), load in zip(facts.wrapped, wrapped, strict=True)
        if load is not None
        for line, mode in [facts.wrapped_modes.get(id(node), (0, wanted))]
        if mode is not wanted
    ]
    return Decisions(by_call, enable_after, touched, one_line, earlier, modes, stale)


def _load_of(resolver: Resolver, ref: Ref, named: Sequence[str] | None) -> Load | None:
    if named is not None:
        return Load(Kind.DIFFUSION, "named in the option `models`") if ref.dotted in named else None
    return resolver.kind(ref)


def _decide_site(
    site: Site, load: Load, facts: Facts, has_diffusion: bool, named: bool, autograd: str
) -> Decision:
    callee, line = site.callee or site.ref.dotted, site.line
    what = f"{callee}(...) ({load.kind.value}: {load.evidence})"

    def skip(code: str, why: str) -> Decision:
        return Decision(callee, line, code, f"{what}: {why}", load=load)

    if load.kind in _SKIPS:
        return skip(load.kind.reason, _SKIPS[load.kind])
    if load.kind is Kind.UNKNOWN and has_diffusion:
        return skip(
            "unknown-kind",
            "not wrapped: this file has a diffusion model, and this is not it as far as its "
            "class tells (name it in the option `models` to wrap it)",
        )
    if site.in_checkpoint or facts.passed.intersection(site.ref.scope):
        return Decision(
            callee,
            line,
            "already-wrapped",
            f"{what}: already runs under checkpoint (its "
            "function is passed to checkpoint()): left as it is",
            load=load,
        )
    if site.autograd is Autograd.OFF:
        return skip(
            "no-grad",
            "already runs without autograd (inside torch.no_grad() or torch.inference_mode()): "
            "nothing to save",
        )
    if site.autograd in (None, Autograd.GRAD) and not facts.turns_autograd_on and not named:
        grad_only = (
            " (torch.enable_grad() around it changes grad mode only; torch.inference_mode(False) "
            "is what would bring autograd back)"
            if site.autograd is Autograd.GRAD
            else ""
        )
        return skip(
            "inference-mode",
            "ComfyUI runs nodes in torch.inference_mode() and nothing in this file leaves it"
            f"{grad_only}: it already runs without autograd, nothing to save",
        )
    taken = {a.keyword.value for a in site.node.args if a.keyword} & CHECKPOINT_KEYWORDS
    if taken:
        why = f"passes {', '.join(sorted(taken))}, a keyword of checkpoint() itself: left unwrapped"
        return Decision(
            callee,
            line,
            "checkpoint-keyword",
            f"{callee}(...) {why}",
            load=load,
            severity="warning",
        )
    mode = (
        Mode(autograd)
        if autograd != "auto"
        else (Mode.KEEP if facts.asks_for_gradients else Mode.OFF)
    )
    return Decision(callee, line, "wrap", what, mode, load)


def gather(
    wrapper: cst.MetadataWrapper,
    checkpoint: str,
    file_line: Callable[[int], int | None] = lambda line: line,
) -> Facts:
    """Read the module once; `checkpoint` is the name checkpoint() has in it; `file_line`
    maps the module's lines to the file's (for the lines quoted in evidence)."""
    visitor = _Gather(checkpoint, file_line)
    wrapper.visit(visitor)
    return visitor.facts
