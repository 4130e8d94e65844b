"""An HTTPS test front for Pebble that adds ACME Renewal Information (ARI, RFC 9773).

Debian's Pebble 2.4.0 has no ARI: its directory has no ``renewalInfo``, it ignores the
``replaces`` field of new orders, and it never answers ``alreadyReplaced``. :class:`AriProxy`
sits in front of one running :class:`~pebble.runner.PebbleServer` so tests can exercise a client's
ARI code against a real ACME server:

- every request is forwarded to Pebble unchanged (method, path, body, headers, and in particular
  the client's ``Host``: Pebble builds the URLs it returns and checks the JWS ``url`` header from
  the request's ``Host``, so it hands out proxy URLs and signed requests validate as they are);
- ``GET /dir`` gains ``"renewalInfo": "https://127.0.0.1:<port>/renewal-info"``;
- ``GET /renewal-info/<certID>`` answers the window a test set with :meth:`AriProxy.set_window`
  (or :meth:`AriProxy.set_default_window`), 404 otherwise; every query is recorded;
- POSTs to the newOrder URL have their ``replaces`` value recorded, and
  :attr:`AriProxy.replaces_mode` can make orders carrying ``replaces`` fail with
  ``alreadyReplaced`` (409) or ``malformed`` (400);
- :attr:`AriProxy.before_forward`, a fault-injection hook, sees every request first and may make
  the proxy answer a ``serverInternal`` error, hang up without answering, or act at that exact
  moment (stop Pebble mid-order, sleep past the client's timeout).

It listens on 127.0.0.1 only, with Pebble's listener certificate (valid for ``127.0.0.1`` and
``localhost``), so a client that trusts ``pebble.ca_bundle`` trusts the proxy too.

For tests only. It is not a general-purpose or secure proxy: it does not verify JWS signatures
before recording, keeps everything in memory, serves whatever window a test sets (invalid ones
included), and reuses a throwaway listener key. Never point production clients at it, never
expose it beyond loopback, and never use it to front a real CA.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import json
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

from cryptography import x509

from pebble.runner import CERT_NAME, KEY_NAME, LOOPBACK, PebbleServer, StartStop

__all__ = ["DROP", "AfterForward", "AriProxy", "BeforeForward", "ReplacesMode", "cert_id"]

#: What the proxy does with a new order that carries ``replaces``.
ReplacesMode = Literal["accept", "already_replaced", "reject"]
#: A test hook giving the window for a certID without an explicit one (``None``: unknown).
DefaultWindow = Callable[[str], tuple[datetime, datetime] | None]
#: A test hook run for every request before the proxy handles it: ``(method, path)`` → ``None``
#: to go on as usual, an HTTP status to answer a ``serverInternal`` problem with that status
#: instead, or :data:`DROP` to close the connection without any answer (see
#: :attr:`AriProxy.before_forward`).
BeforeForward = Callable[[str, str], int | None]
#: What a :data:`BeforeForward` hook returns to make the proxy hang up without answering.
DROP: Final = 0
#: A test hook run after Pebble answered, before the answer is relayed: ``(method, path,
#: request body, status, response headers, response body)`` → the body to relay instead (e.g.
#: a rewritten certificate), or ``None`` to hang up without relaying (Pebble has acted on the
#: request, the client never hears of it). See :attr:`AriProxy.after_forward`.
AfterForward = Callable[[str, str, bytes, int, list[tuple[str, str]], bytes], bytes | None]

RENEWAL_INFO_PATH: Final = "/renewal-info"
DIRECTORY_PATH: Final = "/dir"
#: RFC 9773 §4.3 suggests clients poll about twice a day; six hours is the usual answer.
DEFAULT_RETRY_AFTER: Final = 21600
#: Timeout of one request to Pebble.
UPSTREAM_TIMEOUT: Final = 30.0
#: Idle timeout of a client connection (``stop()`` does not wait for it: it shuts sockets down).
CLIENT_TIMEOUT: Final = 60.0
#: Largest request body accepted (ACME requests are small).
MAX_BODY: Final = 1 << 20

ERROR_PREFIX: Final = "urn:ietf:params:acme:error:"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
JSON_CONTENT_TYPE: Final = "application/json"
_CERT_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

# Connection-level headers that must not be copied between the two connections (RFC 9110 §7.6.1),
# plus the framing headers the proxy sets itself.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1 certID: ``base64url(AKI keyIdentifier) "." base64url(serial DER bytes)``.

    The serial is the content octets of its DER INTEGER (two's complement, minimal, so a serial
    with the high bit set gets a leading zero byte); both parts are unpadded base64url.

    :raises ValueError: the certificate has no Authority Key Identifier with a keyIdentifier.
    """
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no Authority Key Identifier extension") from None
    if aki.key_identifier is None:
        raise ValueError("the Authority Key Identifier has no keyIdentifier")
    serial = cert.serial_number
    magnitude = serial if serial >= 0 else ~serial
    serial_der = serial.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_der)}"


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _problem(kind: str, detail: str, status: int) -> bytes:
    doc = {"type": ERROR_PREFIX + kind, "detail": detail, "status": status}
    return json.dumps(doc).encode()


def _order_replaces(body: bytes) -> str | None:
    """The ``replaces`` of a flattened-JWS newOrder body, or None (absent or unreadable)."""
    try:
        jws = json.loads(body)
        payload = json.loads(_b64url_decode(jws["payload"]))
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    if not isinstance(payload, dict):
        return None
    value = payload.get("replaces")
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)  # not a string: record what was sent


class _Upstream:
    """Where Pebble listens and how to reach it over verified TLS."""

    def __init__(self, directory_url: str, ca_bundle: Path) -> None:
        parts = urlsplit(directory_url)
        if parts.hostname != LOOPBACK or parts.port is None:
            raise ValueError(f"Pebble must listen on {LOOPBACK}: {directory_url}")
        self.host = LOOPBACK
        self.port = parts.port
        self.context = ssl.create_default_context(cafile=str(ca_bundle))

    def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request on a new connection; ``headers`` must contain ``Host``."""
        conn = http.client.HTTPSConnection(
            self.host, self.port, timeout=UPSTREAM_TIMEOUT, context=self.context
        )
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            with conn.getresponse() as resp:
                data = resp.read()
                return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        host = [("Host", f"{self.host}:{self.port}")]
        status, _headers, body = self.request("GET", path, host, None)
        if status != 200:
            raise RuntimeError(f"Pebble answered {status} to GET {path}")
        return json.loads(body)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer doing TLS per connection (in the handler thread, not in accept)."""

    daemon_threads = True
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, proxy: AriProxy, context: ssl.SSLContext) -> None:
        self.proxy = proxy
        self.ssl_context = context
        self._conn_lock = threading.Lock()
        self._conns: set[ssl.SSLSocket] = set()
        self._closing = False
        super().__init__((LOOPBACK, 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve a fully qualified name for the address; skip it.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = LOOPBACK, self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        raw: socket.socket = request
        raw.settimeout(CLIENT_TIMEOUT)
        conn = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            with self._conn_lock:
                if self._closing:
                    return
                self._conns.add(conn)
            try:
                conn.do_handshake()
            except OSError:  # ssl.SSLError included
                return  # a client that gave up, or a scanner: nothing to answer
            _Handler(conn, client_address, self)
        finally:
            with self._conn_lock:
                self._conns.discard(conn)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Peers hanging up (and stop() shutting sockets down) are normal here; anything else is a
        # bug in the proxy and should be loud.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Refuse new connections and wake handler threads blocked reading idle ones."""
        with self._conn_lock:
            self._closing = True
            conns = list(self._conns)
        for conn in conns:
            # socket.socket.shutdown, not SSLSocket.shutdown: the latter also drops the TLS state
            # under the feet of the thread reading from it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """One client connection; every method goes through :meth:`_dispatch`."""

    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, so every response carries Content-Length

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests assert on recorded requests, not on stderr

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        proxy = self.server.proxy
        path = urlsplit(self.path).path
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send_problem(411, "malformed", "send a Content-Length, not a chunked body")
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send_problem(400, "malformed", "bad Content-Length")
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        if self._intercepted(path):
            return

        if path == RENEWAL_INFO_PATH or path.startswith(RENEWAL_INFO_PATH + "/"):
            self._renewal_info(path.removeprefix(RENEWAL_INFO_PATH).removeprefix("/"))
            return
        if self.command == "POST" and path == proxy.new_order_path:
            replaces = _order_replaces(body)
            mode = proxy._record_order(replaces)
            if replaces is not None and mode == "already_replaced":
                self._send_problem(
                    409,
                    "alreadyReplaced",
                    f"the certificate {replaces} has already been replaced (AriProxy test mode)",
                    nonce=True,
                )
                return
            if replaces is not None and mode == "reject":
                self._send_problem(
                    400,
                    "malformed",
                    f"replaces {replaces!r} is not acceptable (AriProxy test mode)",
                    nonce=True,
                )
                return
        self._forward(body if length or self.command == "POST" else None, path)

    def _intercepted(self, path: str) -> bool:
        """Run the test hook :attr:`AriProxy.before_forward`; True when it answered instead."""
        hook = self.server.proxy.before_forward
        if hook is None:
            return False
        verdict = hook(self.command, path)
        if verdict is None:
            return False
        if verdict == DROP:
            self.close_connection = True  # finish_request closes the socket: the peer sees EOF
            return True
        self._send_problem(
            verdict, "serverInternal", f"AriProxy test hook answered {verdict}", nonce=True
        )
        return True

    # -- responses ---------------------------------------------------------------------------

    def _forward(self, body: bytes | None, path: str) -> None:
        proxy = self.server.proxy
        is_directory = self.command == "GET" and path == DIRECTORY_PATH
        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in _HOP_BY_HOP
            and not (is_directory and name.lower() == "accept-encoding")  # we edit the body
        ]
        if self.headers.get("Host") is None:
            headers.append(("Host", f"{LOOPBACK}:{proxy.port}"))
        try:
            status, resp_headers, data = proxy._require_upstream().request(
                self.command, self.path, headers, body
            )
        except (OSError, http.client.HTTPException) as exc:
            self._send_problem(502, "serverInternal", f"AriProxy cannot reach Pebble: {exc}")
            return
        out_headers = [(n, v) for n, v in resp_headers if n.lower() not in _HOP_BY_HOP]
        if is_directory and status == 200:
            directory = json.loads(data)
            directory["renewalInfo"] = proxy.renewal_info_url
            if proxy.profiles is not None:
                directory.setdefault("meta", {})["profiles"] = dict(proxy.profiles)
            data = json.dumps(directory, indent=2).encode()
        hook = proxy.after_forward
        if hook is not None:
            edited = hook(self.command, path, body or b"", status, out_headers, data)
            if edited is None:
                self.close_connection = True
                return
            data = edited
        self.send_response_only(status)
        for name, value in out_headers:
            self.send_header(name, value)
        if self.command == "HEAD":
            upstream_length = next(
                (v for n, v in resp_headers if n.lower() == "content-length"), None
            )
            if upstream_length is not None:
                self.send_header("Content-Length", upstream_length)
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _renewal_info(self, requested: str) -> None:
        proxy = self.server.proxy
        if self.command not in ("GET", "HEAD"):
            self._send_problem(405, "malformed", "renewalInfo is read with GET")
            return
        proxy._record_query(requested)
        if not _CERT_ID_RE.fullmatch(requested):
            self._send_problem(400, "malformed", f"not a certID: {requested!r}")
            return
        window = proxy._window_for(requested)
        if window is None:
            self._send_problem(404, "malformed", f"no renewal information for {requested}")
            return
        start, end, explanation_url, retry_after = window
        doc: dict[str, Any] = {"suggestedWindow": {"start": _rfc3339(start), "end": _rfc3339(end)}}
        if explanation_url is not None:
            doc["explanationURL"] = explanation_url
        self._send_local(
            200, JSON_CONTENT_TYPE, json.dumps(doc).encode(), [("Retry-After", str(retry_after))]
        )

    def _send_problem(self, status: int, kind: str, detail: str, *, nonce: bool = False) -> None:
        extra = [("Link", f'<{self.server.proxy.directory_url}>;rel="index"')]
        if nonce:
            fresh = self.server.proxy._fresh_nonce()
            if fresh is not None:
                extra.append(("Replay-Nonce", fresh))
        self._send_local(status, PROBLEM_CONTENT_TYPE, _problem(kind, detail, status), extra)

    def _send_local(
        self, status: int, content_type: str, body: bytes, extra: list[tuple[str, str]]
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class AriProxy(StartStop):
    """An HTTPS front for a running :class:`PebbleServer` that adds RFC 9773 ARI; tests only.

    A context manager (``with AriProxy(pebble) as proxy: ...``) or :meth:`start`/:meth:`stop`.
    Point the client at :attr:`directory_url` and let it trust :attr:`ca_bundle`.

    Test controls: :meth:`set_window`, :meth:`set_default_window`, :attr:`replaces_mode`,
    :attr:`before_forward` (fault injection: answer an error, hang up, or act, e.g. stop Pebble,
    at a chosen request).
    Records (appended under a lock, safe to read from the test thread): :attr:`ari_queries` (the
    certID of every renewalInfo GET, known or not) and :attr:`replaces_seen` (``replaces`` of
    every newOrder POST, ``None`` when absent; a client's badNonce retry is a second POST and
    is recorded again).

    :param pebble: a started Pebble; the proxy forwards to its ACME listener and reuses its
        listener certificate and CA bundle.
    """

    def __init__(self, pebble: PebbleServer) -> None:
        self.pebble = pebble
        self.ari_queries: list[str] = []
        self.replaces_seen: list[str | None] = []
        self._replaces_mode: ReplacesMode = "accept"
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[datetime, datetime, str | None, int]] = {}
        self._default_window: DefaultWindow | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._upstream: _Upstream | None = None
        self._new_order_path = ""
        self._new_nonce_path = ""
        #: Fault-injection hook, ``None`` by default (see :data:`BeforeForward`). It runs in a
        #: handler thread for every request, ARI ones included, before anything else is done;
        #: a test may block in it (e.g. to stop Pebble) or sleep in it (to make a client time out).
        self.before_forward: BeforeForward | None = None
        #: Test hook after Pebble answered (see :data:`AfterForward`), ``None`` by default.
        self.after_forward: AfterForward | None = None
        #: ``meta.profiles`` (draft-ietf-acme-profiles) to advertise in the directory, or None.
        self.profiles: dict[str, str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Read Pebble's directory, bind a free 127.0.0.1 port and start serving.

        :raises RuntimeError: already started, or Pebble does not answer its directory.
        """
        if self._server is not None:
            raise RuntimeError("AriProxy is already running")
        upstream = _Upstream(self.pebble.directory_url, self.pebble.ca_bundle)
        directory = upstream.get_json(urlsplit(self.pebble.directory_url).path)
        self._new_order_path = urlsplit(directory["newOrder"]).path
        self._new_nonce_path = urlsplit(directory["newNonce"]).path
        self._upstream = upstream

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.pebble.workdir / CERT_NAME, self.pebble.workdir / KEY_NAME)
        server = _Server(self, context)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"AriProxy:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close client connections, and join the server and handler threads.

        Idempotent.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.close_connections()
        server.server_close()  # closes the listening socket, joins handler threads
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The 127.0.0.1 port the proxy listens on."""
        if self._server is None:
            raise RuntimeError("AriProxy is not running; call start() first")
        return self._server.server_port

    @property
    def directory_url(self) -> str:
        """ACME directory through the proxy, ``https://127.0.0.1:<port>/dir``."""
        return f"https://{LOOPBACK}:{self.port}{DIRECTORY_PATH}"

    @property
    def renewal_info_url(self) -> str:
        """The ``renewalInfo`` base URL advertised in the directory."""
        return f"https://{LOOPBACK}:{self.port}{RENEWAL_INFO_PATH}"

    @property
    def ca_bundle(self) -> Path:
        """CA file clients must trust for the proxy: the same as Pebble's listener CA."""
        return self.pebble.ca_bundle

    @property
    def new_order_path(self) -> str:
        """Path of Pebble's newOrder endpoint (e.g. ``/order-plz``)."""
        return self._new_order_path

    def _require_upstream(self) -> _Upstream:
        if self._upstream is None:
            raise RuntimeError("AriProxy is not running; call start() first")
        return self._upstream

    # -- test controls -----------------------------------------------------------------------

    @property
    def replaces_mode(self) -> ReplacesMode:
        """What happens to a new order carrying ``replaces`` (orders without it always pass).

        ``"accept"`` forwards it (Pebble 2.4.0 drops the field); ``"already_replaced"`` answers
        409 ``alreadyReplaced``; ``"reject"`` answers 400 ``malformed``. Both errors carry a fresh
        ``Replay-Nonce`` from Pebble so the client can go on.
        """
        return self._replaces_mode

    @replaces_mode.setter
    def replaces_mode(self, mode: ReplacesMode) -> None:
        if mode not in get_args(ReplacesMode):
            raise ValueError(f"replaces_mode must be one of {get_args(ReplacesMode)}: {mode!r}")
        self._replaces_mode = mode

    def set_window(
        self,
        cert_id: str,
        start: datetime,
        end: datetime,
        *,
        explanation_url: str | None = None,
        retry_after: int = DEFAULT_RETRY_AFTER,
    ) -> None:
        """Serve ``suggestedWindow`` ``start``..``end`` for ``cert_id`` (see :func:`cert_id`).

        The window is not checked (``end`` before ``start`` is served as given), so tests can
        probe clients with invalid answers.

        :raises ValueError: a naive datetime, or a negative ``retry_after``.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        if retry_after < 0:
            raise ValueError("retry_after must not be negative")
        with self._lock:
            self._windows[cert_id] = (start, end, explanation_url, retry_after)

    def set_default_window(self, fn: DefaultWindow | None) -> None:
        """Answer certIDs without a :meth:`set_window` entry with ``fn(cert_id)``.

        ``fn`` returns ``(start, end)`` (aware datetimes; served with the default Retry-After) or
        ``None`` for 404. ``None`` removes the hook. ``fn`` runs in a handler thread.
        """
        with self._lock:
            self._default_window = fn

    # -- used by the handler threads ---------------------------------------------------------

    def _window_for(self, requested: str) -> tuple[datetime, datetime, str | None, int] | None:
        """The window to serve for ``requested``, or None for 404."""
        with self._lock:
            window = self._windows.get(requested)
            default = self._default_window
        if window is not None:
            return window
        if default is None:
            return None
        found = default(requested)
        if found is None:
            return None
        return found[0], found[1], None, DEFAULT_RETRY_AFTER

    def _record_query(self, requested: str) -> None:
        with self._lock:
            self.ari_queries.append(requested)

    def _record_order(self, replaces: str | None) -> ReplacesMode:
        """Record a newOrder's ``replaces`` and return the mode to apply to it."""
        with self._lock:
            self.replaces_seen.append(replaces)
            return self._replaces_mode

    def _fresh_nonce(self) -> str | None:
        """A nonce from Pebble's newNonce (HEAD), or None when Pebble gives none."""
        host = [("Host", f"{LOOPBACK}:{self.port}")]
        try:
            _status, headers, _body = self._require_upstream().request(
                "HEAD", self._new_nonce_path, host, None
            )
        except (OSError, http.client.HTTPException):
            return None
        return next((v for n, v in headers if n.lower() == "replay-nonce"), None)
