"""Every fatal outcome is an exception carrying its exit code (docs/design.md), so commands
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

DEBUG_ENV = "QPATCH_DEBUG"  # set to 1: an internal error shows its traceback instead


def internal_error_message(e: BaseException) -> str:
    """The one message for an exception qpatch did not foresee: a bug, reported as one."""
    what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return (
        f"internal error: {what} — this is a bug in qpatch; please report it with the command"
        f" you ran\n  hint: run it again with {DEBUG_ENV}=1 to see the traceback"
    )
