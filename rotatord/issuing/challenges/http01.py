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
from dataclasses import dataclass
from pathlib import Path

from rotatord.core.errors import IssuanceError
from rotatord.core.model import Challenge, Http01Standalone, Http01Webroot
from rotatord.fsutil import atomic_write, ensure_tree

PREFIX = "/.well-known/acme-challenge/"
LINGER_SECONDS = 5.0


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


@dataclass
class _Entry:
    server: _ChallengeServer
    thread: threading.Thread
    refs: int = 0
    linger: threading.Timer | None = None


class StandalonePool:
    """One listener per (host, port), reference counted across concurrent rotations.

    A listener whose last user left lingers for ``linger`` seconds before it closes, so a batch
    of rotations (start-up, ``rotate --all``) binds the port once instead of once per
    certificate; ``socketserver.shutdown`` alone costs up to one poll interval each time.
    """

    def __init__(self, linger: float = LINGER_SECONDS) -> None:
        self._lock = threading.Lock()
        self._linger = linger
        self._servers: dict[tuple[str, int], _Entry] = {}

    def _acquire(self, spec: Http01Standalone) -> _Entry:
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
                entry = _Entry(server, thread)
                self._servers[key] = entry
            if entry.linger is not None:
                entry.linger.cancel()
                entry.linger = None
            entry.refs += 1
            return entry

    def _release(self, spec: Http01Standalone, entry: _Entry) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.refs > 0:
                return
            if self._linger <= 0:
                self._close_locked((spec.host, spec.port))
                return
            timer = threading.Timer(self._linger, self._expire, args=((spec.host, spec.port),))
            timer.daemon = True
            entry.linger = timer
            timer.start()

    def _expire(self, key: tuple[str, int]) -> None:
        with self._lock:
            entry = self._servers.get(key)
            if entry is not None and entry.refs == 0:
                self._close_locked(key)

    def _close_locked(self, key: tuple[str, int]) -> None:
        # Closed while holding the lock, so nobody can try to bind the port in between.
        entry = self._servers.pop(key)
        if entry.linger is not None:
            entry.linger.cancel()
        entry.server.shutdown()
        entry.server.server_close()
        entry.thread.join()

    def close(self) -> None:
        """Close every listener now (daemon shutdown, end of a CLI run)."""
        with self._lock:
            for key in list(self._servers):
                self._close_locked(key)

    @contextlib.contextmanager
    def serving(self, spec: Http01Standalone, tokens: Mapping[str, str]) -> Iterator[None]:
        entry = self._acquire(spec)
        try:
            with entry.server.tokens_lock:
                entry.server.tokens.update(tokens)
            try:
                yield
            finally:
                with entry.server.tokens_lock:
                    for t in tokens:
                        entry.server.tokens.pop(t, None)
        finally:
            self._release(spec, entry)


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

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def serving(self, challenge: Challenge, tokens: Mapping[str, str]) -> Iterator[None]:
        if isinstance(challenge, Http01Standalone):
            with self._pool.serving(challenge, tokens):
                yield
        else:
            with webroot_serving(challenge, tokens):
                yield
