"""service:NAME refuses the options a container takes that a service cannot honour, before
any engine is asked: a gate that would pass empty (verify --expect-saving on a service
measures nothing) is an error, not a pass."""

from __future__ import annotations

from typing import Any

import pytest

from qpatch.commands import service
from qpatch.errors import BadInput
from qpatch.output import Console
from qpatch.result import Result


@pytest.mark.parametrize(
    ("command", "given", "flag"),
    [
        ("verify", {"workflow": "wf.json"}, "--workflow"),
        ("verify", {"expect_saving": 30.0}, "--expect-saving"),
        ("verify", {"require_vram": True}, "--require-vram"),
        ("verify", {"baseline": "before"}, "--baseline"),
        ("rollback", {"no_restart": True}, "--no-restart"),
        ("rollback", {"force": True}, "--force"),
        ("apply", {"patch": "qwen-image-2512", "measure": "wf.json"}, "--measure"),
        ("apply", {"patch": "qwen-image-2512", "recreate": True}, "--recreate"),
    ],
)
def test_options_a_service_cannot_honour_are_refused(
    command: str, given: dict[str, Any], flag: str
) -> None:
    run = getattr(service, command)
    with pytest.raises(BadInput, match=f"{flag}: not for a service:NAME target"):
        run(Console(), Result(), target="service:comfy", host=None, **given)
