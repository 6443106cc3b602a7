"""Give libcst only the top-level statements a codemod could touch.

libcst builds a Python object per token and a visitor call per node, so a 10,000-line file
costs seconds; a node file is mostly code no codemod touches. Python's own `ast` (C, ten
times faster) splits the file into top-level statements; those whose words could matter go
into one smaller module, each run of them after a marker line, and the rewritten runs are
spliced back between the untouched bytes. The selection is a superset: a statement is in
when it contains a seed word, or a word that a selected assignment links to one (a model's
alias, a class named in NODE_CLASS_MAPPINGS), so the codemod sees all it would see in the
whole file, and its output is the same. When `ast` cannot read the file (syntax newer than
this Python, or none), the whole file goes to libcst, which then has the last word.
"""

from __future__ import annotations

import ast
import io
import re
import warnings
from collections.abc import Callable, Set
from dataclasses import dataclass, replace

from qpatch.report import Report

_MARKER = "__qpatch_segment__"
_MARKER_LINE = re.compile(rf"^{_MARKER} = \d+(?:\r\n|\r|\n)", re.M)
WORD = re.compile(r"[^\W\d]\w*")

LinkedWords = Callable[[ast.AST, Set[str]], Set[str]]


@dataclass(frozen=True)
class _Chunk:
    start: int  # index of its first line in the file
    lines: list[str]
    composite_line: int  # 1-based line of its first line in the composite module


@dataclass
class SegmentPlan:
    """The module text libcst parses and how to put its rewrite back into the file."""

    text: str
    chunks: list[_Chunk]
    file_lines: list[str]

    @classmethod
    def whole(cls, text: str) -> SegmentPlan:
        lines = _lines(text)
        return cls(text, [_Chunk(0, lines, 1)], lines)

    def splice(self, rewritten: str) -> str:
        if len(self.chunks) == 1 and len(self.chunks[0].lines) == len(self.file_lines):
            return rewritten
        pieces = _MARKER_LINE.split(rewritten)
        if len(pieces) != len(self.chunks):
            raise AssertionError("a codemod moved a segment marker")
        out, at = [], 0
        for chunk, piece in zip(self.chunks, pieces, strict=True):
            out += self.file_lines[at : chunk.start] + [piece]
            at = chunk.start + len(chunk.lines)
        return "".join(out + self.file_lines[at:])

    def file_line(self, line: int | None) -> int | None:
        """The file's line number for a line of the composite module."""
        if line is None:
            return None
        chunk = next(c for c in reversed(self.chunks) if c.composite_line <= line)
        return chunk.start + 1 + line - chunk.composite_line

    def remap(self, report: Report) -> Report:
        return Report(
            changes=[replace(c, line=self.file_line(c.line)) for c in report.changes],
            findings=[replace(f, line=self.file_line(f.line)) for f in report.findings],
            already_applied=report.already_applied,
        )


def _lines(text: str) -> list[str]:
    """Lines as Python counts them: \\n, \\r\\n or \\r end one (a form feed does not)."""
    return io.StringIO(text, newline="").readlines()


def plan(text: str, seeds: Set[str], linked_words: LinkedWords) -> SegmentPlan:
    """The statements of `text` that hold a word of `seeds`, or one `linked_words` adds from the
    selected statements' assignments, plus the leading imports (where imports are added)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escapes: not ours to report
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return SegmentPlan.whole(text)
    if _MARKER in text or not tree.body:
        return SegmentPlan.whole(text)
    lines = _lines(text)
    starts = sorted({_first_line(stmt) - 1 for stmt in tree.body} | {0})
    bounds = list(zip(starts, [*starts[1:], len(lines)], strict=True))
    words = [set(WORD.findall("".join(lines[a:b]))) for a, b in bounds]
    segment_of = {start: i for i, start in enumerate(starts)}
    statements: list[list[ast.stmt]] = [[] for _ in bounds]
    for stmt in tree.body:
        statements[segment_of[_first_line(stmt) - 1]].append(stmt)
    picked = set(range(_header_end(statements) + 1))
    wanted = set(seeds)
    while True:
        linked = {
            word for i in picked for stmt in statements[i] for word in linked_words(stmt, wanted)
        }
        new = {i for i, w in enumerate(words) if i not in picked and not w.isdisjoint(wanted)}
        if not new and linked <= wanted:
            break
        picked |= new
        wanted |= linked
    if len(picked) == len(bounds):
        return SegmentPlan.whole(text)
    return _composite(lines, [bounds[i] for i in sorted(picked)])


def _composite(lines: list[str], spans: list[tuple[int, int]]) -> SegmentPlan:
    first = re.search(r"\r\n|\r|\n", lines[0])
    newline = first.group() if first else "\n"
    runs: list[list[int]] = []
    for a, b in spans:  # merge adjacent statements into one run
        if runs and runs[-1][1] == a:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    parts: list[str] = []
    chunks: list[_Chunk] = []
    line = 1
    for k, (a, b) in enumerate(runs):
        if k:
            parts.append(f"{_MARKER} = {k}{newline}")
            line += 1
        chunks.append(_Chunk(a, lines[a:b], line))
        parts += lines[a:b]
        line += b - a
    return SegmentPlan("".join(parts), chunks, lines)


def _first_line(stmt: ast.stmt) -> int:
    decorators = getattr(stmt, "decorator_list", None) or [stmt]
    return min(stmt.lineno, decorators[0].lineno)


def _header_end(statements: list[list[ast.stmt]]) -> int:
    """The index of the first segment that is not the docstring or a one-import line: up to
    and including it, the composite starts like the file, so libcst's AddImportsVisitor puts
    a new import where it would in the whole file."""
    for i, group in enumerate(statements):
        docstring = i <= 1 and all(
            isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in group
        )
        imports = len(group) == 1 and isinstance(group[0], (ast.Import, ast.ImportFrom))
        if group and not (docstring or imports):
            return i
    return len(statements) - 1


def words_of(node: ast.AST) -> set[str]:
    """Every name and attribute name under `node`: what a word of the source could mean."""
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr)
    return found
