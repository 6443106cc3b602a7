"""What every step of a command needs, in one object: the target, where ComfyUI lives in
it, its ledger store, the console, the health timeout, and the command's result.

Built once by qpatch.session (the composition root) and handed to the engine and the
appliers, which never build their own."""

from __future__ import annotations

from dataclasses import dataclass, field

from qpatch.comfy_api import ComfyAPI
from qpatch.discovery import Layout
from qpatch.ledger import LedgerStore
from qpatch.output import Console
from qpatch.result import Result
from qpatch.targets.base import Target


@dataclass
class Context:
    target: Target
    layout: Layout
    store: LedgerStore
    out: Console
    timeout: float = 180.0
    result: Result = field(default_factory=Result)

    @property
    def api(self) -> ComfyAPI:
        return ComfyAPI(self.target, self.layout.python, self.layout.port)
