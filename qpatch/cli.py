"""The command line: parses, dispatches to one module per command, and turns errors
into a message and an exit status in one place (docs/design.md, "Commands, exit codes, output")."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from qpatch import __version__
from qpatch.cli_types import HostRef, Percent, Seconds, TargetRef
from qpatch.errors import DEBUG_ENV, INTERNAL_ERROR, QpatchError, internal_error_message
from qpatch.output import Console, say
from qpatch.result import UNSET, Result

DEFAULT_PATCH = "qwen-image-2512"
#: qpatch.vram.DEFAULT_RUNS, written out: importing vram here would load NVML's bindings
#: for every command (tests/unit/test_series.py checks the two agree).
DEFAULT_RUNS = 3
DEFAULT_PARALLEL = 4


def _dispatch(fn: Callable[..., int], as_json: bool = False, **kwargs: Any) -> None:
    """Run one command; every error becomes a message, a status, and with --json an object."""
    out = Console(as_json)
    result = Result()
    try:
        code = fn(out, result, **kwargs)
    except QpatchError as e:
        say(f"qpatch: {e}", fg="red", err=True)
        if result.status is UNSET:
            result.status = "error"
        result.error = str(e)
        code = e.exit_code
    except KeyboardInterrupt:
        say("qpatch: interrupted", fg="red", err=True)
        code = 130
    except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
        raise  # click's own: it prints them and picks the status
    except Exception as e:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        message = internal_error_message(e)
        say(f"qpatch: {message}", fg="red", err=True)
        result.status = "internal-error"
        result.error = message
        code = INTERNAL_ERROR
    result.exit_code = code
    if result.findings is UNSET:
        result.findings = []
    out.result(result.to_json())
    gc.freeze()  # the interpreter's last collection over libcst's objects costs 60 ms
    sys.exit(code)


JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
TIMEOUT = click.option(
    "--timeout",
    type=Seconds(),
    default=180.0,
    show_default=True,
    help="Seconds to wait for ComfyUI to answer after the restart.",
)


def _fleet_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """TARGET… on each --host, or --all [--filter]: one target runs here, several run as one
    child each (qpatch.fleet), N at a time."""
    options = [
        click.argument("targets", nargs=-1, type=TargetRef(), metavar="[TARGET]..."),
        click.option(
            "--all",
            "every",
            is_flag=True,
            help="Every running container on each engine (with --filter: those matching).",
        ),
        click.option(
            "--filter",
            "filters",
            multiple=True,
            metavar="KEY=VALUE",
            help="With --all: Docker's container filter, as docker ps takes it "
            "(label=com.example.role=comfyui, ancestor=IMAGE, name=…); repeatable.",
        ),
        click.option(
            "--host",
            "hosts",
            multiple=True,
            type=HostRef(),
            metavar="URL|CONTEXT",
            help="Docker engine: unix://…, tcp://host:2376, ssh://user@host, or a Docker "
            "context name; repeatable (default: DOCKER_HOST, else the local socket).",
        ),
        click.option(
            "--parallel",
            type=click.IntRange(1, 64),
            default=DEFAULT_PARALLEL,
            show_default=True,
            help="Targets worked on at once.",
        ),
        click.option(
            "--max-failures",
            type=click.IntRange(1),
            metavar="K",
            help="After K failed targets start no new one (those running finish; every "
            "failed target is restored, as alone). Default: go through them all.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


#: Fleet options: never passed on to the per-target children.
FLEET_PARAMS = ("targets", "every", "filters", "hosts", "parallel", "max_failures", "as_json")


#: apply's options for a service:NAME target only.
SERVICE_PARAMS = ("tag", "update_parallelism", "update_delay", "update_monitor")
SERVICE_PREFIX = "service:"


def _each(command: str, run: Callable[..., int], kwargs: dict[str, Any]) -> None:
    """One target here, in this process; several (or --all, or several --host) through
    the fleet runner, each child given the options exactly as the user gave them. A
    service:NAME target goes to qpatch.commands.service."""
    refs, hosts = tuple(kwargs["targets"]), tuple(kwargs["hosts"])
    service = len(refs) == 1 and refs[0].startswith(SERVICE_PREFIX)
    ctx = click.get_current_context()
    if not service:
        for name in SERVICE_PARAMS:
            if name in kwargs and ctx.get_parameter_source(name) != ParameterSource.DEFAULT:
                raise click.UsageError(f"--{name.replace('_', '-')} is for service:NAME targets")
            kwargs.pop(name, None)
    else:
        from qpatch.commands import service as services

        run = getattr(services, command)
    fleet = kwargs["every"] or len(refs) > 1 or len(hosts) > 1
    if kwargs["filters"] and not kwargs["every"]:
        raise click.UsageError("--filter narrows --all: add --all, or name the targets")
    if not fleet:
        own = {k: v for k, v in kwargs.items() if k not in FLEET_PARAMS}
        target = refs[0] if refs else None
        _dispatch(run, kwargs["as_json"], target=target, host=hosts[0] if hosts else None, **own)
        return
    from qpatch.commands.fleet import fleet as run_fleet

    _dispatch(
        run_fleet,
        kwargs["as_json"],
        command=command,
        refs=refs,
        every=kwargs["every"],
        filters=kwargs["filters"],
        hosts=hosts,
        forwarded=_forwarded(ctx),
        parallel=kwargs["parallel"],
        max_failures=kwargs["max_failures"],
    )


def _forwarded(ctx: click.Context) -> list[str]:
    """The command's own options the user set (not the defaults), as argv again."""
    argv: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if name in FLEET_PARAMS or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT):
            continue
        value, flag = ctx.params[name], param.opts[0]
        if param.is_flag:
            argv += [flag] if value else []
        elif param.multiple:
            for v in value:
                argv += [flag, str(v)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


RUNS = click.option(
    "--runs",
    type=click.IntRange(1, 100),
    default=DEFAULT_RUNS,
    show_default=True,
    help="Warm runs per measurement, after one cold run that is reported apart: each "
    "figure is their min / median / max, and a difference counts only beyond their spread.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qpatch")
def cli() -> None:
    """Patch a running ComfyUI so Qwen-Image fits in GPU memory, and undo it byte-exact.

    \b
    TARGET is a container name or ID (a unique prefix will do), local:PATH for a
    ComfyUI whose root folder is PATH on this host, or service:NAME for a Docker Swarm
    service (a canary is patched and baked, then Swarm rolls the service to it). apply,
    verify, rollback and status take several TARGETs, or --all [--filter KEY=VALUE], on
    one or more --host engines.

    \b
    Exit codes: 0 done · 1 failed, target restored · 2 bad input, nothing changed
    · 3 verify found a problem · 4 could not restore (the message says what to do)
    · 70 internal error, a bug in qpatch (QPATCH_DEBUG=1 shows the traceback).
    """


@cli.command()
@_fleet_options
@click.option(
    "--patch",
    "patch",
    default=DEFAULT_PATCH,
    show_default=True,
    help="Bundled patch name or path to a patch YAML file.",
)
@click.option("--dry-run", is_flag=True, help="Print diffs and findings; write nothing.")
@click.option("--no-restart", is_flag=True, help="Write the files but do not restart ComfyUI.")
@click.option(
    "--recreate",
    is_flag=True,
    help="For containers without a start script: recreate the container with "
    "the new env and flags (the original is kept under a backup name).",
)
@TIMEOUT
@click.option("--comfyui-root", help="ComfyUI root inside the target (default: discovered).")
@click.option(
    "--start-script",
    help="Start script inside the target, a relative path read from the ComfyUI root "
    "(default: discovered).",
)
@click.option(
    "--restart-cmd",
    help="local: targets: command that restarts ComfyUI "
    "(e.g. 'systemctl restart comfyui'); default: stop the server, run the start script.",
)
@JSON
@click.option(
    "--measure",
    metavar="WORKFLOW",
    type=click.Path(dir_okay=False),
    help="Run this API-format workflow before writing and after the restart; compare VRAM.",
)
@RUNS
@click.option(
    "--workflow",
    metavar="WORKFLOW",
    type=click.Path(dir_okay=False),
    help="The API-format workflow you run (not run here): the headers of the model files it "
    "loads tell the weights' dtype the edits are judged on (default: --measure's).",
)
@click.option(
    "--allow-harmful",
    is_flag=True,
    help="Write edits qpatch/effects.yaml calls harmful on this server anyway.",
)
@click.option(
    "--tag",
    metavar="IMAGE:TAG",
    help="service:NAME: the image the canary is baked as "
    "(default qpatch-baked/NAME:PATCH-vVERSION-TIME).",
)
@click.option(
    "--update-parallelism",
    type=click.IntRange(0, 1000),
    default=1,
    show_default=True,
    help="service:NAME: tasks Swarm replaces at once (0: all).",
)
@click.option(
    "--update-delay",
    type=Seconds(maximum=3600),
    default=2.0,
    show_default=True,
    help="service:NAME: seconds between batches.",
)
@click.option(
    "--update-monitor",
    type=Seconds(maximum=3600),
    default=15.0,
    show_default=True,
    help="service:NAME: seconds Swarm watches each new task; a task failing within it "
    "rolls the whole service back.",
)
def apply(**kwargs: Any) -> None:
    """Plan, back up, rewrite, validate, restart and health-check TARGET.

    Several TARGETs, --all or several --host: each target as alone, --parallel at a
    time, with live progress, a summary table and the worst target's exit status.

    With --measure, an unpatched run that runs out of GPU memory is recorded as the
    baseline ("before: out of memory") and the patch goes on.

    \b
    Exit codes: 0 applied, already applied, or dry run · 1 failed, target restored · 2 bad
    input, nothing changed · 3 the --measure workflow failed before patching, not for lack
    of memory: nothing changed · 4 could not restore (the message says what to do) · 70
    internal error.
    """
    from qpatch.commands.apply import apply as run

    if not kwargs["targets"] and not kwargs["every"]:
        raise click.UsageError("give a TARGET (or several, or --all)")
    _each("apply", run, kwargs)


@cli.command()
@_fleet_options
@click.option(
    "--workflow", type=click.Path(dir_okay=False), help="API-format workflow to run and measure."
)
@click.option(
    "--expect-saving",
    type=Percent(),
    metavar="PCT",
    help="Exit 3 unless the measured peak VRAM saving against the baseline is at least PCT%.",
)
@click.option(
    "--require-vram", is_flag=True, help="Exit 3 when VRAM cannot be measured (no NVIDIA GPU)."
)
@click.option(
    "--baseline",
    metavar="NAME",
    help="Compare with the baseline saved by `qpatch measure --save NAME` instead of the one "
    "apply --measure kept.",
)
@RUNS
@JSON
def verify(**kwargs: Any) -> None:
    """Check that TARGET is patched, unchanged since, healthy; measure VRAM.

    \b
    Exit codes: 0 all checks pass · 2 bad input · 3 a check failed (not patched, a file
    changed since, unhealthy, saving below --expect-saving, VRAM unmeasured with
    --require-vram) · 70 internal error.
    """
    from qpatch.commands.verify import verify as run

    _each("verify", run, kwargs)


@cli.command()
@click.argument("target", type=TargetRef())
@click.option(
    "--workflow",
    required=True,
    type=click.Path(dir_okay=False),
    help="API-format workflow to run and measure.",
)
@RUNS
@click.option(
    "--save",
    metavar="NAME",
    help="Keep the measurement on this host as baseline NAME, for verify --baseline NAME.",
)
@JSON
def measure(**kwargs: Any) -> None:
    """Run a workflow on TARGET as it is, changing nothing, and measure it.

    A run that runs out of GPU memory is a result (status "out-of-memory"), not an error:
    it is the baseline a patch is for. A run whose server died under it, or that ComfyUI
    cut, is reported as killed (status "killed", exit 3).

    \b
    Exit codes: 0 measured (out of memory included) · 2 bad input · 3 the workflow failed,
    not for lack of memory, or a run was killed · 70 internal error.
    """
    from qpatch.commands.measure import measure as run

    _dispatch(run, **kwargs)


@cli.command()
@_fleet_options
@click.option("--no-restart", is_flag=True, help="Restore the files but do not restart.")
@click.option(
    "--force", is_flag=True, help="Roll back even over files changed since apply (a copy is kept)."
)
@TIMEOUT
@click.option("--restart-cmd", help="local: targets: command that restarts ComfyUI.")
@JSON
def rollback(**kwargs: Any) -> None:
    """Restore every file qpatch changed, byte-exact, restart and health-check.

    \b
    Exit codes: 0 rolled back, or nothing to roll back · 2 bad input · 3 files changed since
    apply (--force keeps a copy and restores), or unhealthy after the restore · 4 could
    not restore (the message says what to do) · 70 internal error.
    """
    from qpatch.commands.rollback import rollback as run

    _each("rollback", run, kwargs)


@cli.command()
@_fleet_options
@JSON
def status(**kwargs: Any) -> None:
    """Show what qpatch applied to TARGET, and its history."""
    from qpatch.commands.status import status as run

    _each("status", run, kwargs)


@cli.command()
@click.argument("target", required=False, type=TargetRef())
@click.option(
    "--tag",
    required=True,
    metavar="IMAGE:TAG",
    help="The image to commit the patched container as (e.g. comfyui-patched:qwen-v2).",
)
@click.option("--host", type=HostRef(), metavar="URL|CONTEXT", help="Docker engine (see apply).")
@JSON
def bake(**kwargs: Any) -> None:
    """Commit patched TARGET as an image that is born patched.

    After a healthy apply: the container is committed as IMAGE:TAG with labels naming the
    patch, its version and every written file's sha256, so a container recreated from it
    starts patched (apply says "already applied (baked)", verify checks the files against
    the labels). Prints the compose / docker run change that uses it.

    \b
    Exit codes: 0 baked · 2 bad input (not patched, not a container, a run in progress)
    · 3 a file changed since apply, or unhealthy · 70 internal error.
    """
    from qpatch.commands.bake import bake as run

    _dispatch(run, **kwargs)


@cli.command()
@JSON
def patches(**kwargs: Any) -> None:
    """List the bundled patches."""
    from qpatch.commands.patches import patches as run

    _dispatch(run, **kwargs)


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the demo container afterwards.")
@JSON
def demo(**kwargs: Any) -> None:
    """Build the test-bed ComfyUI, start it as container qpatch-demo, apply, verify, roll back."""
    from qpatch.commands.demo import demo as run

    _dispatch(run, **kwargs)


def main() -> int:
    cli(prog_name="qpatch")
    return 0
