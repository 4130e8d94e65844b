"""The metrics listener: ``GET /metrics`` (Prometheus text or OpenMetrics) on one address.

Off unless ``[metrics] listen`` is set. It binds exactly the configured address (no wildcard
fallback) and is bounded: at most ``max_connections`` connections at once (more are closed at
accept, so a flood cannot grow threads), a socket timeout per read, GET/HEAD only, no request
body read. Serving never touches the
daemon's state beyond what the registry's collectors read.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from rotatord.core.errors import RotatordError
from rotatord.observe.logging import get_logger

log = get_logger("rotatord.metrics")

SOCKET_TIMEOUT = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, limit: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.registry = registry
        self.slots = threading.BoundedSemaphore(limit)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Bound at accept: past the limit a connection is closed at once, so a flood of idle
        # connections cannot grow one thread each (each slot is held at most SOCKET_TIMEOUT
        # per read).
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT
    server_version = "rotatord"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            data = encoder(self.server.registry)
            self._send(200, data if body else b"", content_type, len(data))
        elif path == "/healthz":
            self._send(200, b"ok\n" if body else b"", "text/plain", 3)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, data: bytes, ctype: str, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics_request", line=format % args)


class MetricsServer:
    def __init__(self, listen: tuple[str, int], registry: CollectorRegistry, limit: int) -> None:
        self.listen = listen
        self._registry = registry
        self._limit = limit
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = self.listen
        try:
            self._server = _Server((host, port), self._registry, self._limit)
        except OSError as exc:
            raise RotatordError(f"metrics listener {host}:{port}: {exc.strerror}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics_listening", host=host, port=port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
