"""Transform `gradient-checkpointing`: the post's section 3.2, done so it cannot break the node.

Two passes: a plain visitor learns which names hold a model (loads can come after the calls
in the file), then the transformer inserts the enable statement after each load and wraps
each call. libcst's AddImportsVisitor then adds the import, or a name already imported is
reused.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence, Set
from typing import Any, ClassVar

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, GatherImportsVisitor, ImportItem

from qpatch.codemods.base import NothingToPatch, Option, QpatchCodemod
from qpatch.codemods.segments import words_of
from qpatch.errors import BadInput

CHECKPOINT_MODULE = "torch.utils.checkpoint"
# The name checkpoint() gets, the first one the module does not use already.
_CHECKPOINT_NAMES = ("checkpoint", "torch_checkpoint", "qpatch_checkpoint")

# checkpoint()'s own keywords: a model call passing one would have it taken by checkpoint.
_CHECKPOINT_KEYWORDS = frozenset(
    {"use_reentrant", "preserve_rng_state", "context_fn", "determinism_check", "debug"}
)
# from_pretrained of these returns no nn.Module: nothing for checkpointing to save.
_NOT_MODELS = ("Tokenizer", "TokenizerFast", "Processor", "FeatureExtractor", "Scheduler", "Config")

# Inserted after each load. The model's own switch comes first: diffusers blocks that see
# `gradient_checkpointing = True` without it call a helper only that switch installs.
# Objects without one (or refusing it) get the post's attribute on the layers that have it.
_ENABLE = """\
try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
    (getattr(MODEL, "enable_gradient_checkpointing", None) or MODEL.gradient_checkpointing_enable)()
except Exception:
    [setattr(m, "gradient_checkpointing", True) for m in getattr(MODEL, "modules", list)() if hasattr(m, "gradient_checkpointing")]
"""  # noqa: E501

_FROM_PRETRAINED = m.Call(func=m.Attribute(attr=m.Name("from_pretrained")))


def _dotted(node: cst.BaseExpression) -> str | None:
    """`self.model` for a name or attribute chain; None for subscripts, calls and the rest."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def _matcher(dotted: str) -> m.BaseExpression:
    """A matcher for the expression `dotted` names, whatever its spacing or parentheses."""
    *base, last = dotted.split(".")
    if not base:
        return m.Name(last)
    return m.Attribute(value=_matcher(".".join(base)), attr=m.Name(last))


def _last_word(target: ast.expr) -> list[str]:
    """`model` for `self.model` or `model`: the word a call of it must contain (none for
    other expressions)."""
    if isinstance(target, ast.Attribute):
        return [target.attr]
    return [target.id] if isinstance(target, ast.Name) else []


def _loaded_class(value: cst.BaseExpression | None) -> str | None:
    """The class in `Cls.from_pretrained(...)`, also under chained calls like `.to(device)`."""
    while isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute):
        if m.matches(value, _FROM_PRETRAINED):
            return cst.Module([]).code_for_node(value.func.value)
        value = value.func.value
    return None


def _assignments(stmt: cst.BaseSmallStatement) -> tuple[list[str], cst.BaseExpression | None]:
    """Targets (as dotted names) and value of an assignment; nothing for other statements."""
    if isinstance(stmt, cst.Assign):
        return [name for t in stmt.targets if (name := _dotted(t.target))], stmt.value
    if isinstance(stmt, cst.AnnAssign) and (name := _dotted(stmt.target)):
        return [name], stmt.value
    return [], None


class _Scan(cst.CSTVisitor):
    """First pass: models loaded (or named), aliases of them, and every name in use."""

    def __init__(self, models: Sequence[str] | None) -> None:
        self.named = models is not None
        self.models: set[str] = set(models or ())
        self.not_models: set[str] = set()  # e.g. "AutoTokenizer"
        self.aliases: list[tuple[str, str]] = []
        self.names: set[str] = set()
        self.passed: set[tuple[str, str]] = set()  # (callee, name of its first argument)

    def visit_Assign(self, node: cst.Assign) -> None:
        self._assignment(node)

    def visit_Call(self, node: cst.Call) -> None:
        first = node.args[0].value if node.args else None
        if isinstance(first, cst.Name) and (callee := _dotted(node.func)):
            self.passed.add((callee, first.value))

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        self._assignment(node)

    def _assignment(self, node: cst.Assign | cst.AnnAssign) -> None:
        targets, value = _assignments(node)
        if self.named or not targets:
            return
        source = _dotted(value) if value is not None else None
        if source is not None:
            self.aliases += [(target, source) for target in targets]
        elif cls := _loaded_class(value):
            if cls.endswith(_NOT_MODELS):
                self.not_models.add(cls)
            else:
                self.models.update(targets)

    def visit_Name(self, node: cst.Name) -> None:
        self.names.add(node.value)

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)  # `x.checkpoint` takes no name from the module
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)  # nor does a keyword `checkpoint=`
        return False

    def resolve(self) -> set[str]:
        """Models plus names assigned from them (`self.model = model`), to a fixed point."""
        grew = True
        while grew:
            new = {target for target, source in self.aliases if source in self.models}
            grew = bool(new - self.models)
            self.models |= new
        return self.models


class GradientCheckpointing(QpatchCodemod):
    """Wrap each call of a `from_pretrained` model in torch.utils.checkpoint and turn on the
    model's own gradient checkpointing right after it loads.

    `X.forward(...)` becomes `checkpoint(X.forward, ...)`, not `checkpoint(X, ...)`: the
    author called forward directly, skipping nn.Module hooks (forward hooks, offload hooks),
    and the rewrite must run the same code it wraps, only with fewer activations kept.
    """

    NAME: ClassVar[str] = "gradient-checkpointing"
    DESCRIPTION: ClassVar[str] = (
        "Run every call of a from_pretrained model under torch.utils.checkpoint and turn on "
        "the model's own gradient checkpointing after it loads."
    )
    OPTIONS: ClassVar[dict[str, Option]] = {
        "use_reentrant": Option(bool, False, help="checkpoint(..., use_reentrant=)"),
        "preserve_rng_state": Option(bool, None, help="checkpoint(..., preserve_rng_state=)"),
        "models": Option(list, None, items=str, help="models to wrap, e.g. [self.model]"),
    }

    def __init__(self, context: CodemodContext, **options: Any) -> None:
        super().__init__(context, **options)
        for name in self.options["models"] or ():
            if not all(part.isidentifier() for part in name.split(".")):
                raise BadInput(
                    f"codemod {self.NAME!r}: option 'models' takes names like self.model, "
                    f"got {name!r}"
                )
        self._pending: dict[int, list[tuple[str, bool]]] = {}  # id(line) -> [(model, enabled)]
        self._earlier_work = False
        self._enable: dict[str, cst.BaseStatement] = {}

    def seed_words(self) -> set[str]:
        named = {name.rsplit(".", 1)[-1] for name in self.options["models"] or ()}
        return {"from_pretrained", *_CHECKPOINT_NAMES} | named

    def linked_words(self, node: ast.AST, words: Set[str]) -> set[str]:
        """Names a model may reach: those assigned from a from_pretrained call (a load) or
        from a name or attribute in `words` (an alias), as the scan below reads them."""
        linked: set[str] = set()
        for sub in ast.walk(node):
            if not isinstance(sub, (ast.Assign, ast.AnnAssign)) or sub.value is None:
                continue
            value = sub.value
            alias = not words.isdisjoint(_last_word(value))
            if alias or "from_pretrained" in words_of(value):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                linked |= {word for target in targets for word in _last_word(target)}
        return linked

    # -- the two passes ------------------------------------------------------------------

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        scan = _Scan(self.options["models"])
        tree.visit(scan)
        models = scan.resolve()
        if not models:
            only = f" (found only {', '.join(sorted(scan.not_models))}: not models)"
            raise NothingToPatch(
                f"{self.path}: no model to patch: looked for a name or attribute assigned "
                f"from `<anything>.from_pretrained(...)`{only if scan.not_models else ''}",
                hint="name the model with the codemod option `models`, e.g. [self.model]",
            )
        self._models = models
        self._module = tree
        # One test per node, not one alternative per model: a node file can load hundreds.
        model = m.MatchIfTrue(lambda node: _dotted(node) in models)
        callee = model | m.Attribute(value=model, attr=m.Name("forward"))
        self._model_call = m.Call(func=callee)
        imported = self._imported_checkpoint(tree)
        self._checkpoint = imported or self._free_name(scan.names)
        self._checkpoint_expr = cst.parse_expression(self._checkpoint)
        self._wrapped_call = m.Call(
            func=_matcher(self._checkpoint), args=[m.Arg(callee), m.ZeroOrMore()]
        )
        # The post's own shape: `checkpoint(custom_forward, ...)` around a model call.
        self._by_hand = {name for callee, name in scan.passed if callee == self._checkpoint}
        self._functions: list[str] = []
        self._wraps = 0
        tree = super().transform_module_impl(tree)
        if not self._wraps and not self._earlier_work:
            raise NothingToPatch(
                f"{self.path}: no call of {', '.join(sorted(models))} to wrap: looked for "
                "`X(...)` and `X.forward(...)`"
            )
        if self._wraps:
            if not imported:
                alias = None if self._checkpoint == "checkpoint" else self._checkpoint
                tree = self._add_import(tree, ImportItem(CHECKPOINT_MODULE, "checkpoint", alias))
                as_alias = f" as {alias}" if alias else ""
                self.report.change(
                    "import", None, f"add `from {CHECKPOINT_MODULE} import checkpoint{as_alias}`"
                )
            self.report.find(
                "checkpointing saves memory only while autograd is on: ComfyUI runs nodes in "
                "torch.inference_mode(), where it changes nothing unless the node turns "
                "autograd back on",
                severity="info",
            )
        self.report.already_applied = self._earlier_work and not self.report.changes
        return tree

    def _add_import(self, tree: cst.Module, item: ImportItem) -> cst.Module:
        """libcst's AddImportsVisitor, run on the module's head only: it puts the import after
        the leading imports, and over a whole big module its passes cost seconds."""
        leading = m.SimpleStatementLine(body=[m.Import() | m.ImportFrom()])
        end = next((i for i, s in enumerate(tree.body[1:], 1) if not m.matches(s, leading)), 0)
        head = tree.with_changes(body=tree.body[: end + 1])
        head = AddImportsVisitor(self.context, [item]).transform_module(head)
        return tree.with_changes(body=[*head.body, *tree.body[end + 1 :]])

    def _imported_checkpoint(self, tree: cst.Module) -> str | None:
        """How the module-level imports already reach checkpoint(), under any alias."""
        gatherer = GatherImportsVisitor(self.context)
        for stmt in tree.body:  # an import inside a function is not visible elsewhere
            if not isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
                stmt.visit(gatherer)
        if "checkpoint" in gatherer.object_mapping.get(CHECKPOINT_MODULE, ()):
            return "checkpoint"
        for name, alias in gatherer.alias_mapping.get(CHECKPOINT_MODULE, ()):
            if name == "checkpoint":
                return alias
        if "checkpoint" in gatherer.object_mapping.get("torch.utils", ()):
            return "checkpoint.checkpoint"
        for name, alias in gatherer.alias_mapping.get("torch.utils", ()):
            if name == "checkpoint":
                return f"{alias}.checkpoint"
        if alias := gatherer.module_aliases.get(CHECKPOINT_MODULE):
            return f"{alias}.checkpoint"
        if CHECKPOINT_MODULE in gatherer.module_imports:
            return f"{CHECKPOINT_MODULE}.checkpoint"
        return None

    @staticmethod
    def _free_name(names: set[str]) -> str:
        """`checkpoint`, unless the module already uses that name (often a weights path)."""
        return next(name for name in _CHECKPOINT_NAMES if name not in names)

    # -- enable statement after each load -------------------------------------------------

    def _loads_in(self, line: cst.SimpleStatementLine | cst.SimpleStatementSuite) -> list[str]:
        """The models this line loads: the first target of each assignment from
        from_pretrained (or, for models named in the options, from any call)."""
        named = self.options["models"] is not None
        loads = []
        for stmt in line.body:
            targets, value = _assignments(stmt)
            loaded = [t for t in targets if t in self._models]
            if loaded and (m.matches(value, m.Call()) if named else _loaded_class(value)):
                loads.append(loaded[0])
        return loads

    def _enables(self, stmt: cst.CSTNode | None, model: str) -> bool:
        """Whether `stmt` turns on `model`'s gradient checkpointing (ours, or the model's
        own switch called by hand)."""
        if stmt is None:
            return False
        target = _matcher(model)
        switch = m.Name("enable_gradient_checkpointing") | m.Name("gradient_checkpointing_enable")
        ours = m.Call(
            func=m.Name("getattr"),
            args=[
                m.Arg(target),
                m.Arg(m.SimpleString(m.MatchRegex(r"^.enable_gradient_checkpointing.$"))),
                m.ZeroOrMore(),
            ],
        )
        by_hand = m.Call(func=m.Attribute(value=target, attr=switch))
        return bool(m.findall(stmt, ours | by_hand))

    def _note_loads(self, body: Sequence[cst.BaseStatement]) -> None:
        """Which load lines need an enable statement: not those followed by one already."""
        for i, stmt in enumerate(body):
            if isinstance(stmt, cst.SimpleStatementLine) and (loads := self._loads_in(stmt)):
                after = body[i + 1 : i + 1 + len(loads)]
                self._pending[id(stmt)] = [
                    (model, any(self._enables(s, model) for s in after)) for model in loads
                ]

    def visit_Module(self, node: cst.Module) -> None:
        self._note_loads(node.body)

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        self._note_loads(node.body)

    def visit_SimpleStatementSuite(self, node: cst.SimpleStatementSuite) -> None:
        for model in self._loads_in(node):
            self.report.find(
                f"{model} is loaded on the same line as its `if`/`with`/...: its own gradient "
                "checkpointing is not turned on (put the load on a line of its own to get it)",
                self.line(node),
            )

    def leave_SimpleStatementLine(
        self, original_node: cst.SimpleStatementLine, updated_node: cst.SimpleStatementLine
    ) -> cst.SimpleStatementLine | cst.FlattenSentinel[cst.BaseStatement]:
        enables = []
        for model, enabled in self._pending.get(id(original_node), ()):
            if enabled:
                self._earlier_work = True
                continue
            self.report.change(
                "enable-checkpointing",
                self.line(original_node),
                f"{model}: turn on the model's own gradient checkpointing right after it is "
                "loaded (harmless on a model without it)",
            )
            if model not in self._enable:
                self._enable[model] = self.statement(_ENABLE.replace("MODEL", model), self._module)
            enables.append(self._enable[model])
        return cst.FlattenSentinel([updated_node, *enables]) if enables else updated_node

    # -- wrapping each call ---------------------------------------------------------------

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._functions.append(node.name.value)

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        self._functions.pop()
        return updated_node

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if m.matches(original_node, self._wrapped_call):
            self._earlier_work = True
            return updated_node
        if not m.matches(updated_node, self._model_call):
            return updated_node
        called = cst.Module([]).code_for_node(updated_node.func)
        line = self.line(original_node)
        if self._by_hand.intersection(self._functions):
            self._earlier_work = True  # wrapping again would recompute it twice
            self.report.find(
                f"{called}(...) already runs under checkpoint (its function is passed to "
                f"{self._checkpoint}()): left as it is",
                line,
                "info",
            )
            return updated_node
        taken = {a.keyword.value for a in updated_node.args if a.keyword} & _CHECKPOINT_KEYWORDS
        if taken:
            self.report.find(
                f"{called}(...) passes {', '.join(sorted(taken))}, a keyword of checkpoint() "
                "itself: left unwrapped",
                line,
            )
            return updated_node
        self._wraps += 1
        self.report.change(
            "checkpoint-wrap",
            line,
            f"{called}(...) now runs under torch.utils.checkpoint: activations are recomputed "
            "when needed instead of kept",
        )
        return _wrapped(updated_node, self._checkpoint_expr, self._extra_args())

    def _extra_args(self) -> list[cst.Arg]:
        keywords = {"use_reentrant": self.options["use_reentrant"]}
        if self.options["preserve_rng_state"] is not None:
            keywords["preserve_rng_state"] = self.options["preserve_rng_state"]
        no_space = cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
        )
        return [
            cst.Arg(cst.Name(str(value)), keyword=cst.Name(key), equal=no_space)
            for key, value in keywords.items()
        ]


def _wrapped(call: cst.Call, checkpoint: cst.BaseExpression, extra: list[cst.Arg]) -> cst.Call:
    """`checkpoint(<func>, <positional>, <extra>, <keywords>)`, laid out like the call was:
    one line stays one line; one argument per line stays so, comments where they were."""
    args = list(call.args)
    positional = [a for a in args if a.keyword is None and a.star != "**"]
    keywords = [a for a in args if a.keyword is not None or a.star == "**"]
    sep = _separator(call)
    items = [cst.Arg(call.func), *positional, *extra, *keywords]
    if args and items[-1] is not args[-1]:
        items = _move_tail(items, args[-1], sep)
    last = len(items) - 1
    items = [
        a.with_changes(comma=sep) if i < last and a.comma is cst.MaybeSentinel.DEFAULT else a
        for i, a in enumerate(items)
    ]
    return call.with_changes(func=checkpoint, args=items)


def _separator(call: cst.Call) -> cst.Comma | cst.MaybeSentinel:
    """The comma between arguments: one with a line break where the call breaks lines."""
    for arg in call.args[:-1]:
        if isinstance(arg.comma, cst.Comma):
            ws = arg.comma.whitespace_after
            if isinstance(ws, cst.ParenthesizedWhitespace):
                return cst.Comma(whitespace_after=_bare(ws))
            return cst.MaybeSentinel.DEFAULT
    if isinstance(call.whitespace_before_args, cst.ParenthesizedWhitespace):
        return cst.Comma(whitespace_after=_bare(call.whitespace_before_args))
    return cst.MaybeSentinel.DEFAULT


def _bare(ws: cst.ParenthesizedWhitespace) -> cst.ParenthesizedWhitespace:
    """A line break with the same indent, without the comment or blank lines it had."""
    return ws.with_changes(first_line=cst.TrailingWhitespace(), empty_lines=[])


def _move_tail(
    items: list[cst.Arg], old_last: cst.Arg, sep: cst.Comma | cst.MaybeSentinel
) -> list[cst.Arg]:
    """Hand the call's closing layout (trailing comma, line break before `)`) from the old
    last argument to the new one, leaving any comment on the old one's line."""
    had_comma = isinstance(old_last.comma, cst.Comma)
    tail = (
        old_last.comma.whitespace_after
        if isinstance(old_last.comma, cst.Comma)
        else old_last.whitespace_after_arg
    )
    none = cst.SimpleWhitespace("")
    if (
        isinstance(tail, cst.ParenthesizedWhitespace)
        and isinstance(sep, cst.Comma)
        and isinstance(sep.whitespace_after, cst.ParenthesizedWhitespace)
    ):
        before = old_last.comma.whitespace_before if isinstance(old_last.comma, cst.Comma) else none
        kept = tail.with_changes(
            indent=sep.whitespace_after.indent, last_line=sep.whitespace_after.last_line
        )
        moved = old_last.with_changes(comma=cst.Comma(before, kept), whitespace_after_arg=none)
        closing = cst.ParenthesizedWhitespace(indent=tail.indent, last_line=tail.last_line)
        new_last = items[-1].with_changes(
            comma=cst.Comma(whitespace_after=closing) if had_comma else cst.MaybeSentinel.DEFAULT,
            whitespace_after_arg=none if had_comma else closing,
        )
    else:
        moved = old_last.with_changes(comma=sep, whitespace_after_arg=none)
        new_last = items[-1].with_changes(
            comma=old_last.comma, whitespace_after_arg=old_last.whitespace_after_arg
        )
    return [moved if a is old_last else a for a in items[:-1]] + [new_last]
