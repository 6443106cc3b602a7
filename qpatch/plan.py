"""Plan: read the target's files and compute every byte qpatch would write, before
writing any. Reading and asking (main.py --help, the GPU's capability) happen here; the
edits themselves are the pure codemods and start-script editor.

The reading and asking a plan needs are started in threads as it begins (`_Ahead`), so
their round trips overlap the codemods' CPU time; each answer (or error) is taken where the
plan uses it, in the order it always had, so the plan and its errors stay the same."""

from __future__ import annotations

import contextlib
import posixpath
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from qpatch import comfy_flags, container_command, envcheck, observe, startup
from qpatch.container_command import ContainerChange
from qpatch.discovery import Layout
from qpatch.effects import Effect, Verdict, judge
from qpatch.errors import BadInput
from qpatch.evidence import Evidence
from qpatch.patchspec import CodemodStep, Patch, StartupStep
from qpatch.report import Report
from qpatch.targets import fsinfo
from qpatch.targets.base import FileStat, Target

#: Compiles a copy of a rewritten file with the target's own interpreter, writing no .pyc
#: (py_compile would leave a __pycache__ behind in the target). Constant; the temp path
#: arrives as argv.
_COMPILE = "import sys; compile(open(sys.argv[1], 'rb').read(), sys.argv[1], 'exec')"


@dataclass(frozen=True)
class FileEdit:
    path: str
    before: bytes
    after: bytes
    stat: FileStat

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class Plan:
    patch_name: str
    edits: list[FileEdit]
    report: Report
    env: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    #: The new Env and command of a container with no start script (apply --recreate).
    container: ContainerChange | None = None
    #: What the server is (versions, Dynamic VRAM, allocator, weights), each with its source.
    evidence: Evidence | None = None
    #: Every env and flag edit the patch asked for, with its effect on this server.
    effects: list[Verdict] = field(default_factory=list)
    #: The patch file's `version:`, for the ledger and a baked image's labels.
    patch_version: str | None = None

    @property
    def changed_edits(self) -> list[FileEdit]:
        return [e for e in self.edits if e.changed]

    @property
    def changed(self) -> bool:
        return bool(self.changed_edits) or self.recreates

    @property
    def recreates(self) -> bool:
        """Whether applying needs the container recreated (its Env or command change)."""
        return self.container is not None and self.container.changed

    def validate(self, target: Target, ledger_folder: str | None = None) -> list[str]:
        """Before any write: every file can be replaced (not on a read-only mount, room for
        its temp copy, room for the backups in the ledger's folder), every Python file
        compiles there. Returns notes for people (a file that is a mount point is written in
        place, since nothing can be renamed onto it)."""
        notes = _check_room(target, self.changed_edits, ledger_folder)
        paths = [p for e in self.changed_edits for p in (e.path, posixpath.dirname(e.path))]
        refused = target.exec([*UNWRITABLE, *dict.fromkeys(paths)])
        for path in refused.text.splitlines()[:1]:
            raise BadInput(f"{path} is not writable in {target.description}; nothing was changed")
        refused.check("checking that the files can be replaced")
        for edit in self.changed_edits:
            if edit.path.endswith(".py"):
                _compile_in_target(target, edit)
        return notes


#: Constant; the paths arrive as argv. Prints each one that cannot be written: one exec
#: for them all.
UNWRITABLE = ["sh", "-c", 'for p; do [ -w "$p" ] || printf "%s\\n" "$p"; done', "sh"]

#: What a backup costs beyond the bytes themselves: ledger.json and filesystem blocks.
_LEDGER_SLACK = 64 * 1024


def _nearest_existing(target: Target, folder: str) -> str:
    while folder not in ("", "/") and not target.exists(folder):
        folder = posixpath.dirname(folder)
    return folder or "/"


def _check_room(target: Target, edits: list[FileEdit], ledger_folder: str | None) -> list[str]:
    """One exec for the mount table and each folder's free space (fsinfo.PROBE_SCRIPT);
    a folder df cannot answer for is not guessed at."""
    folders = sorted({posixpath.dirname(e.path) for e in edits})
    ledger_at = _nearest_existing(target, ledger_folder) if ledger_folder else None
    asked = [*folders, *([ledger_at] if ledger_at else [])]
    r = target.exec(["sh", "-c", fsinfo.PROBE_SCRIPT, "sh", *asked], timeout=30)
    if r.exit_code != 0:
        return []
    mountinfo, df = fsinfo.split_probe(r.text)
    mounts = fsinfo.parse_mountinfo(mountinfo)
    spaces = fsinfo.parse_df(asked, df)
    notes: list[str] = []
    need: dict[str, int] = {}  # mount point -> bytes this apply writes there
    for edit in edits:
        m = fsinfo.mount_of(edit.path, mounts)
        if m is not None and m.read_only:
            raise BadInput(
                f"{edit.path} is not writable: it is on a read-only mount ({m.point}, "
                f"{m.fstype}) in {target.description}, which not even root can write; "
                "nothing was changed",
                hint="mount it read-write, or patch a writable copy",
            )
        if fsinfo.is_mount_point(edit.path, mounts):
            notes.append(
                f"{edit.path} is a mount point (a single-file bind mount): nothing can be "
                "renamed onto it, so it is written in place, after its backup, and checked "
                "by hash"
            )
        space = spaces.get(posixpath.dirname(edit.path))
        if space is not None:
            need[space.mount] = need.get(space.mount, 0) + len(edit.after)
    if ledger_at and ledger_at in spaces:
        backups = sum(len(e.before) + len(e.after) for e in edits) + _LEDGER_SLACK
        need[spaces[ledger_at].mount] = need.get(spaces[ledger_at].mount, 0) + backups
    for space in {s.mount: s for s in spaces.values()}.values():
        wanted = need.get(space.mount, 0)
        if wanted > space.available:
            where = ", ".join(f for f in asked if spaces.get(f) and spaces[f].mount == space.mount)
            raise BadInput(
                f"no space left on {space.mount} (for {where}) in {target.description}: "
                f"{space.available // 1024} KiB free, {-(-wanted // 1024)} KiB needed for the "
                "new files and their backups; nothing was changed",
                hint="free some space there, then run the same command again",
            )
    return notes


def _compile_in_target(target: Target, edit: FileEdit) -> None:
    tmp = f"/tmp/.qpatch-compile-{posixpath.basename(edit.path)}"
    target.write_file(tmp, edit.after, FileStat(0o600, 0, 0, 0))
    try:
        python = _python_for_compile(target)
        r = target.exec([python, "-c", _COMPILE, tmp])
        if r.exit_code != 0:
            err = (r.stderr or r.stdout).decode("utf-8", "replace").strip()
            raise BadInput(f"the rewritten {edit.path} does not compile in the target: {err}")
    finally:
        target.exec(["rm", "-f", tmp])


def _python_for_compile(target: Target) -> str:
    servers = target.server_processes()
    return servers[0].exe if servers else "python3"


# --------------------------------------------------------------------------- making it


@dataclass(frozen=True)
class Judging:
    """What the env and flag edits are judged against, and who may overrule a harmful one."""

    evidence: Evidence
    allow_harmful: bool  # the user's --allow-harmful, or the patch's own allow_harmful


def make_plan(
    target: Target,
    layout: Layout,
    patch: Patch,
    *,
    recreate: bool = False,
    workflow: dict[str, Any] | None = None,
    allow_harmful: bool = False,
) -> Plan:
    """`recreate`: a container with no start script may get a new Env and command.
    `workflow`: the one the user runs, whose model files tell the weights' dtype."""
    from qpatch.codemods import run_codemod  # libcst: for the commands that make a plan

    report = Report()
    real = _resolve_named_files(target, layout, patch, report)
    ahead = _start_reading(target, layout, patch, workflow)
    contents: dict[str, tuple[bytes, FileStat]] = {}  # path -> (current planned bytes, stat)
    originals: dict[str, bytes] = {}
    env: dict[str, str] = {}
    flags: list[str] = []
    container: ContainerChange | None = None
    effects: list[Verdict] = []
    gathered: list[Evidence] = []

    def evidence() -> Evidence:
        """Taken where first needed, so the codemods run while it is being gathered."""
        if not gathered:
            call = partial(observe.gather, target, layout, workflow=workflow)
            gathered.append(ahead.take(("evidence",), call))
        return gathered[0]

    allow = allow_harmful or patch.allow_harmful
    server_flags = list(layout.server.argv) if layout.server else []
    for i, step in enumerate(patch.steps):
        if step.when is not None and not _holds(
            step.when, f"step {i + 1}", evidence(), server_flags, report
        ):
            continue
        judging = Judging(evidence(), allow) if isinstance(step, StartupStep) else None
        if isinstance(step, CodemodStep):
            for path in _expand(target, layout.root, step.file):
                path = real.get(path, path)  # a link inside the root: edit what it points to
                if path not in contents:
                    contents[path] = ahead.read_file(path)
                    originals[path] = contents[path][0]
                data, stat = contents[path]
                new, rep = run_codemod(step.codemod, data, path=path, options=step.options)
                contents[path] = (new, stat)
                _merge(report, rep, f"{posixpath.basename(path)}")
        elif isinstance(step, StartupStep) and layout.start_script is None:
            assert judging is not None
            container, rep, env, flags, effects = _plan_container(
                target, layout, patch.name, step, ahead, judging
            )
            _merge(report, rep, "container")
            if container.changed and not recreate:
                raise BadInput(
                    f"{target.description} starts ComfyUI straight from its command, with no "
                    "start script to carry the env and flags, and a running container's Env "
                    "and command cannot be changed; nothing was changed",
                    hint="pass --recreate to recreate the container with them (the original "
                    "is kept, stopped, for rollback), or --start-script",
                )
        elif isinstance(step, StartupStep):
            assert judging is not None
            path, data, stat, new, rep, env, flags, effects = _plan_startup(
                target, layout, patch.name, step, ahead, judging
            )
            if path not in contents:  # the bytes the start script was planned from
                contents[path] = (data, stat)
                originals[path] = data
            contents[path] = (new, contents[path][1])
            _merge(report, rep, posixpath.basename(path))
    edits = [FileEdit(p, originals[p], data, stat) for p, (data, stat) in contents.items()]
    known = gathered[0] if gathered else None
    return Plan(
        patch.name, edits, report, env, flags, container, known, effects, str(patch.version)
    )


def _needs_evidence(patch: Patch) -> bool:
    """Env and flag edits are judged on the evidence; so is any `when:`."""
    return any(isinstance(s, StartupStep) or s.when is not None for s in patch.steps)


class _Ahead:
    """Read-only target calls started before the plan reaches them, each in a thread of
    its own (a daemon: a plan that fails first does not wait for them). `take(key, call)`
    returns what the started call returned, or raises what it raised, where the plan makes
    that call; a call not started is made there and then."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._started: dict[Hashable, _Call] = {}

    def start(self, key: Hashable, call: Callable[[], Any], *, after: _Call | None = None) -> _Call:
        """`after`: begin once that call is done (Docker serves one archive read of a
        container at a time: the file the plan needs first must not queue behind another)."""
        if key not in self._started:
            self._started[key] = _Call(call, after)
        return self._started[key]

    def take(self, key: Hashable, call: Callable[[], Any]) -> Any:
        started = self._started.pop(key, None)
        return started.result() if started else call()

    def read_file(self, path: str) -> tuple[bytes, FileStat]:
        return self.take(("read", path), partial(self.target.read_file, path))


class _Call:
    def __init__(self, call: Callable[[], Any], after: _Call | None = None) -> None:
        self._call = call
        self._after = after
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._after is not None:
            self._after.wait()
        try:
            self._value = self._call()
        except BaseException as e:  # handed to the plan, which raises it where it would have
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value


def _start_reading(
    target: Target, layout: Layout, patch: Patch, workflow: dict[str, Any] | None
) -> _Ahead:
    """Start what make_plan will read and ask: the evidence about the server; the codemods'
    files (those named without a glob) one after the other, then the start script and its
    `main.py --help`; and the GPU's capability. Only where the patch asks for them, as
    make_plan would."""
    ahead = _Ahead(target)
    if _needs_evidence(patch):
        ahead.start(("evidence",), partial(observe.gather, target, layout, workflow=workflow))
    reads: _Call | None = None
    for step in patch.steps:
        if isinstance(step, CodemodStep) and not _is_glob(step.file):
            path = posixpath.join(layout.root, step.file)
            reads = ahead.start(("read", path), partial(target.read_file, path), after=reads)
    if not any(isinstance(step, StartupStep) for step in patch.steps):
        return ahead
    ahead.start(("gpu",), partial(gpu_capability, target))
    script = layout.start_script
    if script is not None:

        def read_script_then_help() -> tuple[bytes, FileStat]:
            read = target.read_file(script)
            with contextlib.suppress(Exception):  # make_plan parses it again, and raises there
                if launches := startup.find_launches(read[0]):
                    _start_help(ahead, target, layout, launches[0])
            return read

        ahead.start(("read", script), read_script_then_help, after=reads)
        return ahead
    config = target.container_config()
    try:
        launch = container_command.find_launch(config.command) if config else None
    except Exception:  # make_plan meets it again, and raises it where it always did
        launch = None
    if launch is not None:
        _start_help(ahead, target, layout, launch)
    return ahead


def _start_help(ahead: _Ahead, target: Target, layout: Layout, launch: startup.Launch) -> None:
    argv = _help_argv(layout, launch)
    ahead.start(("help", *argv), partial(target.exec, argv, cwd=layout.root, timeout=60))


def _resolve_named_files(
    target: Target, layout: Layout, patch: Patch, report: Report
) -> dict[str, str]:
    """Every file a patch names, resolved inside the target (one `readlink -f`), before
    anything is read: one that leaves the ComfyUI root through a symlink is refused, and
    one that is a link inside it maps to the file it points to, so the link stays a link
    and a rollback restores the file it names."""
    named = [
        posixpath.join(layout.root, step.file)
        for step in patch.steps
        if isinstance(step, CodemodStep) and not _is_glob(step.file)
    ]
    if not named:
        return {}
    r = target.exec(["readlink", "-f", "--", layout.root, *named], timeout=30)
    lines = r.text.splitlines()
    if r.exit_code != 0 or len(lines) != len(named) + 1:
        return {}  # no readlink -f there: the paths are used as they are
    root, resolved = lines[0], lines[1:]
    mapping: dict[str, str] = {}
    for path, real in zip(named, resolved, strict=True):
        if not fsinfo.inside(real, root):
            raise BadInput(
                f"{path} resolves to {real}, outside the ComfyUI root {root} (a symlink on "
                f"the way) in {target.description}; nothing was read or changed",
                hint="point the patch at the file itself, inside the ComfyUI root",
            )
        if real != posixpath.normpath(path):
            report.find(f"{path} is a link to {real}: that file is edited, the link stays")
            mapping[path] = real
    return mapping


def _merge(into: Report, rep: Report, where: str) -> None:
    for c in rep.changes:
        into.change(c.kind, c.line, f"{where}: {c.detail}")
    for f in rep.findings:
        into.find(f"{where}: {f.message}", f.line, f.severity, f.code)
    into.already_applied = into.already_applied or rep.already_applied


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _expand(target: Target, root: str, pattern: str) -> list[str]:
    """A path or glob relative to the ComfyUI root, expanded inside the target."""
    full = posixpath.join(root, pattern)
    if not _is_glob(pattern):
        if not target.exists(full):
            raise BadInput(f"{full}: no such file in {target.description} (the patch needs it)")
        return [full]
    r = target.exec(["find", root, "-path", full, "-type", "f"])
    found = sorted(p for p in r.text.splitlines() if p)
    if not found:
        raise BadInput(f"no file matches {full} in {target.description} (the patch needs one)")
    return found


def _plan_startup(
    target: Target,
    layout: Layout,
    patch_name: str,
    step: StartupStep,
    ahead: _Ahead,
    judging: Judging,
) -> tuple[str, bytes, bytes, FileStat, Report, dict[str, str], list[str], list[Verdict]]:
    """The start script's path, its bytes and stat as read, its new bytes, and the rest."""
    assert layout.start_script is not None
    data, stat = ahead.read_file(layout.start_script)
    launches = startup.find_launches(data)
    if not launches:
        raise BadInput(f"{layout.start_script}: no ComfyUI launch command found")
    existing = [f for launch in launches for f in launch.flags]
    flag_edits, env, report, effects = _flags_and_env(
        target, layout, step, launches[0], existing, ahead, judging
    )
    new, edit_report = startup.edit_start_script(
        data, patch_name=patch_name, env=env, flags=flag_edits, path=layout.start_script
    )
    report.extend(edit_report)
    names = [e.name for e in flag_edits]
    return layout.start_script, data, stat, new, report, env, names, effects


def _plan_container(
    target: Target,
    layout: Layout,
    patch_name: str,
    step: StartupStep,
    ahead: _Ahead,
    judging: Judging,
) -> tuple[ContainerChange, Report, dict[str, str], list[str], list[Verdict]]:
    """The Env and command of a container that launches main.py itself."""
    config = target.container_config()
    if config is None:
        raise BadInput(
            f"no start script found for {target.description}",
            hint="name the script that starts ComfyUI with --start-script",
        )
    launch = container_command.find_launch(config.command)
    flag_edits, env, report, effects = _flags_and_env(
        target, layout, step, launch, list(launch.flags), ahead, judging
    )
    change = container_command.plan_change(
        entrypoint=config.entrypoint,
        cmd=config.cmd,
        env_list=config.env,
        env=env,
        flags=flag_edits,
        patch_name=patch_name,
    )
    report.extend(change.report)
    return change, report, env, [e.name for e in flag_edits], effects


def _flags_and_env(
    target: Target,
    layout: Layout,
    step: StartupStep,
    launch: startup.Launch,
    existing: list[str],
    ahead: _Ahead,
    judging: Judging,
) -> tuple[list[startup.FlagEdit], dict[str, str], Report, list[Verdict]]:
    """The flag edits and the env to set, checked against this very ComfyUI (its --help)
    and judged on what it is (qpatch/effects.yaml): a no-op is left out, a harmful one
    refused unless allowed, and every one reported with its effect and evidence."""
    report = Report()
    evidence = judging.evidence
    requests = [r for r in step.flags if _holds(r.when, r.flag, evidence, existing, report)]
    cli = _ask_comfyui(target, layout, launch, ahead)
    flag_edits, flag_report = comfy_flags.plan_flags(cli, requests, existing)
    report.extend(flag_report)
    allowed = [r.flag.partition("=")[0] for r in requests if r.allow_harmful]
    verdicts: list[Verdict] = []
    harmful: list[Verdict] = []
    kept: list[startup.FlagEdit] = []
    final_flags = _after(existing, flag_edits)
    for edit in flag_edits:
        verdict = judge("flag", edit.name, edit.value, evidence, final_flags)
        allow = judging.allow_harmful or any(edit.name.startswith(a) for a in allowed)
        if _keep(verdict, allow, report, harmful):
            kept.append(edit)
        verdicts.append(verdict)
    final_flags = _after(existing, kept)
    wanted: dict[str, str] = {}
    for name, value in step.env.items():  # judged as the patch writes them ("auto" too)
        request = step.env_request(name)
        if not _holds(request.when, name, evidence, final_flags, report):
            continue
        verdict = judge("env", name, value, evidence, final_flags)
        if _keep(verdict, judging.allow_harmful or request.allow_harmful, report, harmful):
            wanted[name] = value
        verdicts.append(verdict)
    capability = ahead.take(("gpu",), partial(gpu_capability, target))
    env, env_report = envcheck.check_env(wanted, flags=final_flags, gpu_capability=capability)
    report.extend(env_report)
    if harmful:
        raise HarmfulEdits(
            "the patch asks for edits that are harmful on this server; nothing was changed:\n"
            + "\n".join(f"  {v}" for v in harmful),
            hint="leave them out of the patch, or give them `allow_harmful: true` there (or "
            "--allow-harmful) if you want them anyway",
            evidence=evidence,
            effects=verdicts,
        )
    return kept, env, report, verdicts


def _after(existing: list[str], edits: list[startup.FlagEdit]) -> list[str]:
    """The server's flags once `edits` are made: a flag an edit replaces is gone."""
    gone = {name for e in edits for name in e.replaces}
    return [f for f in existing if f.partition("=")[0] not in gone] + [e.name for e in edits]


class HarmfulEdits(BadInput):
    """Refused edits, with what they were judged on, for the --json of the refusal."""

    def __init__(
        self, message: str, *, hint: str, evidence: Evidence, effects: list[Verdict]
    ) -> None:
        super().__init__(message, hint=hint)
        self.evidence = evidence
        self.effects = effects


def _holds(when: Any, name: str, evidence: Evidence, flags: list[str], report: Report) -> bool:
    """A step, env var or flag with a `when:` is written only where it holds; one that cannot
    be decided is left out too (writing on a guess is what qpatch avoids), saying why."""
    if when is None:
        return True
    outcome = when.decide(evidence, flags)
    if outcome.value:
        return True
    words = "does not hold" if outcome.value is False else "cannot be decided"
    report.find(
        f"{name} skipped: its `when: {when.text}` {words} here ({outcome.why})",
        severity="info",
        code="when",
    )
    return False


def _keep(verdict: Verdict, allow: bool, report: Report, harmful: list[Verdict]) -> bool:
    """Whether the edit is written; its effect goes in the report either way."""
    if verdict.effect is Effect.NO_OP:
        report.find(
            f"{verdict.edit} skipped: no-op here: {verdict.why} ({verdict.evidence})",
            severity="info",
            code="no-op",
        )
        return False
    if verdict.effect is Effect.HARMFUL and not allow:
        harmful.append(verdict)
        return False
    allowed = " (allowed by allow_harmful)" if verdict.effect is Effect.HARMFUL else ""
    maybe = verdict.effect is Effect.UNKNOWN and verdict.why.startswith("harmful if")
    report.find(
        f"{verdict.edit}: {verdict.effect.value}{allowed}: {verdict.why} ({verdict.evidence})",
        severity="warning" if verdict.effect is Effect.HARMFUL or maybe else "info",
        code=verdict.effect.value,
    )
    return True


def _help_argv(layout: Layout, launch: startup.Launch) -> list[str]:
    interpreter = launch.interpreter if launch.interpreter.startswith("/") else layout.python
    return launch.help_argv(interpreter)


def _ask_comfyui(
    target: Target, layout: Layout, launch: startup.Launch, ahead: _Ahead
) -> comfy_flags.ComfyCli:
    """The flags this very ComfyUI accepts: its own `main.py --help`, run in the target."""
    argv = _help_argv(layout, launch)
    r = ahead.take(("help", *argv), partial(target.exec, argv, cwd=layout.root, timeout=60))
    if r.exit_code != 0 or "usage:" not in r.text:
        err = (r.stderr or r.stdout).decode("utf-8", "replace").strip()[-600:]
        raise BadInput(
            f"could not ask ComfyUI for its flags: `{' '.join(argv)}` in {layout.root} "
            f"exited {r.exit_code}: {err or 'no output'}",
            hint="is this a ComfyUI root, and does its python start?",
        )
    return comfy_flags.parse_help(r.text)


def gpu_capability(target: Target) -> str | None:
    """Compute capability of the GPU the target sees ("8.9"), or None when it sees none."""
    r = target.exec(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], timeout=20)
    caps = [line.strip() for line in r.text.splitlines() if line.strip()]
    return caps[0] if r.exit_code == 0 and caps else None
