"""HTTP-01 responders: a shared standalone listener and a webroot writer.

The standalone listener is shared: every rotation that uses the same ``host:port`` registers its
tokens with one server, started on first use and stopped when the last user leaves, so concurrent
rotations never fight over port 80.

The listener is a ``rotatord.listener.Listener`` (one selector thread, no thread per connection,
capped connections, a deadline per request; see ``HTTP01_LIMITS``), answering HTTP/1.1 GET and
HEAD with ``Connection: close``.

Rules: serve only ``/.well-known/acme-challenge/<token>`` for registered tokens; bind only the
configured address; never leave a token file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rotatord.core.errors import IssuanceError
from rotatord.core.model import Http01Standalone, Http01Webroot
from rotatord.fsutil import atomic_write, ensure_tree
from rotatord.listener import BACKLOG, Limits, Listener

PREFIX = "/.well-known/acme-challenge/"
LINGER_SECONDS = 5.0
# The port faces the internet. A validation is one small GET sent at once (Pebble and Let's
# Encrypt validate from several vantage points concurrently, three to five connections per
# challenge), so 256 slots and 10 s are generous for the CA and bound what anyone else can hold:
# one selector thread, at most 256 descriptors, 8 KiB per connection.
HTTP01_LIMITS = Limits(
    max_connections=256, request_deadline=10.0, write_deadline=10.0, max_request=8 * 1024
)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_REFUSALS = {"too_large": 431, "timeout": 408, "busy": 503, "error": 500}


def _response(status: int, body: bytes = b"", *, head: bool = False, extra: str = "") -> bytes:
    """An HTTP/1.1 response that closes the connection (one request per connection keeps the
    state machine trivial; validators open a connection per attempt anyway)."""
    lines = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return lines.encode() + (b"" if head else body)


class _HttpProtocol:
    """Just enough HTTP/1.x for validators: GET or HEAD of a token, nothing else."""

    def __init__(self, server: _ChallengeServer) -> None:
        self._server = server

    def admit(self, sock: socket.socket) -> object:
        return None

    def complete(self, buf: bytearray, new_from: int) -> bool:
        return (
            buf.find(b"\r\n\r\n", max(0, new_from - 3)) >= 0
            or buf.find(b"\n\n", max(0, new_from - 1)) >= 0
        )

    def answer(self, request: bytes, context: object) -> bytes:
        parts = request.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(400)
        method, target = parts[0], parts[1].decode("ascii", "replace")
        if method not in (b"GET", b"HEAD"):
            return _response(405, extra="Allow: GET, HEAD\r\n")
        token = target[len(PREFIX) :] if target.startswith(PREFIX) else None
        body = self._server.lookup(token) if token else None
        if body is None:
            return _response(404, head=method == b"HEAD")
        return _response(200, body.encode(), head=method == b"HEAD")

    def refusal(self, why: str) -> bytes:
        return _response(_REFUSALS[why])


class _ChallengeServer:
    """A listening socket on ``host:port`` served by one ``Listener`` thread."""

    def __init__(self, host: str, port: int, limits: Limits = HTTP01_LIMITS) -> None:
        self.tokens: dict[str, str] = {}
        self.tokens_lock = threading.Lock()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        self.listener = Listener(sock, _HttpProtocol(self), limits, f"http01-{port}")
        self.listener.start()

    def lookup(self, token: str) -> str | None:
        with self.tokens_lock:
            return self.tokens.get(token)

    def close(self) -> None:
        self.listener.close()


class Address(Protocol):
    """Where a standalone responder listens (``Http01Standalone``, ``TlsAlpn01``)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


class Served(Protocol):
    """What the pool shares: a running server and the tokens it answers for."""

    tokens: dict[str, str]
    tokens_lock: threading.Lock

    def close(self) -> None: ...


@dataclass
class _Entry:
    server: Served
    refs: int = 0
    linger: threading.Timer | None = None


class StandalonePool:
    """One listener per (host, port), reference counted across concurrent rotations.

    A listener whose last user left lingers for ``linger`` seconds before it closes, so a batch
    of rotations (start-up, ``rotate --all``) binds the port once instead of once per
    certificate (binding and closing for each order would also churn the CA's connections).
    """

    def __init__(
        self,
        linger: float = LINGER_SECONDS,
        limits: Limits = HTTP01_LIMITS,
        *,
        start: Callable[[str, int, Limits], Served] = _ChallengeServer,
        what: str = "HTTP-01",
    ) -> None:
        self._lock = threading.Lock()
        self._linger = linger
        self._limits = limits
        self._start = start
        self._what = what
        self._servers: dict[tuple[str, int], _Entry] = {}

    def _acquire(self, spec: Address) -> _Entry:
        key = (spec.host, spec.port)
        with self._lock:
            entry = self._servers.get(key)
            if entry is None:
                try:
                    server = self._start(spec.host, spec.port, self._limits)
                except OSError as exc:
                    retry = exc.errno in (errno.EADDRINUSE, errno.EACCES)
                    raise IssuanceError(
                        f"cannot listen on {spec.host}:{spec.port} for {self._what}: "
                        f"{exc.strerror}",
                        retryable=retry,
                    ) from exc
                entry = _Entry(server)
                self._servers[key] = entry
            if entry.linger is not None:
                entry.linger.cancel()
                entry.linger = None
            entry.refs += 1
            return entry

    def _release(self, spec: Address, entry: _Entry) -> None:
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
        entry.server.close()

    def listener_for(self, spec: Http01Standalone) -> Listener | None:
        """The running listener for ``spec``'s address, if any (its counters, for tests)."""
        server = self.server_for(spec)
        return server.listener if isinstance(server, _ChallengeServer) else None

    def server_for(self, spec: Address) -> Served | None:
        """The running server for ``spec``'s address, if any."""
        with self._lock:
            entry = self._servers.get((spec.host, spec.port))
            return entry.server if entry is not None else None

    def close(self) -> None:
        """Close every listener now (daemon shutdown, end of a CLI run)."""
        with self._lock:
            for key in list(self._servers):
                self._close_locked(key)

    @contextlib.contextmanager
    def serving(self, spec: Address, tokens: Mapping[str, str]) -> Iterator[None]:
        entry = self._acquire(spec)
        try:
            with entry.server.tokens_lock:
                entry.server.tokens.update(tokens)
            try:
                yield
            finally:
                with entry.server.tokens_lock:
                    for t, v in tokens.items():
                        # Only our own value: another rotation may have registered the same key
                        # since (TLS-ALPN-01 keys by name, and two services may share one).
                        if entry.server.tokens.get(t) == v:
                            del entry.server.tokens[t]
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
