"""A hostile HTTPS test front for Pebble: answers as a CA that lies, floods or stalls would.

:class:`HostileFront` sits between an ACME client and one running
:class:`~pebble.runner.PebbleServer`, like :class:`~pebble.ari_proxy.AriProxy`: every request is
forwarded unchanged (the client's ``Host`` included, so Pebble hands out front URLs and signed
requests validate). :attr:`HostileFront.mode` picks one fault at a time:

- ``"pass"``: pass-through;
- ``"foreign_leaf"``: the certificate download is replaced by a leaf for the same public key,
  names and validity, signed by an unrelated CA (:func:`make_foreign_ca`), alone;
- ``"foreign_leaf_with_ca"``: the same leaf followed by the foreign intermediate and root;
- ``"huge_body"``: the real chain followed by 200 MB of junk, with no Content-Length (the body
  ends when the connection does), streamed in 1 MiB pieces until the client hangs up;
- ``"trickle"``: the real chain at 1 byte per second;
- ``"trickle_headers"``: the status line and headers of that answer at 1 byte per second;
- ``"huge_url"``: the directory's ``newOrder`` is an 8 MiB URL;
- ``"off_host_url"``: the directory's ``newOrder`` is ``http://`` on another host;
- ``"garbage_pem"``: the certificate download is PEM armour around junk.

Each fault served is appended to :attr:`HostileFront.served`. It listens on 127.0.0.1 only, on a
free port, with Pebble's listener certificate (trust ``pebble.ca_bundle``).

For tests only: not a secure or general proxy; never expose it beyond loopback.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pebble.runner import CERT_NAME, KEY_NAME, LOOPBACK, PebbleServer, StartStop

__all__ = ["ForeignCA", "HostileFront", "Mode", "forge_leaf", "make_foreign_ca"]

Mode = Literal[
    "pass",
    "foreign_leaf",
    "foreign_leaf_with_ca",
    "huge_body",
    "trickle",
    "trickle_headers",
    "huge_url",
    "off_host_url",
    "garbage_pem",
]
PEM_CHAIN: Final = "application/pem-certificate-chain"
HUGE_BODY_BYTES: Final = 200 * 1000 * 1000
HUGE_URL_BYTES: Final = 8 << 20
OFF_HOST_URL: Final = "http://203.0.113.7/order-plz"  # TEST-NET-3: never routed
GARBAGE_PEM: Final = (
    b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU@@@\n-----END CERTIFICATE-----\n"
)
MAX_REQUEST_BODY: Final = 1 << 20
UPSTREAM_TIMEOUT: Final = 30.0
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "content-length"}
)


# --------------------------------------------------------------------------- a foreign CA


@dataclass(frozen=True)
class ForeignCA:
    """An unrelated CA (root and intermediate, RFC 5280 / CA/B-shaped) that signs forged leaves."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate


def _ca(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, signer: Any
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def make_foreign_ca(name: str = "Foreign Test CA") -> ForeignCA:
    """A fresh root and intermediate that nobody trusts."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca(f"{name} root", root_key, None, root_key)
    key = ec.generate_private_key(ec.SECP256R1())
    return ForeignCA(root_key, root, key, _ca(f"{name} intermediate", key, root, root_key))


def forge_leaf(
    ca: ForeignCA,
    public_key: Any,
    names: list[str],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A server leaf for ``public_key`` and ``names`` signed by ``ca``'s intermediate."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.intermediate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def _forged_chain(ca: ForeignCA, real: bytes, with_ca: bool) -> bytes:
    leaf = x509.load_pem_x509_certificates(real)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    forged = forge_leaf(
        ca,
        leaf.public_key(),
        [str(n) for n in san.get_values_for_type(x509.DNSName)],
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
    )
    certs = [forged, *((ca.intermediate, ca.root) if with_ca else ())]
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


# --------------------------------------------------------------------------- the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() wakes faulting handlers through the stop event

    def __init__(self, front: HostileFront, context: ssl.SSLContext) -> None:
        self.front = front
        self.ssl_context = context
        super().__init__((LOOPBACK, 0), _Handler)

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = LOOPBACK, self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        raw: socket.socket = request
        raw.settimeout(60.0)
        try:
            conn = self.ssl_context.wrap_socket(raw, server_side=True)
        except OSError:
            return
        try:
            _Handler(conn, client_address, self)
        except OSError:
            pass  # the client hung up: the point of most faults
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        front = self.server.front
        length = int(self.headers.get("Content-Length", "0") or 0)
        if not 0 <= length <= MAX_REQUEST_BODY:
            self.send_error(400)
            return
        body = self.rfile.read(length) if length else None
        if body is None and self.command == "POST":
            body = b""
        headers = [(n, v) for n, v in self.headers.items() if n.lower() not in _HOP_BY_HOP]
        headers = [(n, v) for n, v in headers if n.lower() != "accept-encoding"]
        try:
            status, resp_headers, data = front._upstream(self.command, self.path, headers, body)
        except (OSError, http.client.HTTPException):
            self.send_error(502)
            return
        out = [(n, v) for n, v in resp_headers if n.lower() not in _HOP_BY_HOP]
        mode = front.mode
        path = urlsplit(self.path).path
        ctype = next((v for n, v in resp_headers if n.lower() == "content-type"), "")
        if self.command == "GET" and path == "/dir" and mode in ("huge_url", "off_host_url"):
            directory = json.loads(data)
            if mode == "huge_url":
                directory["newOrder"] = f"https://{LOOPBACK}:{front.port}/" + "o" * HUGE_URL_BYTES
            else:
                directory["newOrder"] = OFF_HOST_URL
            front._served(mode, path)
            self._send(status, out, json.dumps(directory).encode())
            return
        if status == 200 and ctype.startswith(PEM_CHAIN) and mode != "pass":
            front._served(mode, path)
            if mode in ("foreign_leaf", "foreign_leaf_with_ca"):
                data = _forged_chain(front.foreign_ca, data, mode == "foreign_leaf_with_ca")
            elif mode == "garbage_pem":
                data = GARBAGE_PEM
            elif mode == "huge_body":
                self._flood(status, out, data)
                return
            elif mode == "trickle":
                self._trickle(status, out, data)
                return
            elif mode == "trickle_headers":
                self._trickle_headers(status, out, data)
                return
        self._send(status, out, data)

    def _head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self._head(status, headers)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _flood(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        """The real chain, then junk until HUGE_BODY_BYTES or the client hangs up; the body is
        delimited by closing the connection (no Content-Length)."""
        self._head(status, headers)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(data)
        junk = b"J" * (1 << 20)
        sent = len(data)
        stop = self.server.front._stop
        while sent < HUGE_BODY_BYTES and not stop.is_set():
            self.wfile.write(junk)
            sent += len(junk)

    def _trickle(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        """The real chain at 1 byte per second (until done, the client hangs up, or stop())."""
        self._head(status, headers)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        stop = self.server.front._stop
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            if stop.wait(1.0):
                return

    def _trickle_headers(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        """The status line and headers at 1 byte per second, then the body."""
        lines = [f"HTTP/1.1 {status} OK", *(f"{n}: {v}" for n, v in headers)]
        head = ("\r\n".join([*lines, f"Content-Length: {len(data)}"]) + "\r\n\r\n").encode()
        stop = self.server.front._stop
        for i in range(len(head)):
            self.wfile.write(head[i : i + 1])
            if stop.wait(1.0):
                return
        self.wfile.write(data)


class HostileFront(StartStop):
    """An HTTPS front for a running :class:`PebbleServer` that serves one fault at a time."""

    def __init__(self, pebble: PebbleServer) -> None:
        self.pebble = pebble
        self.foreign_ca = make_foreign_ca()
        #: ``(mode, path)`` of every faulty answer served.
        self.served: list[tuple[str, str]] = []
        self._mode: Mode = "pass"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        parts = urlsplit(pebble.directory_url)
        self._upstream_port = parts.port or 443
        self._upstream_ctx = ssl.create_default_context(cafile=str(pebble.ca_bundle))

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in get_args(Mode):
            raise ValueError(f"mode must be one of {get_args(Mode)}: {mode!r}")
        with self._lock:
            self._mode = mode

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HostileFront is already running")
        self._stop.clear()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pebble.workdir / CERT_NAME, self.pebble.workdir / KEY_NAME)
        self._server = _Server(self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"HostileFront:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HostileFront is not running; call start() first")
        return self._server.server_port

    @property
    def directory_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/dir"

    @property
    def ca_bundle(self) -> Path:
        """CA file clients must trust for the front: Pebble's listener CA."""
        return self.pebble.ca_bundle

    def _served(self, mode: str, path: str) -> None:
        with self._lock:
            self.served.append((mode, path))

    def _upstream(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPSConnection(
            LOOPBACK, self._upstream_port, timeout=UPSTREAM_TIMEOUT, context=self._upstream_ctx
        )
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            with conn.getresponse() as resp:
                return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()
