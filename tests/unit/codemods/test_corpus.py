"""Both codemods on the node shapes people really run (tests/unit/codemods/data/).

Each file there is ours, written after a public node pack it names; expected.yaml says,
per file and codemod, which calls are wrapped (and in which autograd mode), which are left
alone and why (the report's finding code), which classes gain IS_CHANGED, or that the file
has nothing to patch. Every rewrite must also compile, be idempotent and change nothing
outside its edits.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from qpatch.codemods import NothingToPatch, run_codemod
from qpatch.report import Report

DATA = Path(__file__).parent / "data"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((DATA / "expected.yaml").read_text())
CASES = [
    pytest.param(file, codemod, want, id=f"{file}-{codemod}")
    for file, by_codemod in EXPECTED.items()
    for codemod, want in by_codemod.items()
    if codemod in ("gradient-checkpointing", "is-changed")
]
# "<callee>(...)" as the report starts each sentence about a call.
_CALLEE = re.compile(r"^([\w.]+)\(\.\.\.\)")


def test_the_corpus_is_big_enough_and_every_file_has_expectations() -> None:
    files = sorted(p.name for p in DATA.glob("*.py"))
    assert len(files) >= 15
    assert sorted(EXPECTED) == files


def callee(message: str) -> str | None:
    found = _CALLEE.match(message)
    return found.group(1) if found else None


def rewrite(file: str, codemod: str) -> tuple[bytes, bytes, Report | NothingToPatch]:
    source = (DATA / file).read_bytes()
    try:
        out, report = run_codemod(codemod, source, path=file)
    except NothingToPatch as error:
        return source, source, error
    return source, out, report


@pytest.mark.parametrize(("file", "codemod", "want"), CASES)
def test_outcome(file: str, codemod: str, want: dict[str, Any]) -> None:
    source, out, report = rewrite(file, codemod)
    if want.get("error") == "nothing-to-patch":
        assert isinstance(report, NothingToPatch), f"{file}: patched, expected nothing to patch"
        return
    assert isinstance(report, Report), f"{file}: {report}"
    if codemod == "gradient-checkpointing":
        check_checkpointing(report, want, class_lines(source))
    else:
        check_is_changed(report, want)
    ast.parse(out)  # compiles
    again, second = run_codemod(codemod, out, path=file)
    assert again == out and second.already_applied
    assert_only_edits_changed(source, out)


def class_lines(source: bytes) -> dict[str, range]:
    """Each top-level class's lines, to tell which class a report line belongs to."""
    tree = ast.parse(source)
    return {
        node.name: range(node.lineno, (node.end_lineno or node.lineno) + 1)
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }


def check_checkpointing(report: Report, want: dict[str, Any], classes: dict[str, range]) -> None:
    """Wrapped callees as expected, in the expected autograd mode; each skipped call left
    alone for the expected reason (in the class named, where a spelling means two things)."""
    wraps = [c for c in report.changes if c.kind == "checkpoint-wrap"]
    assert sorted({callee(c.detail) for c in wraps}) == sorted(set(want.get("wrapped", [])))
    mode = want.get("autograd")
    if mode is not None:
        assert all(f"(autograd: {mode}," in c.detail for c in wraps), [c.detail for c in wraps]
    found = [(callee(f.message), f.code, f.line) for f in report.findings if f.code]
    for left in want.get("skipped", []):
        lines = classes[left["class"]] if "class" in left else None
        assert any(
            (call, code) == (left["call"], left["reason"]) and (lines is None or line in lines)
            for call, code, line in found
        ), (left, found)
        if lines is None:  # the same spelling is never both wrapped and left
            assert left["call"] not in {callee(c.detail) for c in wraps}, left
        else:
            assert not any(callee(c.detail) == left["call"] and c.line in lines for c in wraps)


def check_is_changed(report: Report, want: dict[str, Any]) -> None:
    added = [c for c in report.changes if c.kind == "is-changed"]
    classes = sorted({c.detail.split(":", 1)[0] for c in added})
    assert classes == sorted(want.get("added", []) + want.get("replaced", []))


def assert_only_edits_changed(source: bytes, out: bytes) -> None:
    """Undo what the codemods add (checkpoint() around a call, the imports, the enable
    blocks, a generated IS_CHANGED or fingerprint_inputs): the original's syntax tree comes
    back, so nothing else was touched."""
    original = ast.parse(source)
    undone = _Undo({ast.dump(s) for s in original.body}).visit(ast.parse(out))
    assert ast.dump(undone) == ast.dump(original)


class _Undo(ast.NodeTransformer):
    _KEYWORDS = frozenset({"use_reentrant", "preserve_rng_state"})

    def __init__(self, original_statements: set[str]) -> None:
        self.original = original_statements

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        wrapper = ast.unparse(node.func)
        if (wrapper == "checkpoint" or wrapper.endswith(".no_grad()(checkpoint)")) and node.args:
            keywords = [k for k in node.keywords if k.arg not in self._KEYWORDS]
            return ast.Call(func=node.args[0], args=node.args[1:], keywords=keywords)
        return node

    def _added(self, stmt: ast.stmt, top: bool) -> bool:
        text = ast.unparse(stmt)
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            ours = text in ("from torch.utils.checkpoint import checkpoint", "import torch")
            return top and ours and ast.dump(stmt) not in self.original
        if isinstance(stmt, ast.Try):
            return "enable_gradient_checkpointing" in text
        generated = isinstance(stmt, ast.FunctionDef) and "json.dumps([kwargs" in text
        return generated and stmt.name in ("IS_CHANGED", "fingerprint_inputs")

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                top = isinstance(node, ast.Module)
                setattr(node, name, [s for s in body if not self._added(s, top)])
        return super().generic_visit(node)
