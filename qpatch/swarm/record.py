"""What qpatch did to a Swarm service, kept on this host only: a service has no files of
its own to hold a ledger (its tasks come and go), and everything needed to undo it is
Swarm's previous spec plus the image names kept here."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qpatch.paths import host_state_dir, write_atomically

CANARY, UPDATING, APPLIED = "canary", "updating", "applied"
ROLLED_BACK_BY_SWARM, ROLLED_BACK = "rolled-back-by-swarm", "rolled-back"


@dataclass
class ServiceRecord:
    service: str
    service_id: str
    host: str | None
    patch: str
    patch_version: str
    state: str
    previous_image: str  # the spec's image before the update: where a rollback returns
    image: str  # the baked tag the service was updated to
    image_id: str = ""
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256 as baked
    originals: dict[str, str] = field(default_factory=dict)  # path -> sha256 before
    history: list[dict[str, Any]] = field(default_factory=list)
    updated: float = field(default_factory=time.time)

    def event(self, what: str) -> None:
        self.history.append({"time": time.time(), "event": what, "patch": self.patch})


def path_for(service: str, engine: str) -> Path:
    return host_state_dir() / f"service-{service}@{engine}" / "service.json"


def load(service: str, engine: str) -> ServiceRecord | None:
    p = path_for(service, engine)
    if not p.is_file():
        return None
    return ServiceRecord(**json.loads(p.read_text()))


def save(record: ServiceRecord, engine: str, state: str | None = None, event: str = "") -> None:
    """Set the state, note the event, write atomically."""
    if state is not None:
        record.state = state
    if event:
        record.event(event)
    record.updated = time.time()
    data = json.dumps(asdict(record), indent=2, sort_keys=True).encode()
    write_atomically(path_for(record.service, engine), data)
