"""The composition root every command opens first: resolve the target, discover ComfyUI
in it, locate its ledger, take its lock, finish any run that was interrupted — then hand
the command one Context, and clean up what it made if it wrote nothing."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from qpatch.context import Context
from qpatch.discovery import discover
from qpatch.engine import recover_interrupted
from qpatch.errors import BadInput
from qpatch.ledger import LedgerStore, last_target
from qpatch.lock import target_lock
from qpatch.output import Console
from qpatch.result import Result
from qpatch.targets import open_target


@contextmanager
def session(
    out: Console,
    result: Result,
    ref: str | None,
    *,
    comfyui_root: str | None = None,
    start_script: str | None = None,
    restart_cmd: str | None = None,
    require_running: bool = True,
    timeout: float = 180.0,
    exclusive: bool = True,
) -> Iterator[Context]:
    """`exclusive=False` (status, dry runs) reads only: no lock, no recovery, no writes."""
    if ref is None:
        ref = last_target()
        if ref is None:
            raise BadInput("no TARGET given, and nothing was applied from this host yet")
        out.line(f"target: {ref} (the last one applied from this host)")
    target = open_target(
        ref,
        require_running=require_running,
        start_script=start_script,
        restart_cmd=shlex.split(restart_cmd) if restart_cmd else None,
    )
    layout = discover(target, root=comfyui_root, start_script=start_script)
    if layout.start_script:
        target.start_script = layout.start_script  # a local server restarts through it
    store = LedgerStore.locate(target, layout.root)
    ctx = Context(target, layout, store, out, timeout, result)
    result.target = target.ref
    lock: AbstractContextManager[None] = nullcontext()
    created = False
    if exclusive and target.state().running:  # a stopped container: no exec, nobody racing
        created = not target.exists(store.folder)
        store.ensure_folder()
        lock = target_lock(target, store.path("lock"), warn=out.warn)
    try:
        with lock:
            if exclusive:
                recover_interrupted(ctx)
            yield ctx
    finally:
        if created and not target.exists(store.path("ledger.json")):
            store.remove_empty()  # refused before any write: leave no trace either
