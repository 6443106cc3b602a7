"""One qpatch at a time per target: a lock file inside the target, so two operators on two
machines exclude each other too. It names its holder, so a stale one can be judged."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from qpatch.errors import BadInput
from qpatch.targets.base import Target

#: Constant; content and path arrive as argv. `set -C` makes `>` fail on an existing
#: file (O_EXCL), which is what makes the creation atomic.
_CREATE = ["sh", "-c", 'set -C; printf "%s" "$1" > "$2"', "sh"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def target_lock(
    target: Target, path: str, *, warn: Callable[[str], None] = lambda _: None
) -> Iterator[None]:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    content = json.dumps(me)
    for _attempt in range(2):
        if target.exec([*_CREATE, content, path]).exit_code == 0:
            break
        holder = _read_holder(target, path)
        if holder and holder.get("host") == me["host"] and not _alive(int(holder["pid"])):
            warn(f"taking over a stale lock of process {holder['pid']} (no longer running)")
            target.exec(["rm", "-f", path])
            continue
        since = time.strftime("%H:%M:%S", time.localtime(float((holder or {}).get("time", 0))))
        who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "someone"
        raise BadInput(
            f"another qpatch ({who}, since {since}) is working on {target.description}",
            hint=f"wait for it; if it is gone for good, remove {path} in the target",
        )
    else:
        raise BadInput(f"could not take the lock {path} in {target.description}")
    try:
        yield
    finally:
        # Releasing must never replace the command's own outcome: a target that stopped
        # answering (paused, its engine restarting) turned an exit 4 into an exit 2 here.
        try:
            if _read_holder(target, path) == me:
                target.exec(["rm", "-f", path])
        except Exception as e:  # noqa: BLE001 - reported, and the lock names its holder
            warn(f"could not release the lock {path} ({e}); remove it once the target answers")


def _read_holder(target: Target, path: str) -> dict | None:
    r = target.exec(["cat", path])
    try:
        return json.loads(r.stdout) if r.exit_code == 0 else None
    except ValueError:
        return None
