"""Option values checked where they are parsed, so a nonsense value is a usage error
(exit 2, nothing done) and never reaches a target: `--timeout -1` once wrote, restarted and
then could not wait; `--timeout nan` was taken; an empty container name reached the SDK."""

from __future__ import annotations

import math
from typing import Any

import click


class Seconds(click.ParamType):
    """A finite number of seconds above zero, at most a day."""

    name = "SECONDS"

    def __init__(self, *, maximum: float = 86400.0) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0 or seconds > self.maximum:
            self.fail(f"{value!r} must be above 0 and at most {self.maximum:g} seconds", param, ctx)
        return seconds


class Percent(click.ParamType):
    """A finite percentage from 0 to 100."""

    name = "PCT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        try:
            pct = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a percentage", param, ctx)
        if not math.isfinite(pct) or not 0 <= pct <= 100:
            self.fail(f"{value!r} must be a percentage from 0 to 100", param, ctx)
        return pct


class TargetRef(click.ParamType):
    """A container name or ID, or local:PATH: never empty, never blank."""

    name = "TARGET"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        text = str(value)
        if not text.strip():
            self.fail("the target is empty: give a container name or ID, or local:PATH", param, ctx)
        if text == "local:":
            self.fail("local: needs the ComfyUI root folder after it (local:PATH)", param, ctx)
        if "\x00" in text or "\n" in text:
            self.fail(f"{text!r} is not a container name, ID or local:PATH", param, ctx)
        return text


class HostRef(click.ParamType):
    """A Docker engine: a URL of a known scheme, or the name of a Docker context."""

    name = "HOST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        from qpatch.errors import BadInput
        from qpatch.targets.engines import check_host

        try:
            return check_host(str(value))
        except BadInput as e:
            self.fail(str(e).removeprefix("--host "), param, ctx)
