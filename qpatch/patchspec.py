"""Load and validate patch files, so adding a patch needs no Python.

The bundled patches are package data (qpatch/patches/*.yaml), read through
importlib.resources, so they ship in a wheel and a non-editable install as well as in a
checkout.

Every error names the file and the key, in the patch author's terms, before anything
touches a target. Hand-written checks rather than jsonschema: the schema is small, and
jsonschema's messages ("… is not of type 'string'" at a deque path) would need rewording
anyway.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from qpatch.comfy_flags import FlagRequest
from qpatch.conditions import Condition, parse_condition
from qpatch.errors import BadInput

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# The bundled patches: a folder on disk in a checkout or an installed package, though only
# the Traversable protocol (`/`, iterdir, is_file, read_text) is relied on.
PATCHES_DIR: Traversable = files("qpatch") / "patches"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ON_CONFLICT = ("error", "skip", "replace")


@dataclass(frozen=True)
class CodemodStep:
    codemod: str  # a key of qpatch.codemods.CODEMODS
    file: str  # path or glob relative to the ComfyUI root
    options: Mapping[str, Any]
    when: Condition | None = None


@dataclass(frozen=True)
class EnvRequest:
    """A variable a patch exports: its value, where it applies, and whether the patch
    writes it even where qpatch/effects.yaml calls it harmful."""

    value: str
    when: Condition | None = None
    allow_harmful: bool = False


@dataclass(frozen=True)
class StartupStep:
    env: Mapping[str, str]
    flags: tuple[FlagRequest, ...]
    when: Condition | None = None
    env_rules: Mapping[str, EnvRequest] = field(default_factory=dict)

    def env_request(self, name: str) -> EnvRequest:
        return self.env_rules.get(name) or EnvRequest(self.env[name])


Step = CodemodStep | StartupStep


@dataclass(frozen=True)
class Patch:
    name: str
    description: str
    version: str
    steps: tuple[Step, ...]
    source: str  # the file it came from, for messages
    allow_harmful: bool = False  # every edit written even where effects.yaml calls it harmful

    @property
    def codemods(self) -> tuple[CodemodStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, CodemodStep))

    @property
    def startup(self) -> StartupStep | None:
        return next((s for s in self.steps if isinstance(s, StartupStep)), None)


@dataclass(frozen=True)
class _Where:
    """A position in the file ("steps[2].startup.flags[0]") that errors are raised from."""

    source: str
    path: str = ""

    def __truediv__(self, key: str | int) -> _Where:
        if isinstance(key, int):
            return _Where(self.source, f"{self.path}[{key}]")
        return _Where(self.source, f"{self.path}.{key}" if self.path else key)

    def fail(self, message: str) -> BadInput:
        return BadInput(f"{self.source}: {self.path or 'top level'}: {message}")


def _type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}
    names |= {int: "a number", float: "a number", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


def _mapping(value: object, where: _Where, required: set[str], allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.fail(f"expected a mapping, got {_type_name(value)}")
    for key in value:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(allowed))}"
            raise (where / str(key)).fail(f"unknown key ({hint})")
    for key in sorted(required - value.keys()):
        raise (where / key).fail("missing")
    return value


def _string(value: object, where: _Where) -> str:
    if not isinstance(value, str) or not value:
        quote = " (quote it)" if isinstance(value, (bool, int, float)) else ""
        raise where.fail(f"expected a non-empty string, got {_type_name(value)}{quote}")
    return value


def _flag(item: object, where: _Where) -> FlagRequest:
    if isinstance(item, str):
        flag, sep, value = item.partition("=")
        request = FlagRequest(flag, value if sep else None)
    else:
        keys = {"flag", "value", "on_conflict", "when", "allow_harmful"}
        m = _mapping(item, where, {"flag"}, keys)
        value = _string(m["value"], where / "value") if "value" in m else None
        on_conflict = m.get("on_conflict", "error")
        if on_conflict not in _ON_CONFLICT:
            raise (where / "on_conflict").fail(f"must be one of {', '.join(_ON_CONFLICT)}")
        request = FlagRequest(
            _string(m["flag"], where / "flag"),
            value,
            on_conflict,
            _when(m, where),
            _bool(m, "allow_harmful", where),
        )
    if not request.flag.startswith("-"):
        raise where.fail(f"{request.flag!r} is not a flag (flags start with -)")
    return request


def _when(m: Mapping[str, Any], where: _Where) -> Condition | None:
    """A `when:` (qpatch/conditions.py), checked where it is written."""
    if "when" not in m:
        return None
    spot = where / "when"
    return parse_condition(m["when"], f"{spot.source}: {spot.path}")


def _bool(m: Mapping[str, Any], key: str, where: _Where) -> bool:
    value = m.get(key, False)
    if not isinstance(value, bool):
        raise (where / key).fail(f"expected true or false, got {_type_name(value)}")
    return value


def _env_entry(name: str, val: object, where: _Where) -> EnvRequest:
    """`NAME: value`, or `NAME: {value: ..., when: ..., allow_harmful: ...}`."""
    if not isinstance(val, dict):
        return EnvRequest(_string(val, where))
    m = _mapping(val, where, {"value"}, {"value", "when", "allow_harmful"})
    return EnvRequest(
        _string(m["value"], where / "value"), _when(m, where), _bool(m, "allow_harmful", where)
    )


def _startup(value: object, where: _Where, when: Condition | None) -> StartupStep:
    m = _mapping(value, where, set(), {"env", "flags"})
    env = m.get("env") or {}
    if not isinstance(env, dict):
        raise (where / "env").fail(f"expected a mapping, got {_type_name(env)}")
    requests: dict[str, EnvRequest] = {}
    for name, val in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise (where / "env" / str(name)).fail("not a valid variable name")
        requests[name] = _env_entry(name, val, where / "env" / name)
    flags = m.get("flags", [])
    if not isinstance(flags, list):
        raise (where / "flags").fail(f"expected a list, got {_type_name(flags)}")
    return StartupStep(
        {name: r.value for name, r in requests.items()},
        tuple(_flag(f, where / "flags" / i) for i, f in enumerate(flags)),
        when,
        requests,
    )


def _codemod(m: dict[str, Any], where: _Where, registry: Mapping[str, type] | None) -> CodemodStep:
    name = _string(m["codemod"], where / "codemod")
    file = _string(m["file"], where / "file")
    if file.startswith("/") or ".." in Path(file).parts:
        raise (where / "file").fail("must be relative to the ComfyUI root, without '..'")
    options = m.get("options") or {}
    if not isinstance(options, dict):
        raise (where / "options").fail(f"expected a mapping, got {_type_name(options)}")
    if registry is not None:
        _check_codemod(name, options, where, registry)
    return CodemodStep(name, file, dict(options), _when(m, where))


def _check_codemod(
    name: str, options: dict[str, Any], where: _Where, registry: Mapping[str, type]
) -> None:
    """Against the codemod's own OPTIONS declaration, so a bad option fails at load time,
    before anything is read from the target."""
    if name not in registry:
        raise (where / "codemod").fail(f"no codemod {name!r} (known: {', '.join(registry)})")
    declared: Mapping[str, Any] = getattr(registry[name], "OPTIONS", {})
    for key, value in options.items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise (where / "options" / str(key)).fail(f"unknown option (known: {known})")
        if problem := _option_problem(declared[key], value):
            raise (where / "options" / key).fail(f"{problem}, got {_type_name(value)}")
    for key, spec in declared.items():
        if isinstance(spec, type) and key not in options:
            raise (where / "options" / key).fail("missing")


def _option_problem(spec: Any, value: Any) -> str | None:
    """Why `value` does not fit an option declared as `spec`, or None. `spec` is a
    qpatch.codemods Option (it says what it accepts), a type (required, of that type) or a
    default (optional, of the default's type)."""
    if hasattr(spec, "accepts"):
        return None if spec.accepts(value) else f"must be {spec.expects()}"
    expected = spec if isinstance(spec, type) else type(spec)
    fits = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if fits or (expected is float and type(value) is int):
        return None
    return f"expected {expected.__name__}"


def _registry() -> Mapping[str, type] | None:
    """qpatch.codemods.CODEMODS, or None where that package declares none: then only the
    shape of a codemod step is checked. Imported here, when a patch is checked, so this
    module does not depend on the codemods (and libcst) to be imported."""
    try:
        from qpatch import codemods
    except ImportError:
        return None
    return getattr(codemods, "CODEMODS", None)


def parse_patch(text: str, source: str, *, codemods: Mapping[str, type] | None = None) -> Patch:
    """Validate a patch file's text; `codemods` defaults to qpatch.codemods.CODEMODS."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BadInput(f"{source}: not valid YAML: {e}") from e
    top = _Where(source)
    keys = {"name", "description", "version", "steps"}
    doc = _mapping(data, top, keys, keys | {"allow_harmful"})
    name = _string(doc["name"], top / "name")
    description = _string(doc["description"], top / "description")
    if not _NAME.fullmatch(name):
        raise (top / "name").fail("use lowercase letters, digits, '.', '_' and '-'")
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise (top / "version").fail(f"expected an integer or a string, got {_type_name(version)}")
    if not isinstance(doc["steps"], list) or not doc["steps"]:
        raise (top / "steps").fail("expected a non-empty list of steps")
    registry = codemods if codemods is not None else _registry()
    steps: list[Step] = []
    for i, raw in enumerate(doc["steps"]):
        where = top / "steps" / i
        if isinstance(raw, dict) and "codemod" in raw:
            keys = {"codemod", "file", "options", "when"}
            m = _mapping(raw, where, {"codemod", "file"}, keys)
            steps.append(_codemod(m, where, registry))
        elif isinstance(raw, dict) and "startup" in raw:
            _mapping(raw, where, {"startup"}, {"startup", "when"})
            steps.append(_startup(raw["startup"], where / "startup", _when(raw, where)))
        else:
            raise where.fail("a step is a mapping with `codemod:` or `startup:`")
    if sum(isinstance(s, StartupStep) for s in steps) > 1:
        raise (top / "steps").fail("only one startup step (merge their env and flags)")
    allow = _bool(doc, "allow_harmful", top)
    return Patch(name, description.strip(), str(version), tuple(steps), source, allow)


def load_patch(name_or_path: str) -> Patch:
    """A bundled patch by name (qpatch/patches/<name>.yaml), or a patch file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and "/" not in name_or_path:
        bundled = PATCHES_DIR / f"{name_or_path}.yaml"
        if not bundled.is_file():
            known = ", ".join(n for n, _ in list_patches()) or "none"
            raise BadInput(f"no bundled patch {name_or_path!r} (bundled: {known})")
        return _read(bundled)
    return _read(path)


def _read(file: Traversable | Path) -> Patch:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read patch file {file}: {e.strerror}") from e
    return parse_patch(text, str(file))


def list_patches() -> list[tuple[str, str]]:
    """(name, description) of each bundled patch, for `qpatch patches`."""
    bundled = sorted(
        (f for f in PATCHES_DIR.iterdir() if f.name.endswith(".yaml") and f.is_file()),
        key=lambda f: f.name,
    )
    patches = [_read(f) for f in bundled]
    return [(p.name, p.description) for p in patches]
