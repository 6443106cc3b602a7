"""Transform `gradient-checkpointing`: the post's section 3.2, done so it saves memory.

Two passes: model_calls.py reads the module and decides each call (the diffusion model's,
where autograd is really on, and in which autograd mode), then the transformer wraps those
calls and turns on the model's own checkpointing after its load where a backward pass will
use it. libcst's AddImportsVisitor then adds the imports, or names already imported are
reused.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence, Set
from typing import Any, ClassVar

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, GatherImportsVisitor, ImportItem

from qpatch.codemods.base import NothingToPatch, Option, QpatchCodemod
from qpatch.codemods.kinds import Kind, kind_of_input_type, names_a_kind
from qpatch.codemods.model_calls import Decision, Decisions, Facts, Mode, decide, gather
from qpatch.codemods.segments import WORD, words_of
from qpatch.errors import BadInput

CHECKPOINT_MODULE = "torch.utils.checkpoint"
# The name checkpoint() gets, the first one the module does not use already.
_CHECKPOINT_NAMES = ("checkpoint", "torch_checkpoint", "qpatch_checkpoint")

# Words of the statements model_calls.py must see besides class names of a known kind.
_SEEDS = frozenset(
    {"from_pretrained", "from_single_file", "from_config", "enable_grad", "set_grad_enabled"}
    | {"inference_mode", "no_grad", "backward", "grad", "optim", "requires_grad", "requires_grad_"}
    | {"Adam", "AdamW", "SGD"}
)
_AUTOGRAD_CHOICES = ("auto", "keep", "off")
# Input types whose object is, or holds, a DiT (a pipeline's transformer, a MODEL's
# diffusion_model): their words bring a class to libcst.
_REACHES_A_DIT = (Kind.DIFFUSION, Kind.PIPELINE, Kind.PATCHER)

# Inserted after each load. The model's own switch comes first: diffusers blocks that see
# `gradient_checkpointing = True` without it call a helper only that switch installs.
# Objects without one (or refusing it) get the post's attribute on the layers that have it.
_ENABLE = """\
try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
    (getattr(MODEL, "enable_gradient_checkpointing", None) or MODEL.gradient_checkpointing_enable)()
except Exception:
    [setattr(m, "gradient_checkpointing", True) for m in getattr(MODEL, "modules", list)() if hasattr(m, "gradient_checkpointing")]
"""  # noqa: E501


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


def _value_words(value: ast.expr) -> set[str]:
    """The words that tie an assigned value to a model: an alias's last name; a call's
    callee (under `.to(...)`-style chains) and its root, and its string arguments."""
    while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
        if not isinstance(value.func.value, ast.Call):
            break
        value = value.func.value
    if not isinstance(value, ast.Call):
        return set(_last_word(value))
    func = value.func
    found = set(_last_word(func))
    while isinstance(func, ast.Attribute):
        func = func.value
    found |= set(_last_word(func))
    found |= {
        a.value for a in value.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
    }
    return found


class _Names(cst.CSTVisitor):
    """Every name the module uses, so an added `checkpoint` shadows none of them."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Name(self, node: cst.Name) -> None:
        self.names.add(node.value)

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)  # `x.checkpoint` takes no name from the module
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)  # nor does a keyword `checkpoint=`
        return False


class GradientCheckpointing(QpatchCodemod):
    """Wrap each call of the diffusion model, where autograd is on, in
    torch.utils.checkpoint; where the node never runs a backward pass, also without autograd,
    so nothing is kept for one at any step count.

    `X.forward(...)` becomes `checkpoint(X.forward, ...)`, not `checkpoint(X, ...)`: the
    author called forward directly, skipping nn.Module hooks (forward hooks, offload hooks),
    and the rewrite must run the same code it wraps, only with fewer activations kept.
    """

    NAME: ClassVar[str] = "gradient-checkpointing"
    DESCRIPTION: ClassVar[str] = (
        "Run the diffusion model's calls under torch.utils.checkpoint where autograd is on "
        "(and without autograd where the node never asks for gradients)."
    )
    OPTIONS: ClassVar[dict[str, Option]] = {
        "use_reentrant": Option(bool, False, help="checkpoint(..., use_reentrant=)"),
        "preserve_rng_state": Option(bool, None, help="checkpoint(..., preserve_rng_state=)"),
        "models": Option(list, None, items=str, help="models to wrap, e.g. [self.model]"),
        "autograd": Option(
            str,
            "auto",
            help="off: the wrapped call runs without autograd (nothing kept for a backward "
            "pass); keep: checkpoint only; auto: off unless the file asks for gradients "
            "(.backward(), autograd.grad, an optimizer)",
        ),
    }

    def __init__(self, context: CodemodContext, **options: Any) -> None:
        super().__init__(context, **options)
        for name in self.options["models"] or ():
            if not all(part.isidentifier() for part in name.split(".")):
                raise BadInput(
                    f"codemod {self.NAME!r}: option 'models' takes names like self.model, "
                    f"got {name!r}"
                )
        if self.options["autograd"] not in _AUTOGRAD_CHOICES:
            raise BadInput(
                f"codemod {self.NAME!r}: option 'autograd' must be one of "
                f"{', '.join(_AUTOGRAD_CHOICES)}, got {self.options['autograd']!r}"
            )
        self._pending: dict[int, list[tuple[str, bool]]] = {}  # id(line) -> [(model, enabled)]
        self._file_torch: str | None = None
        self._enable: dict[str, cst.BaseStatement] = {}

    def seed_words(self) -> set[str]:
        named = {name.rsplit(".", 1)[-1] for name in self.options["models"] or ()}
        return {*_SEEDS, *_CHECKPOINT_NAMES} | named

    def file_seeds(self, text: str) -> set[str]:
        """Also the file's words that name a class of a known kind (`WanModel(...)`) or a
        ComfyUI type a DiT arrives as (`"WANVIDEOMODEL"`)."""
        found = re.search(r"^import torch(?:[ \t]+as[ \t]+(\w+))?[ \t]*$", text, re.M)
        # torch imported after other statements is left out of libcst's part: remember it
        self._file_torch = (found.group(1) or "torch") if found else None
        if self.options["models"] is not None:
            return self.seed_words()
        found = set(WORD.findall(text))
        kinds = {w for w in found if names_a_kind(w)}
        inputs = {w for w in found if w.isupper() and kind_of_input_type(w) in _REACHES_A_DIT}
        return self.seed_words() | kinds | inputs

    def linked_words(self, node: ast.AST, words: Set[str]) -> set[str]:
        """Names a model may reach: targets assigned from a name in `words` (an alias) or
        from a call that names one (a load, a helper, `io.Custom("TYPE")`); a function or
        class that mentions one (its callers, its subclasses); and a class's bases."""
        linked: set[str] = set()
        named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if named and not words.isdisjoint(words_of(node)):
            linked.add(node.name)
        for sub in ast.walk(node):
            if isinstance(sub, ast.ClassDef):
                linked |= {word for base in sub.bases for word in words_of(base)}
            if not isinstance(sub, (ast.Assign, ast.AnnAssign)) or sub.value is None:
                continue
            if not words.isdisjoint(_value_words(sub.value)):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                linked |= {word for target in targets for word in _last_word(target)}
        return linked

    # -- the two passes ------------------------------------------------------------------

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        imported = self._imported_checkpoint(tree)
        wrapper = self.context.wrapper
        assert wrapper is not None and wrapper.module is tree
        facts = gather(wrapper, imported or "checkpoint", self.file_line)
        decisions = decide(facts, self.options["models"], self.options["autograd"])
        self._decisions = decisions
        self._module = tree
        if not any(d.wraps for d in decisions.by_call.values()) and not decisions.earlier_work:
            raise self._nothing_to_patch(decisions, facts)
        names = _Names()
        tree.visit(names)
        root = (imported or "").split(".")[0]
        if root and any(root in bound for bound in facts.locals_of.values()):
            imported = None  # a function's own `checkpoint` (a weights dict) hides the import
        self._checkpoint = imported or self._free_name(names.names)
        self._checkpoint_expr = cst.parse_expression(self._checkpoint)
        torch_name = self._imported_torch(tree) or self._file_torch
        self._no_grad = cst.parse_expression(f"{torch_name or 'torch'}.no_grad")
        self._wraps = 0
        self._off = 0
        tree = super().transform_module_impl(tree)
        for decision in decisions.by_call.values():
            if not decision.wraps:
                self.report.find(decision.message, decision.line, decision.severity, decision.code)
            elif decision.load is not None and decision.load.kind is Kind.UNKNOWN:
                self.report.find(
                    f"{decision.callee}(...): its load ({decision.load.evidence}) names a class "
                    "of no kind qpatch knows; wrapped as the diffusion model, the only model "
                    "this file calls (name it in the option `models` to be sure)",
                    decision.line,
                    code="unknown-kind-wrapped",
                )
        for line, words in decisions.stale:
            self.report.find(words, line, code="stale-mode")
        for line, model in decisions.one_line_loads:
            self.report.find(
                f"{model} is loaded on the same line as its `if`/`with`/...: its own gradient "
                "checkpointing is not turned on (put the load on a line of its own to get it)",
                line,
            )
        if self._wraps:
            if not imported:
                alias = None if self._checkpoint == "checkpoint" else self._checkpoint
                tree = self._add_import(tree, ImportItem(CHECKPOINT_MODULE, "checkpoint", alias))
                as_alias = f" as {alias}" if alias else ""
                self.report.change(
                    "import", None, f"add `from {CHECKPOINT_MODULE} import checkpoint{as_alias}`"
                )
            if self._off and torch_name is None:
                tree = self._add_import(tree, ImportItem("torch"))
                self.report.change("import", None, "add `import torch`")
        self.report.already_applied = decisions.earlier_work and not self.report.changes
        return tree

    def _nothing_to_patch(self, decisions: Decisions, facts: Facts) -> NothingToPatch:
        left = [d for d in decisions.by_call.values() if d.load is not None]
        modelish = (Kind.DIFFUSION, Kind.UNKNOWN)
        loaded = [
            f"{t} ({load.evidence})" for _, t, load in facts.loads if load and load.kind in modelish
        ]
        if not left and loaded:
            return NothingToPatch(
                f"{self.path}: no call of {', '.join(loaded)} to wrap: looked for `X(...)` and "
                "`X.forward(...)` in the scope that holds it"
            )
        if not left:
            return NothingToPatch(
                f"{self.path}: no model to patch: looked for a diffusion model (a DiT, UNet or "
                "transformer) loaded with from_pretrained/from_single_file or built by its "
                "class, or received as a node input of a DiT type, and for its calls",
                hint="name the model with the codemod option `models`, e.g. [self.model]",
            )
        why = "; ".join(f"line {self.file_line(d.line)}: {d.message}" for d in left)
        return NothingToPatch(
            f"{self.path}: nothing to wrap: {why}",
            hint="name the denoiser with the codemod option `models` (e.g. [self.model]) "
            "where autograd is turned on somewhere this file cannot show",
        )

    def _add_import(self, tree: cst.Module, item: ImportItem) -> cst.Module:
        """libcst's AddImportsVisitor, run on the module's head only: it puts the import after
        the leading imports, and over a whole big module its passes cost seconds."""
        leading = m.SimpleStatementLine(body=[m.Import() | m.ImportFrom()])
        end = next((i for i, s in enumerate(tree.body[1:], 1) if not m.matches(s, leading)), 0)
        head = tree.with_changes(body=tree.body[: end + 1])
        head = AddImportsVisitor(self.context, [item]).transform_module(head)
        return tree.with_changes(body=[*head.body, *tree.body[end + 1 :]])

    def _gathered(self, tree: cst.Module) -> GatherImportsVisitor:
        gatherer = GatherImportsVisitor(self.context)
        type_checking = m.If(
            test=m.Name("TYPE_CHECKING") | m.Attribute(attr=m.Name("TYPE_CHECKING"))
        )
        for stmt in tree.body:  # an import inside a function is not visible elsewhere
            if m.matches(stmt, type_checking):
                continue  # imported for the type checker only: not there at run time
            if not isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
                stmt.visit(gatherer)
        return gatherer

    def _imported_torch(self, tree: cst.Module) -> str | None:
        gatherer = self._gathered(tree)
        if alias := gatherer.module_aliases.get("torch"):
            return alias
        return "torch" if "torch" in gatherer.module_imports else None

    def _imported_checkpoint(self, tree: cst.Module) -> str | None:
        """How the module-level imports already reach checkpoint(), under any alias."""
        gatherer = self._gathered(tree)
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
            loads = self._decisions.enable_after.get(id(stmt))
            if loads:
                after = body[i + 1 : i + 1 + len(loads)]
                self._pending[id(stmt)] = [
                    (model, any(self._enables(s, model) for s in after)) for model in loads
                ]

    def visit_Module(self, node: cst.Module) -> None:
        self._note_loads(node.body)

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        self._note_loads(node.body)

    def leave_SimpleStatementLine(
        self, original_node: cst.SimpleStatementLine, updated_node: cst.SimpleStatementLine
    ) -> cst.SimpleStatementLine | cst.FlattenSentinel[cst.BaseStatement]:
        enables = []
        for model, enabled in self._pending.get(id(original_node), ()):
            if enabled:
                continue
            self.report.change(
                "enable-checkpointing",
                self.line(original_node),
                f"{model}: turn on the model's own gradient checkpointing right after it is "
                "loaded, for the node's backward pass (harmless on a model without it)",
            )
            if model not in self._enable:
                self._enable[model] = self.statement(_ENABLE.replace("MODEL", model), self._module)
            enables.append(self._enable[model])
        return cst.FlattenSentinel([updated_node, *enables]) if enables else updated_node

    # -- wrapping each call ---------------------------------------------------------------

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return id(node) in self._decisions.touched  # nothing to rewrite in the others

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return id(node) in self._decisions.touched

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        decision = self._decisions.by_call.get(id(original_node))
        if decision is None or not decision.wraps:
            return updated_node
        self._wraps += 1
        off = decision.mode is Mode.OFF
        self._off += off
        self.report.change("checkpoint-wrap", decision.line, self._wrap_words(decision))
        wrapper = self._checkpoint_expr
        if off:  # torch.no_grad()(checkpoint): the checkpointed call, without autograd
            wrapper = cst.Call(cst.Call(self._no_grad), args=[cst.Arg(wrapper)])
        return _wrapped(updated_node, wrapper, self._extra_args())

    def _wrap_words(self, decision: Decision) -> str:
        chosen = self.options["autograd"] != "auto"
        if decision.mode is Mode.OFF:
            why = "as the patch asks" if chosen else "nothing in this file asks for gradients"
            return (
                f"{decision.message} now runs under torch.utils.checkpoint without autograd "
                f"(autograd: off, {why}): it keeps nothing for a backward pass that never "
                "comes, at any step count"
            )
        why = "as the patch asks" if chosen else "this file asks for gradients"
        return (
            f"{decision.message} now runs under torch.utils.checkpoint (autograd: keep, {why}): "
            "activations are recomputed in the backward pass instead of kept"
        )

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
