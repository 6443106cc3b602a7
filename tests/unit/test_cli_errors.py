"""_dispatch: a bug becomes one message and exit 70; foreseen errors and click's own keep theirs."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from qpatch.cli import DEBUG_ENV, JSON, _dispatch, cli
from qpatch.errors import INTERNAL_ERROR, BadInput
from qpatch.output import Console
from qpatch.result import Result as CommandResult


def boom(out: Console, result: CommandResult, what: str) -> int:
    """A command body that fails the way it is told to, after reporting some progress."""
    result.status = "planning"
    result.patch = "read"
    if what == "bug":
        raise ValueError("boom")
    if what == "bare":
        raise RuntimeError
    if what == "bad-input":
        raise BadInput("no such container", hint="see `docker ps`")
    if what == "usage":
        raise click.UsageError("wrong use")
    if what == "abort":
        raise click.Abort
    return 0


@click.command()
@click.argument("what")
@JSON
def tiny(**kwargs: Any) -> None:
    _dispatch(boom, **kwargs)


def invoke(*args: str, debug: str | None = None) -> Result:
    return CliRunner().invoke(tiny, list(args), env={DEBUG_ENV: debug})


def test_a_bug_is_one_message_and_exit_70() -> None:
    r = invoke("bug")
    assert r.exit_code == INTERNAL_ERROR == 70
    assert "Traceback" not in r.output
    assert r.stderr.startswith("qpatch: internal error: ValueError: boom — this is a bug in qpatch")
    assert "please report it with the command you ran" in r.stderr
    assert f"{DEBUG_ENV}=1" in r.stderr
    assert r.stdout == ""


def test_a_bug_with_json_is_an_internal_error_object() -> None:
    r = invoke("bug", "--json")
    assert r.exit_code == 70
    assert "Traceback" not in r.output
    obj = json.loads(r.stdout)
    assert obj["status"] == "internal-error"
    assert obj["exit_code"] == 70
    assert obj["error"].startswith("internal error: ValueError: boom — this is a bug in qpatch")
    assert obj["patch"] == "read"  # what the command reported before it failed is kept
    assert obj["findings"] == []


def test_an_exception_without_a_message_is_named() -> None:
    r = invoke("bare", "--json")
    assert r.exit_code == 70
    assert json.loads(r.stdout)["error"].startswith("internal error: RuntimeError — this is a bug")


@pytest.mark.parametrize("value", ["", "0"])
def test_debug_off_values_still_catch(value: str) -> None:
    assert invoke("bug", debug=value).exit_code == 70


def test_debug_reraises_for_developers() -> None:
    r = invoke("bug", "--json", debug="1")
    assert isinstance(r.exception, ValueError)
    assert str(r.exception) == "boom"
    assert r.exit_code == 1  # CliRunner's status for an exception that escaped
    assert "internal error" not in r.output


def test_a_foreseen_error_keeps_its_code_and_status() -> None:
    r = invoke("bad-input", "--json")
    assert r.exit_code == 2
    obj = json.loads(r.stdout)
    assert obj["status"] == "planning"  # set by the command; a QpatchError keeps it
    assert obj["error"] == "no such container\n  hint: see `docker ps`"
    assert "internal error" not in r.output


def test_clicks_own_exceptions_pass_through() -> None:
    usage = invoke("usage", "--json")
    assert usage.exit_code == 2
    assert "Error: wrong use" in usage.stderr
    assert usage.stdout == ""
    aborted = invoke("abort")
    assert aborted.exit_code == 1
    assert "Aborted!" in aborted.stderr
    assert "internal error" not in usage.output + aborted.output


def test_success_is_untouched() -> None:
    r = invoke("fine", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {
        "exit_code": 0,
        "findings": [],
        "patch": "read",
        "status": "planning",
    }


def test_help_lists_exit_code_70() -> None:
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0
    assert "70 internal error" in r.output
    assert f"{DEBUG_ENV}=1" in r.output
