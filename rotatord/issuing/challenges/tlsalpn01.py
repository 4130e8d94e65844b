"""TLS-ALPN-01 responder (RFC 8737, with RFC 8738 §6 for IP addresses) on one ``host:port``.

A validator connects, sends a ClientHello offering ALPN ``acme-tls/1`` with SNI set to the name
being validated (for an address, its reverse-DNS name ``1.0.0.127.in-addr.arpa``), and expects a
self-signed certificate for exactly that name (a dNSName, or an iPAddress SAN) carrying the
critical ``id-pe-acmeIdentifier`` extension: the DER OCTET STRING of SHA-256(key authorization).

How: one selector thread per socket; each connection's first bytes are buffered until the
ClientHello is complete, parsed by ``tlshello`` (so the ALPN offer and SNI are checked before
any certificate is chosen), then fed with the rest of the handshake through an ``ssl`` memory BIO.
A caller not offering ``acme-tls/1`` gets the ``no_application_protocol`` alert, an unknown or
missing SNI ``unrecognized_name``; neither ever sees a validation certificate. The handshake is
all there is: the connection closes once it completes.

Bounds, like the HTTP-01 listener (``rotatord.listener``): at most ``max_connections`` open (at
the cap the oldest connection that has sent nothing for ``EVICT_IDLE`` is dropped, otherwise
accepting pauses and callers wait in the backlog); the whole handshake must finish within
``request_deadline`` of accept (slow senders are cut off however their bytes arrive); a hello
larger than ``tlshello.MAX_HELLO`` is refused. No thread per connection.

The validation key is one throwaway ECDSA P-256 key per listener; certificates are built when a
name is first asked for and loaded through a memfd, never a file on disk.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import selectors
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rotatord.clock import Clock, SystemClock
from rotatord.core import identifiers
from rotatord.core.model import TlsAlpn01
from rotatord.issuing.challenges import tlshello
from rotatord.issuing.challenges.http01 import LINGER_SECONDS, StandalonePool
from rotatord.listener import BACKLOG, CAP_LOG_INTERVAL, EVICT_IDLE, Limits
from rotatord.observe.logging import get_logger

if TYPE_CHECKING:
    from rotatord.issuing.challenges.solver import ChallengeTask

log = get_logger("rotatord.issuing")

ACME_TLS_1 = b"acme-tls/1"
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# Validators connect a few times per challenge (Pebble three, Let's Encrypt up to five vantage
# points) and finish a handshake in milliseconds: the HTTP-01 listener's caps fit here too.
TLSALPN01_LIMITS = Limits(
    max_connections=256, request_deadline=10.0, write_deadline=10.0, max_request=tlshello.MAX_HELLO
)
ALERT_UNRECOGNIZED_NAME = 112
ALERT_NO_APPLICATION_PROTOCOL = 120
ALERT_DECODE_ERROR = 50


def _alert(code: int) -> bytes:
    """A fatal TLS alert record (legacy version 3.3, accepted by every TLS 1.2/1.3 client)."""
    return bytes([21, 3, 3, 0, 2, 2, code])


def validation_certificate(
    name: str, key_authorization: str, key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> x509.Certificate:
    """The self-signed acme-tls/1 certificate for ``name`` (a DNS name or an address)."""
    ip = identifiers.ip_of(name)
    san: x509.GeneralName = x509.IPAddress(ip) if ip is not None else x509.DNSName(name)
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rotatord acme-tls/1")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        # extnValue is the DER of an OCTET STRING holding the digest (RFC 8737 §3).
        .add_extension(
            x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )


def _server_context(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §4
    ctx.set_alpn_protocols([ACME_TLS_1.decode()])
    ctx.num_tickets = 0  # nothing to resume; no write after the handshake
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # ssl loads certificates only from a path: an anonymous memory file keeps the (throwaway)
    # key off every disk.
    fd = os.memfd_create("rotatord-tls-alpn", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return ctx


@dataclass
class _Conn:
    sock: socket.socket
    accepted: float
    deadline: float
    buf: bytearray
    tls: ssl.SSLObject | None = None
    incoming: ssl.MemoryBIO | None = None
    outgoing: ssl.MemoryBIO | None = None
    out: bytes = b""
    closing: bool = False  # close once ``out`` is written
    received: bool = False


class AlpnResponder:
    """A listening socket on ``host:port`` answering acme-tls/1 for the registered names.

    ``tokens`` maps an identifier (``example.test``, ``127.0.0.1``) to its key authorization;
    its interface matches what ``http01.StandalonePool`` shares between rotations.
    """

    def __init__(
        self, host: str, port: int, limits: Limits = TLSALPN01_LIMITS, clock: Clock | None = None
    ) -> None:
        self.tokens: dict[str, str] = {}
        self.tokens_lock = threading.Lock()
        self._limits = limits
        self._clock = clock or SystemClock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self._conns: dict[int, _Conn] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._accepting = False
        self.handshakes = 0
        self.refused = 0
        self.timed_out = 0
        self.evicted = 0
        self._cap_logged_at: float | None = None
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            self._wake_r.close()
            self._wake_w.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name=f"tlsalpn01-{port}", daemon=True)
        self._thread.start()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ names

    def _context_for(self, sni: str) -> ssl.SSLContext | None:
        with self.tokens_lock:
            current = {identifiers.tls_alpn_sni(n): (n, k) for n, k in self.tokens.items()}
        found = current.get(sni)
        if found is None:
            return None
        ctx = self._contexts.get(found)
        if ctx is None:
            live = set(current.values())
            for stale in [k for k in self._contexts if k not in live]:
                del self._contexts[stale]
            cert = validation_certificate(found[0], found[1], self._key, self._clock.now())
            ctx = self._contexts[found] = _server_context(cert, self._key)
        return ctx

    # ------------------------------------------------------------------ the selector thread

    def _run(self) -> None:
        try:
            while not self._stop:
                now = self._clock.monotonic()
                self._expire(now)
                self._set_accepting(self._may_accept(now))
                timeout = min((c.deadline for c in self._conns.values()), default=None)
                idle = [c.accepted for c in self._conns.values() if not c.received]
                if not self._accepting and idle:
                    wake = min(idle) + EVICT_IDLE  # paused at the cap: when one is evictable
                    timeout = wake if timeout is None else min(timeout, wake)
                wait = None if timeout is None else max(0.0, timeout - now)
                for key, events in self._selector.select(wait):
                    self._event(key, events)
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._set_accepting(False)
            self._sock.close()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _event(self, key: selectors.SelectorKey, events: int) -> None:
        if key.data is None:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
            return
        if key.data is self._sock:
            self._accept()
            return
        conn: _Conn = key.data
        try:
            if events & selectors.EVENT_WRITE:
                self._flush(conn)
            if events & selectors.EVENT_READ and id(conn) in self._conns:
                self._read(conn)
        except Exception:  # a bug costs one connection, never the loop
            log.exception("tlsalpn01_connection_failed", address=str(self.address))
            self._close(conn)

    def _may_accept(self, now: float) -> bool:
        if len(self._conns) < self._limits.max_connections:
            return True
        idle = [c for c in self._conns.values() if not c.received]
        victim = min(idle, key=lambda c: c.accepted, default=None)
        if victim is not None and now - victim.accepted >= EVICT_IDLE:
            self.evicted += 1
            self._close(victim)
            return True
        if self._cap_logged_at is None or now - self._cap_logged_at >= CAP_LOG_INTERVAL:
            self._cap_logged_at = now  # counts, once a minute at most, never per connection
            log.warning(
                "listener_connection_cap_reached",
                listener=f"tlsalpn01-{self.address[1]}",
                max_connections=self._limits.max_connections,
                evicted_idle=self.evicted,
                timed_out=self.timed_out,
                next_report_within_seconds=CAP_LOG_INTERVAL,
            )
        return False

    def _set_accepting(self, on: bool) -> None:
        if on != self._accepting:
            if on:
                self._selector.register(self._sock, selectors.EVENT_READ, self._sock)
            else:
                self._selector.unregister(self._sock)
            self._accepting = on

    def _accept(self) -> None:
        now = self._clock.monotonic()
        while len(self._conns) < self._limits.max_connections:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors or the caller left: try again next turn
            sock.setblocking(False)
            conn = _Conn(sock, now, now + self._limits.request_deadline, bytearray())
            self._conns[id(conn)] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self.timed_out += 1
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.received = True
        if conn.tls is None:
            conn.buf += data
            self._hello(conn)
        else:
            assert conn.incoming is not None
            conn.incoming.write(data)
            self._step(conn)

    def _hello(self, conn: _Conn) -> None:
        try:
            hello = tlshello.parse(bytes(conn.buf))
        except tlshello.HelloError:
            self._refuse(conn, ALERT_DECODE_ERROR)
            return
        if hello is None:
            return
        if ACME_TLS_1 not in hello.alpn:
            self._refuse(conn, ALERT_NO_APPLICATION_PROTOCOL)
            return
        ctx = self._context_for(hello.server_name) if hello.server_name else None
        if ctx is None:
            self._refuse(conn, ALERT_UNRECOGNIZED_NAME)
            return
        conn.incoming, conn.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn.tls = ctx.wrap_bio(conn.incoming, conn.outgoing, server_side=True)
        conn.incoming.write(bytes(conn.buf))
        conn.buf = bytearray()
        self._step(conn)

    def _step(self, conn: _Conn) -> None:
        assert conn.tls is not None and conn.outgoing is not None
        try:
            conn.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            conn.closing = True  # send the alert OpenSSL queued, then close
        else:
            self.handshakes += 1
            conn.closing = True
        conn.out += conn.outgoing.read()
        self._flush(conn)

    def _refuse(self, conn: _Conn, alert: int) -> None:
        self.refused += 1
        conn.out, conn.closing = conn.out + _alert(alert), True
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.out:
                conn.out = conn.out[conn.sock.send(conn.out) :]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if not conn.out and conn.closing:
            self._close(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        self._selector.modify(conn.sock, events, conn)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(id(conn), None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()


class TlsAlpnPool(StandalonePool):
    """One responder per (host, port), shared and reference counted across rotations."""

    def __init__(self, linger: float = LINGER_SECONDS, limits: Limits = TLSALPN01_LIMITS) -> None:
        super().__init__(linger, limits, start=AlpnResponder, what="TLS-ALPN-01")


class TlsAlpn01Solver:
    """TLS-ALPN-01 from rotatord's own responder: the identifier is registered with the shared
    listener for as long as its authorization is pending."""

    challenge_type = "tls-alpn-01"

    def __init__(self, pool: TlsAlpnPool, spec: TlsAlpn01) -> None:
        self._pool = pool
        self._spec = spec
        self._held: dict[str, contextlib.ExitStack] = {}

    def present(self, task: ChallengeTask) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(
            self._pool.serving(self._spec, {task.identifier: task.key_authorization})
        )
        self._held[task.token] = stack

    def wait_visible(self, task: ChallengeTask, deadline: float) -> None:
        return None  # answered from memory the moment it is registered

    def cleanup(self, task: ChallengeTask) -> None:
        stack = self._held.pop(task.token, None)
        if stack is not None:
            stack.close()
