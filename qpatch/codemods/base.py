"""What every qpatch codemod shares: declared options, a report, its errors, line numbers.

A transform is a libcst codemod command, so it runs on libcst's own machinery (metadata,
matchers, CodemodTest in the tests); this module adds only what qpatch needs on top: options
a patch file sets without Python, a Report instead of warnings, and errors that exit 2.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any, ClassVar

import libcst as cst
from libcst.codemod import CodemodContext, VisitorBasedCodemodCommand
from libcst.metadata import PositionProvider

from qpatch.errors import BadInput
from qpatch.report import Report


class CodemodError(BadInput):
    """The file cannot be patched as asked; nothing was changed (exit 2)."""


class NothingToPatch(CodemodError):
    """The file has none of what the codemod rewrites: silence would hide a wrong target."""


class SourceSyntaxError(CodemodError):
    """The file does not parse, so it cannot be rewritten safely."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: syntax error: {message}")
        self.path = path
        self.line = line


# How a patch file author reads each type: the words in "must be ..." errors.
_TYPE_WORDS: Mapping[type, str] = {
    bool: "true or false",
    int: "a whole number",
    str: "a string",
    list: "a list",
    type(None): "null",
}
_ITEMS_WORDS: Mapping[type, str] = {bool: "true/false values", int: "whole numbers", str: "strings"}


@dataclass(frozen=True)
class Option:
    """One option as a YAML patch file writes it, so the spec loader can check it unaided.

    `default` None means the option is unset unless given, and null is then accepted."""

    type: type
    default: Any = None
    items: type | None = None  # the type of each element when `type` is list
    help: str = ""

    def expects(self) -> str:
        words = _TYPE_WORDS.get(self.type, self.type.__name__)
        if self.items is not None:
            words += f" of {_ITEMS_WORDS.get(self.items, self.items.__name__)}"
        return words + (" or null" if self.default is None else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.default is None
        if isinstance(value, bool) and self.type is not bool:  # YAML `true` is no number
            return False
        if self.type is list:
            return isinstance(value, (list, tuple)) and all(
                isinstance(item, self.items or object) for item in value
            )
        return isinstance(value, self.type)


def check_options(
    name: str, declared: Mapping[str, Option], given: Mapping[str, Any]
) -> dict[str, Any]:
    """The options with defaults filled in, or BadInput naming the bad key and what fits."""
    for key, value in given.items():
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=1)
            known = ", ".join(sorted(declared)) or "none"
            raise BadInput(
                f"codemod {name!r}: unknown option {key!r} (its options: {known})",
                hint=f"did you mean {close[0]!r}?" if close else None,
            )
        option = declared[key]
        if not option.accepts(value):
            raise BadInput(
                f"codemod {name!r}: option {key!r} must be {option.expects()}, "
                f"got {value!r} ({type(value).__name__})"
            )
    return {key: given.get(key, option.default) for key, option in declared.items()}


class QpatchCodemod(VisitorBasedCodemodCommand):
    """Base of the transforms: options checked against OPTIONS, results in `report`."""

    NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str]
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, context: CodemodContext, **options: Any) -> None:
        super().__init__(context)
        #: The file's line for a line of the part libcst reads (segments.py), for messages.
        self.file_line: Callable[[int], int | None] = lambda line: line
        self.options = check_options(self.NAME, self.OPTIONS, options)
        self.report = Report()

    @property
    def path(self) -> str:
        return self.context.filename or "<source>"

    def line(self, node: cst.CSTNode) -> int:
        """The node's first line in the file as it was read (the report's reference)."""
        return self.get_metadata(PositionProvider, node).start.line

    # -- which statements of a big file libcst must see (qpatch/codemods/segments.py) -----

    def seed_words(self) -> set[str]:
        """Words of the statements this codemod could read or rewrite."""
        raise NotImplementedError

    def file_seeds(self, text: str) -> set[str]:
        """The seed words for this file: seed_words(), unless the file itself tells more."""
        return self.seed_words()

    def linked_words(self, node: ast.AST, words: Set[str]) -> set[str]:
        """Words that `node` (a top-level statement) ties to `words`, e.g. an alias."""
        return set()

    @staticmethod
    def statement(code: str, module: cst.Module) -> cst.BaseStatement:
        """Parse generated code (written with 4-space indents) in the module's own indent and
        newline, so inserted lines look like their neighbours and CRLF files stay CRLF."""
        return cst.parse_statement(
            code.replace("    ", module.default_indent), config=module.config_for_parsing
        )
