"""ComfyUI's HTTP API, called from inside the target by its own python: no port needs
publishing, and it works the same for a remote engine."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qpatch.targets.base import Target

DEFAULT_PORT = 8188

#: Constant program; method, URL, body, timeout and (optionally) how long to keep asking
#: arrive as argv. Prints status TAB body, or 0 TAB reason when nothing answers. Asking
#: again inside one exec, not one exec per try: an exec costs the engine ~0.1 s of CPU,
#: and a fleet restarting 16 servers on 2 cores must not spend it polling.
_CLIENT = r"""
import sys, time, urllib.request, urllib.error
method, url, body, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + (float(sys.argv[5]) if len(sys.argv) > 5 else 0.0)
while True:
    req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, data = r.status, r.read()
        break
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
        break
    except Exception as e:
        status, data = 0, repr(e).encode()
        if time.monotonic() + 0.25 >= deadline:
            break
        time.sleep(0.25)
sys.stdout.write(str(status) + "\t" + data.decode("utf-8", "replace"))
"""


@dataclass(frozen=True)
class Response:
    status: int  # 0: no answer (refused, timed out, python missing)
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass(frozen=True)
class ComfyAPI:
    target: Target
    python: str
    port: int = DEFAULT_PORT

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 10.0,
        retry_for: float = 0.0,
    ) -> Response:
        """`retry_for`: seconds to keep asking while nothing answers (a server starting)."""
        url = f"http://127.0.0.1:{self.port}{path}"
        payload = "" if body is None else json.dumps(body)
        argv = [self.python, "-c", _CLIENT, method, url, payload, str(timeout)]
        if retry_for > 0:
            argv.append(f"{retry_for:.2f}")
        r = self.target.exec(argv, timeout=timeout + retry_for + 10)
        status, _, text = r.text.partition("\t")
        if r.exit_code != 0 or not status.isdigit():
            err = (r.stderr or r.stdout).decode("utf-8", "replace").strip()
            return Response(0, err[-500:] or f"exit status {r.exit_code}")
        return Response(int(status), text)

    def get(self, path: str, *, timeout: float = 10.0) -> Response:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, *, timeout: float = 10.0) -> Response:
        return self.request("POST", path, body, timeout=timeout)

    def system_stats(self, *, retry_for: float = 0.0) -> dict[str, Any] | None:
        r = self.request("GET", "/system_stats", timeout=5, retry_for=retry_for)
        return r.json() if r.ok else None
