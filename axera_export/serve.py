"""``comfyui-clipwan serve``: the interrogation service over HTTP with the standard library, no ComfyUI, no torch.

A Raspberry Pi with an AX650N card (or the board itself) runs this beside Stable Diffusion. ``http.server``'s
threading server carries bytes to ``service.InterrogationService`` (the same handler ComfyUI's routes use);
the service serialises the accelerator and answers 503 when its queue is full. Loopback by default: the API
has no authentication, so listening on other interfaces is the user's explicit choice (``--host 0.0.0.0``).

Endpoints: ``POST /sdapi/v1/interrogate``, ``POST /sdapi/v1/interrogate/structured``, ``GET /health``.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .interrogate import size_text
from .service import ROUTES, InterrogationService, Reply

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860  # Automatic1111's port: clients' defaults reach us unchanged
HEALTH_PATH = "/health"

log = logging.getLogger("comfyui_clipwan.serve")


def _handler(service: InterrogationService):
    class Handler(BaseHTTPRequestHandler):
        server_version = "comfyui-clipwan"
        protocol_version = "HTTP/1.1"  # keep-alive: clients such as requests.Session reuse the connection

        def _send(self, reply: Reply) -> None:
            body = json.dumps(reply.payload).encode("utf-8")
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, close: bool = False) -> None:
            if close:
                self.close_connection = True
            self._send(Reply(status, {"error": message, "detail": message},
                             {"Connection": "close"} if close else {}))

        def do_POST(self):  # noqa: N802 (http.server's naming)
            kind = ROUTES.get(self.path.split("?", 1)[0].rstrip("/"))
            if kind is None:
                return self._error(404, f"no such endpoint {self.path!r}; POST {' or '.join(ROUTES)}", close=True)
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._error(411, "chunked uploads are not supported: send Content-Length", close=True)
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._error(411, "Content-Length is required", close=True)
            limit = service.config.max_body_bytes
            if length > limit:  # refused before reading it; the connection is closed, not drained
                return self._error(413, f"request body is larger than {size_text(limit)}", close=True)
            self._send(service.respond(kind, self.rfile.read(length)))

        def do_GET(self):  # noqa: N802
            if self.path.split("?", 1)[0].rstrip("/") in (HEALTH_PATH, ""):
                return self._send(Reply(200, service.health()))
            if self.path.split("?", 1)[0].rstrip("/") in ROUTES:
                return self._error(405, f"{self.path} takes POST with a JSON body")
            return self._error(404, f"no such endpoint {self.path!r}")

        def log_message(self, fmt, *args):  # through logging, not stderr prints
            log.debug("%s %s", self.address_string(), fmt % args)

    return Handler


class Server:
    """The HTTP server around a service; ``start()`` in a thread (tests, benchmarks) or ``serve_forever()``."""

    def __init__(self, service: InterrogationService, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.service = service
        self.httpd = ThreadingHTTPServer((host, port), _handler(service))
        self.httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="clipwan-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
