"""Where the words and commands of a shell script are, to the character.

The start-script editor must change a few words and keep every other byte, so it needs
source positions, which shlex does not give. This lexer only finds where each word and
operator starts and ends (quotes, escapes, `\\` continuations, comments, heredoc
bodies) and which simple commands and top-level statements they form; what a word means
is left to shlex (`Token.value`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Token:
    kind: Literal["word", "op", "newline"]
    text: str  # as written in the script
    start: int
    end: int

    @property
    def value(self) -> str:
        """What the shell passes on for this word; the raw text when shlex cannot tell."""
        try:
            parts = shlex.split(self.text.replace("\\\r\n", "").replace("\\\n", ""))
        except ValueError:
            return self.text
        return parts[0] if len(parts) == 1 else self.text


# Longest first, so "&&" wins over "&".
_OPS = ("<<<", "<<-", "&>>", "&&", "||", ";;", "|&", "&>", ">>", ">&", "<&", "<<", "<>", ">|")
_OPS += tuple(";&|()<>")
REDIRECTS = frozenset({"<", ">", ">>", ">&", "<&", "&>", "&>>", "<>", ">|", "<<", "<<-", "<<<"})
_BLANK = " \t\r"  # "\r": a CRLF script is read as the text its author sees


def _quoted_end(text: str, i: int, quote: str) -> int:
    """End of a "…" or `…` string starting at i (escapes and $(…) inside honoured)."""
    n = len(text)
    i += 1
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == quote:
            return i + 1
        elif c == "$" and text.startswith("(", i + 1):
            i = _paren_end(text, i + 1)
        else:
            i += 1
    return n


def _paren_end(text: str, i: int) -> int:
    """End of the (…) group opening at i, as in $(…) and $((…))."""
    depth, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            j = text.find("'", i + 1)
            i = n if j < 0 else j + 1
            continue
        if c in '"`':
            i = _quoted_end(text, i, c)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _word_end(text: str, i: int) -> int:
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == "'":
            j = text.find("'", i + 1)
            i = n if j < 0 else j + 1
        elif c in '"`':
            i = _quoted_end(text, i, c)
        elif c == "$" and text.startswith("(", i + 1):
            i = _paren_end(text, i + 1)
        elif c == "$" and text.startswith("{", i + 1):
            j = text.find("}", i)
            i = n if j < 0 else j + 1
        elif c in _BLANK or c in "\n;&|()<>":
            return i
        else:
            i += 1
    return n


def _heredoc_end(text: str, i: int, delimiter: str, strip_tabs: bool) -> int:
    """Offset just past the line that ends a heredoc body starting at i."""
    while i < len(text):
        nl = text.find("\n", i)
        line_end = len(text) if nl < 0 else nl + 1
        line = text[i:line_end].rstrip("\r\n")
        if (line.lstrip("\t") if strip_tabs else line) == delimiter:
            return line_end
        i = line_end
    return len(text)


def lex(text: str) -> list[Token]:
    tokens: list[Token] = []
    heredocs: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _BLANK:
            i += 1
        elif c == "\\" and text.startswith("\n", i + 1):
            i += 2
        elif c == "\\" and text.startswith("\r\n", i + 1):
            i += 3
        elif c == "\n":  # the token spans any heredoc bodies that follow it
            end = i + 1
            for delimiter, strip_tabs in heredocs:
                end = _heredoc_end(text, end, delimiter, strip_tabs)
            heredocs.clear()
            tokens.append(Token("newline", c, i, end))
            i = end
        elif c == "#":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
        else:
            op = next((o for o in _OPS if text.startswith(o, i)), None)
            end = i + len(op) if op else _word_end(text, i)
            tokens.append(Token("op" if op else "word", text[i:end], i, end))
            prev = tokens[-2] if len(tokens) > 1 else None
            if op is None and prev is not None and prev.text in ("<<", "<<-"):
                heredocs.append((tokens[-1].value, prev.text == "<<-"))
            i = end
    return tokens


@dataclass
class Command:
    """A simple command: its words (redirections left out) and where it sits."""

    statement: int  # where the top-level statement holding it starts (a line start)
    words: list[Token] = field(default_factory=list)
    redirects: list[int] = field(default_factory=list)  # where each redirection starts


_OPENERS = frozenset({"if", "case", "for", "while", "until", "select", "{"})
_CLOSERS = frozenset({"fi", "esac", "done", "}"})
_PREFIX_WORDS = frozenset({"then", "do", "else", "elif", "!", "time"})
_CONTINUES = frozenset({"&&", "||", "|", "|&"})  # a newline after these continues the statement


def split_commands(tokens: list[Token]) -> list[Command]:
    """Split into simple commands, each knowing the top-level statement it belongs to.

    The env block goes before that statement, so one block reaches every launch inside
    an `if … else … fi`, and it never splits a `&&` chain or a `\\` continuation.
    """
    commands: list[Command] = []
    stack: list[str] = []  # open compound commands: "if", "{", "(", …
    statement = 0
    cmd = Command(statement)
    target_next = False  # the next word is a redirection's target
    prev: Token | None = None
    for tok in tokens:
        if tok.kind == "word":
            if target_next:
                target_next = False
            elif cmd.words:
                cmd.words.append(tok)
            elif tok.text in _OPENERS:
                stack.append(tok.text)
            elif tok.text in _CLOSERS:
                stack[-1:] = []
            elif tok.text not in _PREFIX_WORDS:
                cmd.words.append(tok)
        elif tok.text in REDIRECTS:
            io_number = prev is not None and prev.end == tok.start and prev.text.isdigit()
            if io_number and cmd.words and cmd.words[-1] is prev:  # the 2 of 2>&1
                cmd.words.pop()
            cmd.redirects.append(prev.start if io_number and prev else tok.start)
            target_next = True
        else:  # a newline or an operator that ends the simple command
            if tok.text == "(" and not cmd.words:
                stack.append("(")
            elif tok.text == ")" and stack and stack[-1] == "(":
                stack.pop()
            if cmd.words:
                commands.append(cmd)
            continued = prev is not None and prev.text in _CONTINUES
            if tok.kind == "newline" and not stack and not continued:
                statement = tok.end
            cmd = Command(statement)
        prev = tok
    if cmd.words:
        commands.append(cmd)
    return commands
