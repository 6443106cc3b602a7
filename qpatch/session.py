"""The composition root every command opens first: resolve the target, discover ComfyUI
in it, locate its ledger, take its lock, finish any run that was interrupted — then hand
the command one Context, and clean up what it made if it wrote nothing."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from qpatch.baked import replaced
from qpatch.context import Context
from qpatch.discovery import discover
from qpatch.engine import recover_interrupted
from qpatch.errors import BadInput, NotRestored
from qpatch.ledger import LedgerStore, last_target
from qpatch.lock import target_lock
from qpatch.output import Console
from qpatch.result import Result
from qpatch.targets import open_target
from qpatch.targets.base import Target


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
    host: str | None = None,
) -> Iterator[Context]:
    """`exclusive=False` (status, dry runs) reads only: no lock, no recovery, no writes.
    `host`: the engine (--host) the ref is looked up on; None: DOCKER_HOST or local."""
    if ref is None:
        last = last_target()
        if last is None:
            raise BadInput("no TARGET given, and nothing was applied from this host yet")
        ref, host = last[0], host or last[1]
        where = f" on {host}" if host else ""
        out.line(f"target: {ref}{where} (the last one applied from this host)")

    def opened(must_run: bool) -> Target:
        return open_target(
            ref,
            require_running=must_run,
            start_script=start_script,
            restart_cmd=shlex.split(restart_cmd) if restart_cmd else None,
            host=host,
        )

    target = opened(require_running and not exclusive)
    if exclusive and not target.state().running:
        _start_if_qpatch_stopped_it(target, out, comfyui_root, timeout)
        if require_running:
            target = opened(True)  # still down: the target's own "not running" error
    layout = discover(target, root=comfyui_root, start_script=start_script)
    if layout.start_script:
        target.start_script = layout.start_script  # a local server restarts through it
    store = LedgerStore.locate(target, layout.root, layout.writable)
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
        try:
            if created and not target.exists(store.path("ledger.json")):
                store.remove_empty()  # refused before any write: leave no trace either
        except Exception as e:  # noqa: BLE001 - never replace the command's own outcome
            out.warn(f"could not remove the empty ledger folder {store.folder}: {e}")


def _start_if_qpatch_stopped_it(
    target: Target, out: Console, comfyui_root: str | None, timeout: float
) -> None:
    """A restart qpatch began and did not finish (killed after stopping ComfyUI) left the
    target down: the ledger says so, and it is qpatch's to start again, before recovery."""
    layout = discover(target, root=comfyui_root)  # a stopped target: the root is enough
    store = LedgerStore.locate(target, layout.root)
    ledger = store.load()
    if ledger is None or not (ledger.is_open or ledger.restart_pending):
        return
    if replaced(target, store, ledger):
        return  # it was another container qpatch stopped: this one is the user's to start
    out.warn(
        f"{target.description} is down because an earlier qpatch run stopped it to restart "
        f"(ledger state {str(ledger.state)!r}): starting it again"
    )
    target.start()
    deadline = time.monotonic() + min(timeout, 60.0)
    while not target.state().running:
        if time.monotonic() > deadline:
            raise NotRestored(
                f"{target.description} did not start again ({target.state().detail}); start "
                "it by hand, then run the same qpatch command again"
            )
        time.sleep(0.5)
