"""Plan: read the target's files and compute every byte qpatch would write, before
writing any. Reading and asking (main.py --help, the GPU's capability) happen here; the
edits themselves are the pure codemods and start-script editor."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from qpatch import comfy_flags, container_command, envcheck, startup
from qpatch.codemods import run_codemod
from qpatch.container_command import ContainerChange
from qpatch.discovery import Layout
from qpatch.errors import BadInput
from qpatch.patchspec import CodemodStep, Patch, StartupStep
from qpatch.report import Report
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

    def validate(self, target: Target) -> None:
        """Before any write: every file can be replaced, every Python file compiles there."""
        for edit in self.changed_edits:
            folder = posixpath.dirname(edit.path)
            for path in (edit.path, folder):
                if target.exec(["test", "-w", path]).exit_code != 0:
                    raise BadInput(
                        f"{path} is not writable in {target.description}; nothing was changed"
                    )
            if edit.path.endswith(".py"):
                _compile_in_target(target, edit)


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


def make_plan(target: Target, layout: Layout, patch: Patch, *, recreate: bool = False) -> Plan:
    """`recreate`: a container with no start script may get a new Env and command."""
    report = Report()
    contents: dict[str, tuple[bytes, FileStat]] = {}  # path -> (current planned bytes, stat)
    originals: dict[str, bytes] = {}
    env: dict[str, str] = {}
    flags: list[str] = []
    container: ContainerChange | None = None
    for step in patch.steps:
        if isinstance(step, CodemodStep):
            for path in _expand(target, layout.root, step.file):
                if path not in contents:
                    contents[path] = target.read_file(path)
                    originals[path] = contents[path][0]
                data, stat = contents[path]
                new, rep = run_codemod(step.codemod, data, path=path, options=step.options)
                contents[path] = (new, stat)
                _merge(report, rep, f"{posixpath.basename(path)}")
        elif isinstance(step, StartupStep) and layout.start_script is None:
            container, rep, env, flags = _plan_container(target, layout, patch.name, step)
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
            path, new, rep, env, flags = _plan_startup(target, layout, patch.name, step)
            if path not in contents:
                contents[path] = target.read_file(path)
                originals[path] = contents[path][0]
            contents[path] = (new, contents[path][1])
            _merge(report, rep, posixpath.basename(path))
    edits = [FileEdit(p, originals[p], data, stat) for p, (data, stat) in contents.items()]
    return Plan(patch.name, edits, report, env, flags, container)


def _merge(into: Report, rep: Report, where: str) -> None:
    for c in rep.changes:
        into.change(c.kind, c.line, f"{where}: {c.detail}")
    for f in rep.findings:
        into.find(f"{where}: {f.message}", f.line, f.severity)
    into.already_applied = into.already_applied or rep.already_applied


def _expand(target: Target, root: str, pattern: str) -> list[str]:
    """A path or glob relative to the ComfyUI root, expanded inside the target."""
    full = posixpath.join(root, pattern)
    if not any(ch in pattern for ch in "*?["):
        if not target.exists(full):
            raise BadInput(f"{full}: no such file in {target.description} (the patch needs it)")
        return [full]
    r = target.exec(["find", root, "-path", full, "-type", "f"])
    found = sorted(p for p in r.text.splitlines() if p)
    if not found:
        raise BadInput(f"no file matches {full} in {target.description} (the patch needs one)")
    return found


def _plan_startup(
    target: Target, layout: Layout, patch_name: str, step: StartupStep
) -> tuple[str, bytes, Report, dict[str, str], list[str]]:
    assert layout.start_script is not None
    data, _ = target.read_file(layout.start_script)
    launches = startup.find_launches(data)
    if not launches:
        raise BadInput(f"{layout.start_script}: no ComfyUI launch command found")
    existing = [f for launch in launches for f in launch.flags]
    flag_edits, env, report = _flags_and_env(target, layout, step, launches[0], existing)
    new, edit_report = startup.edit_start_script(
        data, patch_name=patch_name, env=env, flags=flag_edits, path=layout.start_script
    )
    report.extend(edit_report)
    return layout.start_script, new, report, env, [e.name for e in flag_edits]


def _plan_container(
    target: Target, layout: Layout, patch_name: str, step: StartupStep
) -> tuple[ContainerChange, Report, dict[str, str], list[str]]:
    """The Env and command of a container that launches main.py itself."""
    config = target.container_config()
    if config is None:
        raise BadInput(
            f"no start script found for {target.description}",
            hint="name the script that starts ComfyUI with --start-script",
        )
    launch = container_command.find_launch(config.command)
    flag_edits, env, report = _flags_and_env(target, layout, step, launch, list(launch.flags))
    change = container_command.plan_change(
        entrypoint=config.entrypoint,
        cmd=config.cmd,
        env_list=config.env,
        env=env,
        flags=flag_edits,
        patch_name=patch_name,
    )
    report.extend(change.report)
    return change, report, env, [e.name for e in flag_edits]


def _flags_and_env(
    target: Target,
    layout: Layout,
    step: StartupStep,
    launch: startup.Launch,
    existing: list[str],
) -> tuple[list[startup.FlagEdit], dict[str, str], Report]:
    """The flag edits and the env to set, both checked against this very ComfyUI."""
    report = Report()
    cli = _ask_comfyui(target, layout, launch)
    flag_edits, flag_report = comfy_flags.plan_flags(cli, step.flags, existing)
    report.extend(flag_report)
    final_flags = existing + [e.name for e in flag_edits]
    env, env_report = envcheck.check_env(
        step.env, flags=final_flags, gpu_capability=gpu_capability(target)
    )
    report.extend(env_report)
    return flag_edits, env, report


def _ask_comfyui(target: Target, layout: Layout, launch: startup.Launch) -> comfy_flags.ComfyCli:
    """The flags this very ComfyUI accepts: its own `main.py --help`, run in the target."""
    interpreter = launch.interpreter if launch.interpreter.startswith("/") else layout.python
    argv = launch.help_argv(interpreter)
    r = target.exec(argv, cwd=layout.root, timeout=60)
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
