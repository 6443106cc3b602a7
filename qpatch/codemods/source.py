"""Bytes in, bytes out, so a rewrite changes only what it means to.

The encoding is found the way Python (and libcst) find it: a UTF-8 BOM gives "utf-8-sig",
which drops the BOM on decoding and writes it back on encoding; a PEP 263 declaration such
as gbk is honoured both ways. Newlines (LF, CRLF) and a missing final newline are kept by
libcst itself, which is lossless on text.
"""

from __future__ import annotations

import ast
import io
import tokenize
import warnings
from collections.abc import Callable

import libcst as cst

from qpatch.codemods.base import CodemodError, SourceSyntaxError


def decode(source: bytes, path: str) -> tuple[str, str]:
    """The text and the encoding to write it back in."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        return source.decode(encoding), encoding
    except (SyntaxError, UnicodeDecodeError, LookupError) as error:
        raise CodemodError(f"{path}: cannot decode the file: {error}") from None


def encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding)


def parse(
    text: str, path: str, file_line: Callable[[int], int | None] = lambda line: line
) -> cst.Module:
    """The module, or an error naming the file and the line (`file_line` maps a line of
    `text` to the file's when `text` is only part of it)."""
    try:
        return cst.parse_module(text)
    except cst.ParserSyntaxError as error:
        line, message = _python_syntax_error(text) or (error.raw_line, error.message)
        raise SourceSyntaxError(path, file_line(line) or line, message) from None


def _python_syntax_error(text: str) -> tuple[int, str] | None:
    """Python's own line and message: libcst's parser can point a line past the mistake."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escapes: not ours to report
            ast.parse(text)
    except SyntaxError as error:
        return error.lineno or 1, error.msg
    except ValueError:  # null bytes
        return None
    return None  # newer syntax than this Python knows: trust libcst
