"""libcst codemods that rewrite a ComfyUI node file: bytes in, bytes and a report out.

Pure functions of the source (no I/O), so planning, dry runs and tests need no target.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from libcst.codemod import CodemodContext

from qpatch.codemods.base import (
    CodemodError,
    NothingToPatch,
    Option,
    QpatchCodemod,
    SourceSyntaxError,
)
from qpatch.codemods.checkpoint import GradientCheckpointing
from qpatch.codemods.is_changed import IsChanged
from qpatch.codemods.segments import plan
from qpatch.codemods.source import decode, encode, parse
from qpatch.errors import BadInput
from qpatch.report import Report

__all__ = [
    "CODEMODS",
    "CodemodError",
    "NothingToPatch",
    "Option",
    "SourceSyntaxError",
    "check_codemod_options",
    "run_codemod",
]

CODEMODS: dict[str, type[QpatchCodemod]] = {
    transform.NAME: transform for transform in (GradientCheckpointing, IsChanged)
}

_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})


def _transform(name: str) -> type[QpatchCodemod]:
    try:
        return CODEMODS[name]
    except KeyError:
        known = ", ".join(sorted(CODEMODS))
        raise BadInput(f"unknown codemod {name!r} (known: {known})") from None


def check_codemod_options(name: str, options: Mapping[str, Any] = _NO_OPTIONS) -> dict[str, Any]:
    """The options with defaults filled in, or BadInput: lets a patch file be checked
    before anything is read from the target."""
    return _transform(name)(CodemodContext(), **options).options


def run_codemod(
    name: str, source: bytes, *, path: str, options: Mapping[str, Any] = _NO_OPTIONS
) -> tuple[bytes, Report]:
    """Rewrite `source` (the bytes of the file at `path`, named in errors) with the codemod
    `name`. Raises BadInput for a bad name or option, CodemodError when the file cannot be
    patched (syntax error, nothing to patch); run on its own output it returns the same
    bytes with `report.already_applied` set. Only the statements the codemod could touch go
    through libcst (see segments.py); the rest of the file is copied byte for byte."""
    transform = _transform(name)(CodemodContext(filename=path), **options)
    text, encoding = decode(source, path)
    part = plan(text, transform.file_seeds(text), transform.linked_words)
    transform.file_line = part.file_line  # lines in messages: the file's, not the part's
    module = transform.transform_module(parse(part.text, path, part.file_line))
    return encode(part.splice(module.code), encoding), part.remap(transform.report)
