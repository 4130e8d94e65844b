"""HTTP-01 responders: a shared standalone listener and a webroot writer.

The standalone listener is shared: every rotation that uses the same ``host:port`` registers its
tokens with one server, started on first use and stopped when the last user leaves, so concurrent
rotations never fight over port 80.

Rules: serve only ``/.well-known/acme-challenge/<token>`` for registered tokens; bind only the
configured address; never leave a token file behind.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from rotatord.core.errors import IssuanceError
from rotatord.core.model import Challenge, Http01Standalone, Http01Webroot
from rotatord.fsutil import atomic_write, ensure_tree

PREFIX = "/.well-known/acme-challenge/"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _ChallengeServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        token = self.path[len(PREFIX) :] if self.path.startswith(PREFIX) else None
        body = self.server.lookup(token) if token else None
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the stdlib's stderr access log; the audit log says what matters."""


class _ChallengeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.tokens: dict[str, str] = {}
        self.tokens_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def lookup(self, token: str) -> str | None:
        with self.tokens_lock:
            return self.tokens.get(token)


class StandalonePool:
    """One listener per (host, port), reference counted across concurrent rotations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[tuple[str, int], tuple[_ChallengeServer, threading.Thread, int]] = {}

    @contextlib.contextmanager
    def serving(self, spec: Http01Standalone, tokens: Mapping[str, str]) -> Iterator[None]:
        key = (spec.host, spec.port)
        with self._lock:
            entry = self._servers.get(key)
            if entry is None:
                try:
                    server = _ChallengeServer(spec.host, spec.port)
                except OSError as exc:
                    retry = exc.errno in (errno.EADDRINUSE, errno.EACCES)
                    raise IssuanceError(
                        f"cannot listen on {spec.host}:{spec.port} for HTTP-01: {exc.strerror}",
                        retryable=retry,
                    ) from exc
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"http01-{spec.port}",
                    daemon=True,
                )
                thread.start()
                entry = (server, thread, 0)
            server, thread, refs = entry
            self._servers[key] = (server, thread, refs + 1)
        with server.tokens_lock:
            server.tokens.update(tokens)
        try:
            yield
        finally:
            with server.tokens_lock:
                for t in tokens:
                    server.tokens.pop(t, None)
            with self._lock:
                server, thread, refs = self._servers[key]
                if refs <= 1:
                    del self._servers[key]
                    server.shutdown()
                    server.server_close()
                    thread.join()
                else:
                    self._servers[key] = (server, thread, refs - 1)


@contextlib.contextmanager
def webroot_serving(spec: Http01Webroot, tokens: Mapping[str, str]) -> Iterator[None]:
    directory = spec.webroot / ".well-known" / "acme-challenge"
    written: list[Path] = []
    try:
        ensure_tree(directory, 0o755)
        for token, body in tokens.items():
            path = directory / token
            atomic_write(path, body.encode(), 0o644)
            written.append(path)
    except OSError as exc:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        raise IssuanceError(
            f"cannot write HTTP-01 token under {directory}: {exc.strerror}", retryable=True
        ) from exc
    try:
        yield
    finally:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


class Http01Responder:
    """Serves key authorizations for one issuance by whichever means the service configured."""

    def __init__(self, pool: StandalonePool | None = None) -> None:
        self._pool = pool or StandalonePool()

    @contextlib.contextmanager
    def serving(self, challenge: Challenge, tokens: Mapping[str, str]) -> Iterator[None]:
        if isinstance(challenge, Http01Standalone):
            with self._pool.serving(challenge, tokens):
                yield
        else:
            with webroot_serving(challenge, tokens):
                yield
