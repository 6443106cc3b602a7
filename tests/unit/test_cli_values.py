"""Nonsense option values are usage errors at parse time (exit 2), before any target is
touched: the command body never runs, so nothing can be written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qpatch.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf", "1e9", "soon", ""])
@pytest.mark.parametrize("command", ["apply", "rollback"])
def test_a_timeout_must_be_a_finite_positive_number_of_seconds(command: str, value: str) -> None:
    r = run(command, "some-container", "--timeout", value)
    assert r.exit_code == 2
    assert "Invalid value for '--timeout'" in r.output


@pytest.mark.parametrize("value", ["nan", "-5", "100.5", "lots"])
def test_an_expected_saving_is_a_percentage(value: str) -> None:
    r = run("verify", "some-container", "--expect-saving", value)
    assert r.exit_code == 2
    assert "Invalid value for '--expect-saving'" in r.output


@pytest.mark.parametrize("target", ["", "   ", "local:", "a\nb"])
@pytest.mark.parametrize("command", ["apply", "verify", "rollback", "status", "measure"])
def test_an_empty_or_broken_target_is_refused(command: str, target: str) -> None:
    args = [command, target] + (["--workflow", "w.json"] if command == "measure" else [])
    r = run(*args)
    assert r.exit_code == 2
    names = ("TARGET", "[TARGET]", "[TARGET]...")  # measure takes one, the others several
    assert any(f"Invalid value for '{name}'" in r.output for name in names)
    assert "Traceback" not in r.output


@pytest.mark.parametrize("runs", ["0", "-1", "101", "two"])
def test_measure_runs_is_a_small_positive_count(runs: str) -> None:
    r = run("measure", "c", "--workflow", "w.json", "--runs", runs)
    assert r.exit_code == 2
