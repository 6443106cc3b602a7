"""The HTTP API qpatch and users' scripts talk to, with upstream's routes and JSON shapes.

    GET  /system_stats      system (versions, RAM, argv) and devices (VRAM from torch)
    POST /prompt            queue an API-format workflow; 400 with node_errors when invalid
    GET  /prompt            {"exec_info": {"queue_remaining": n}}
    GET  /history[/<id>]    finished prompts: outputs, status.completed, messages
    GET  /queue             queue_running, queue_pending
    POST /free              {"unload_models", "free_memory"}: acted on between prompts
    POST /interrupt         accepted (the stand-in's nodes are short)
    GET  /object_info[/<c>] every node class's inputs and outputs
    GET  /                  the frontend's index.html from --front-end-root, or a stub

Every route also answers under /api, as upstream's do. The server is the standard
library's threading HTTP server: qpatch depends on the routes, not on aiohttp.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import ssl
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import comfy.model_management as mm
import comfyui_version
import execution
import nodes
import torch
from comfy.cli_args import args

FRONTEND_VERSION = "1.38.13"
TEMPLATES_VERSION = "0.8.43"


def system_stats() -> dict[str, Any]:
    device = mm.get_torch_device()
    vram_total, torch_vram_total = mm.get_total_memory(device, torch_total_too=True)
    vram_free, torch_vram_free = mm.get_free_memory(device, torch_free_too=True)
    return {
        "system": {
            "os": os.name,
            "ram_total": mm.ram_total(),
            "ram_free": mm.ram_free(),
            "comfyui_version": comfyui_version.__version__,
            "required_frontend_version": FRONTEND_VERSION,
            "installed_templates_version": TEMPLATES_VERSION,
            "required_templates_version": TEMPLATES_VERSION,
            "python_version": sys.version,
            "pytorch_version": torch.version.__version__,
            "embedded_python": os.path.split(os.path.split(sys.executable)[0])[1]
            == "python_embeded",
            "argv": sys.argv,
        },
        "devices": [
            {
                "name": mm.get_torch_device_name(device),
                "type": device.type,
                "index": device.index,
                "vram_total": vram_total,
                "vram_free": vram_free,
                "torch_vram_total": torch_vram_total,
                "torch_vram_free": torch_vram_free,
            }
        ],
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "ComfyUI-standin"
    queue: execution.PromptQueue  # set on the class by serve()

    def log_message(self, format: str, *fmt_args: Any) -> None:  # noqa: A002 - stdlib's name
        logging.debug("%s - %s", self.address_string(), format % fmt_args)

    # -- plumbing ----------------------------------------------------------------------

    def _route(self) -> str:
        path = self.path.split("?", 1)[0]
        return path[4:] if path.startswith("/api/") else path

    def _send(self, status: int, body: Any = None, content_type: str = "application/json"):
        data = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if args.enable_cors_header:
            self.send_header("Access-Control-Allow-Origin", args.enable_cors_header)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw.strip() else {}

    # -- routes ------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        route = self._route()
        if route == "/system_stats":
            return self._send(200, system_stats())
        if route == "/prompt":
            return self._send(200, {"exec_info": {"queue_remaining": self.queue.remaining()}})
        if route == "/queue":
            return self._send(200, self.queue.snapshot())
        if route == "/history":
            with self.queue.cond:
                return self._send(200, dict(self.queue.history))
        if route.startswith("/history/"):
            prompt_id = route[len("/history/") :]
            with self.queue.cond:
                entry = self.queue.history.get(prompt_id)
            return self._send(200, {prompt_id: entry} if entry else {})
        if route == "/object_info":
            return self._send(
                200, {name: nodes.node_info(name) for name in nodes.NODE_CLASS_MAPPINGS}
            )
        if route.startswith("/object_info/"):
            name = route[len("/object_info/") :]
            if name in nodes.NODE_CLASS_MAPPINGS:
                return self._send(200, {name: nodes.node_info(name)})
            return self._send(200, {})
        if route == "/embeddings":
            return self._send(200, [])
        if route in ("/", "/index.html"):
            return self._send(200, _index_html(), "text/html")
        return self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        route = self._route()
        try:
            body = self._body()
        except ValueError:
            return self._send(400, {"error": "invalid JSON"})
        if route == "/prompt":
            return self._post_prompt(body)
        if route == "/free":
            self.queue.request_free(
                bool(body.get("unload_models", False)), bool(body.get("free_memory", False))
            )
            return self._send(200)
        if route == "/interrupt":
            return self._send(200)
        if route == "/queue":
            if body.get("clear"):
                with self.queue.cond:
                    self.queue.pending.clear()
            return self._send(200)
        return self._send(404, {"error": "not found"})

    def _post_prompt(self, body: Any) -> None:
        if not isinstance(body, dict) or "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "",
                "extra_info": {},
            }
            return self._send(400, {"error": error, "node_errors": {}})
        prompt = body["prompt"]
        valid, error, outputs, node_errors = execution.validate_prompt(prompt)
        if not valid:
            logging.warning("invalid prompt: %s", error["message"] if error else node_errors)
            return self._send(400, {"error": error, "node_errors": node_errors})
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        number = self.queue.put(prompt_id, prompt, outputs)
        logging.info("got prompt")
        return self._send(200, {"prompt_id": prompt_id, "number": number, "node_errors": {}})


def _index_html() -> bytes:
    if args.front_end_root:
        path = os.path.join(args.front_end_root, "index.html")
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
    return b"<!doctype html><title>ComfyUI (qpatch stand-in)</title>\n"


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def serve(queue: execution.PromptQueue) -> None:
    """Listen on every address of --listen; block until interrupted."""
    Handler.queue = queue
    servers: list[ThreadingHTTPServer] = []
    for address in [a.strip() for a in args.listen.split(",") if a.strip()]:
        cls = _V6Server if ":" in address else ThreadingHTTPServer
        try:
            servers.append(cls((address, args.port), Handler))
        except OSError as e:
            logging.warning("could not listen on %s:%d: %s", address, args.port, e)
    if not servers:
        raise SystemExit(f"could not listen on {args.listen} port {args.port}")
    scheme = "http"
    if args.tls_keyfile and args.tls_certfile:
        # As upstream: a missing or bad key or certificate ends the start with a traceback.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile=args.tls_certfile, keyfile=args.tls_keyfile)
        for s in servers:
            s.socket = context.wrap_socket(s.socket, server_side=True)
        scheme = "https"
    for s in servers:
        s.daemon_threads = True
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    logging.info("Starting server\n")
    shown = servers[0].server_address[0]
    shown = "127.0.0.1" if shown in ("0.0.0.0", "::") else shown
    logging.info("To see the GUI go to: %s://%s:%d", scheme, shown, args.port)
    logging.info("Platform: %s", platform.platform())
    servers[0].serve_forever()
