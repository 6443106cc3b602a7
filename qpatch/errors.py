"""Every fatal outcome is an exception carrying its exit code (DESIGN.md), so commands
stay straight-line code and one handler in the CLI turns them into a message and status."""

from __future__ import annotations


class QpatchError(Exception):
    """A failure the user can act on; `hint` says how."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class BadInput(QpatchError):
    """Bad usage or bad input; nothing was changed."""

    exit_code = 2


class Restored(QpatchError):
    """The command failed and the target was put back as it was."""

    exit_code = 1


class CheckFailed(QpatchError):
    """verify found a problem: not patched, drift, unhealthy, saving below expectation."""

    exit_code = 3


class NotRestored(QpatchError):
    """The target could not be restored; the message says what is left to do by hand."""

    exit_code = 4


INTERNAL_ERROR = 70
"""The exit code of an exception that is not a QpatchError: a bug in qpatch, not something
the user did. 70 is EX_SOFTWARE of sysexits.h ("internal software error"), kept apart from
0-4 so a script can tell a bug from a failure qpatch foresaw and reported."""
