"""Helpers for the control-loop acceptance tests (``tests/test_loop_e2e.py``).

Black box only: nothing here imports ``rotatord``. The daemon is the real ``rotatord run``
(``tests/daemon_harness.DaemonProcess``), the CA is the real Pebble, reached directly or through
:class:`CaFront`, an HTTPS front on 127.0.0.1 that records every request with its time and the
status the client got, and can answer a request itself (a ``429 rateLimited`` with a
``Retry-After`` header, which :class:`pebble.AriProxy`'s hook cannot express).

Waiting is always for a condition with a deadline (:func:`poll`); a bounded wait over a fixed
window is used only by the tests that assert something did *not* happen during it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pebble import PebbleServer, roots_url_for
from pebble.runner import CERT_NAME, KEY_NAME, LOOPBACK, StartStop
from tests.daemon_harness import DaemonProcess, Record, events, run_cli
from tests.servers import Nginx, served_der
from tests.unavailable import unavailable

T = TypeVar("T")

#: A budget no test reaches unless it tests the budget (the default allows 5 certificates for
#: one set of names per 7 days, which 60-second certificates use up in minutes).
GENEROUS_BUDGET: Final = """
[acme.pebble.budget]
orders = 1000
orders_window = "3h"
certificates = 1000
certificates_window = "7d"
"""

#: The fast retry settings of the acceptance tests.
FAST_RETRIES: Final = 'retry_ladder = ["20s", "40s", "1m"]\nmin_order_interval = "20s"'


# --------------------------------------------------------------------------------------------
# Config, status, audit
# --------------------------------------------------------------------------------------------


def loop_config(
    path: Path,
    *,
    directory: str,
    ca_bundle: Path,
    state: Path,
    services: str,
    daemon_extra: str = "",
    log_dir: Path | None = None,
    budget: str = GENEROUS_BUDGET,
) -> Path:
    """Write a config atomically (a daemon may be watching it). The audit log and the control
    socket go to ``log_dir`` (default: inside ``state``), so a test can break the state dir's
    filesystem without taking the audit log or the socket with it."""
    logs = log_dir or state
    text = f"""
[daemon]
state_dir = "{state}"
audit_log = "{logs}/audit.jsonl"
control_socket = "{logs}/ctl.sock"
{daemon_extra}

[acme.pebble]
directory = "{directory}"
ca_bundle = "{ca_bundle}"
trust_roots_url = "{roots_url_for(ca_bundle)}"
{budget}

{services}
"""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def status_docs(config: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """``rotatord status --json``: (where it came from, {service: its document})."""
    result = run_cli(config, "status", "--json", timeout=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    return doc["source"], {d["service"]: d for d in doc["services"]}


def daemon_status(config: Path, name: str) -> dict[str, Any]:
    """One service's status document, asserted to come from the running daemon."""
    source, docs = status_docs(config)
    assert source == "daemon", f"status did not come from the daemon: {source!r}"
    return docs[name]


def ts(record: Record) -> datetime:
    """An audit record's timestamp (aware UTC)."""
    return parse_time(record["ts"])


def parse_time(value: str) -> datetime:
    when = datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def between(records: list[Record], start: datetime, end: datetime | None = None) -> list[Record]:
    """The records stamped in [start, end] (end open when None)."""
    return [r for r in records if ts(r) >= start and (end is None or ts(r) <= end)]


def rotated(records: list[Record], name: str) -> list[Record]:
    """The service's canonical lines of successful rotations."""
    return [r for r in events(records, "rotation_finished", name) if r.get("outcome") == "rotated"]


def poll(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    daemon: DaemonProcess | None = None,
    interval: float = 0.1,
) -> T:
    """Call ``probe`` until it returns something other than None/False, or fail at the
    deadline (a wait for a condition, never a fixed delay)."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None and got is not False:
            return got
        if time.monotonic() > end:
            tail = daemon.log_tail() if daemon is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{tail}")
        time.sleep(interval)


def cert_fingerprint(pem_path: Path) -> str:
    """SHA-256 (hex) of the DER of the first certificate in a PEM file."""
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def served_fingerprint(port: int, sni: str) -> str | None:
    """SHA-256 (hex) of the certificate a real TLS handshake gets, None if none."""
    der = served_der(port, sni)
    return None if der is None else hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------------------------
# A slow reload for nginx, and what systemd does to leftovers of a stopped daemon
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlowReload:
    """A reload action that records ``start <version>``, waits ``delay`` seconds, reloads nginx,
    then records ``done <version>`` (``ROTATORD_VERSION`` of its environment) in ``log``; its
    process-group leader's pid goes to ``pid_file`` first."""

    log: Path
    pid_file: Path
    delay: float = 3.0

    def toml(self, nginx: Nginx, service: str = "web", timeout: float = 20) -> str:
        body = (
            f'echo $$ > "{self.pid_file}"; echo "start $ROTATORD_VERSION" >> "{self.log}"; '
            f'sleep {self.delay:g} && "$@" && echo "done $ROTATORD_VERSION" >> "{self.log}"'
        )
        argv = ["/bin/sh", "-c", body, "sh", *nginx.argv("-s", "reload")]
        return f"""
[[services.{service}.reload]]
command = {json.dumps(argv)}
timeout = {timeout:g}
"""

    def lines(self) -> list[str]:
        try:
            return self.log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def started(self, version: str) -> bool:
        return f"start {version}" in self.lines()

    def done(self, version: str) -> bool:
        return f"done {version}" in self.lines()

    def kill_leftover(self) -> None:
        """SIGKILL the reload's process group if it is still there: with the unit's
        ``KillMode=mixed`` systemd kills whatever is left in the cgroup once the main process
        is gone, so a reload never outlives the daemon that started it."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:  # still the group leader the reload started as
                os.killpg(pid, signal.SIGKILL)


def rotate_in_background(config: Path, *args: str) -> subprocess.Popen[str]:
    """``rotatord rotate ARGS`` as a child process (its reply is read with communicate())."""
    return subprocess.Popen(
        [sys.executable, "-m", "rotatord", "-c", str(config), "rotate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --------------------------------------------------------------------------------------------
# Filesystems: a tiny tmpfs, filling it up, a read-only bind mount
# --------------------------------------------------------------------------------------------

_NOT_PERMITTED: Final = ("permission denied", "not permitted", "must be superuser", "only root")


def _mount(*args: str) -> None:
    if shutil.which("mount") is None:
        unavailable("mount(8) is not installed")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        why = f"mount {' '.join(args)} failed: {proc.stderr.strip()}"
        if os.geteuid() != 0 or any(s in proc.stderr.lower() for s in _NOT_PERMITTED):
            unavailable(why + " (needs root or CAP_SYS_ADMIN)")
        pytest.fail(why)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mountpoint`` (created), unmounted afterwards."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint))
    try:
        yield mountpoint
    finally:
        _umount(mountpoint)


def fill_up(mountpoint: Path) -> Path:
    """Fill the filesystem with one file until ENOSPC; returns the file (unlink it to free)."""
    filler = mountpoint / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.statvfs(mountpoint).f_bavail == 0, "the filesystem is not full"
    return filler


class ReadOnlyBind:
    """A bind mount of ``path`` onto itself, switchable between read-only and writable.

    Mounted while a daemon already runs, it is a new mount with no writers (the daemon's open
    files belong to the mount below), so remounting it read-only cannot fail with EBUSY; every
    path the daemon opens from then on goes through it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def read_only(self) -> None:
        if not self.mounted:
            _mount("--bind", str(self.path), str(self.path))
            self.mounted = True
        _mount("-o", "remount,bind,ro", str(self.path))
        probe = self.path / ".rw-probe"
        try:
            probe.write_text("x")
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
        else:
            probe.unlink()
            raise AssertionError(f"{self.path} is still writable after remount,ro")

    def writable(self) -> None:
        _mount("-o", "remount,bind,rw", str(self.path))

    def close(self) -> None:
        if self.mounted:
            _umount(self.path)
            self.mounted = False


# --------------------------------------------------------------------------------------------
# CaFront: an HTTPS front for Pebble that records requests and can answer them itself
# --------------------------------------------------------------------------------------------

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
ACME_ERROR: Final = "urn:ietf:params:acme:error:"


@dataclass(frozen=True)
class Reply:
    """A problem document the front sends instead of forwarding (with a fresh nonce)."""

    status: int
    problem: str  # e.g. "rateLimited"
    detail: str
    headers: tuple[tuple[str, str], ...] = ()


#: ``(method, path) -> Reply`` to answer it, or None to forward it to Pebble.
Respond = Callable[[str, str], Reply | None]


@dataclass(frozen=True)
class Seen:
    """One request the front handled: what, the status the client got, and when."""

    method: str
    path: str
    status: int
    at: datetime  # wall clock, comparable with audit timestamps
    mono: float  # time.monotonic()


class _Upstream:
    def __init__(self, pebble: PebbleServer) -> None:
        self.port = int(pebble.directory_url.split(":")[2].split("/")[0])
        self.context = ssl.create_default_context(cafile=str(pebble.ca_bundle))

    def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPSConnection(LOOPBACK, self.port, timeout=30, context=self.context)
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, front: CaFront, context: ssl.SSLContext) -> None:
        self.front = front
        self.ssl_context = context
        self.conns: set[ssl.SSLSocket] = set()
        self.conn_lock = threading.Lock()
        self.closing = False
        super().__init__((LOOPBACK, 0), _Handler)

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = LOOPBACK, self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        raw: socket.socket = request
        raw.settimeout(60)
        conn = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            with self.conn_lock:
                if self.closing:
                    return
                self.conns.add(conn)
            try:
                conn.do_handshake()
            except OSError:
                return
            _Handler(conn, client_address, self)
        finally:
            with self.conn_lock:
                self.conns.discard(conn)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client hanging up, or stop() shutting its socket down
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        front = self.server.front
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        respond = front.respond
        reply = respond(self.command, path) if respond is not None else None
        if reply is not None:
            status = self._send_reply(reply)
        else:
            status = self._forward(body if length or self.command == "POST" else None)
        front._record(self.command, path, status)

    def _send_reply(self, reply: Reply) -> int:
        front = self.server.front
        doc = {"type": ACME_ERROR + reply.problem, "detail": reply.detail, "status": reply.status}
        data = json.dumps(doc).encode()
        headers = [("Content-Type", "application/problem+json"), *reply.headers]
        nonce = front._fresh_nonce()
        if nonce is not None:
            headers.append(("Replay-Nonce", nonce))
        headers.append(("Link", f'<{front.directory_url}>;rel="index"'))
        self._send(reply.status, headers, data)
        return reply.status

    def _forward(self, body: bytes | None) -> int:
        front = self.server.front
        headers = [(n, v) for n, v in self.headers.items() if n.lower() not in _HOP_BY_HOP]
        if self.headers.get("Host") is None:
            headers.append(("Host", f"{LOOPBACK}:{front.port}"))
        try:
            status, resp_headers, data = front._upstream.request(
                self.command, self.path, headers, body
            )
        except (OSError, http.client.HTTPException) as exc:
            doc = {"type": ACME_ERROR + "serverInternal", "detail": f"CaFront: {exc}"}
            self._send(
                502, [("Content-Type", "application/problem+json")], json.dumps(doc).encode()
            )
            return 502
        kept = [(n, v) for n, v in resp_headers if n.lower() not in _HOP_BY_HOP]
        self._send(status, kept, data)
        return status

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class CaFront(StartStop):
    """An HTTPS front on a free 127.0.0.1 port that forwards every request to one running
    Pebble unchanged (the client's ``Host`` included, so Pebble hands out the front's URLs),
    records each one (:attr:`seen`), and lets a test answer requests itself (:attr:`respond`).
    Tests only: it reuses Pebble's throwaway listener key pair."""

    def __init__(self, pebble: PebbleServer) -> None:
        self.pebble = pebble
        self.respond: Respond | None = None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._upstream = _Upstream(pebble)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.new_order_path = ""
        self._new_nonce_path = ""

    def start(self) -> None:
        host = [("Host", f"{LOOPBACK}:{self._upstream.port}")]
        status, _headers, body = self._upstream.request("GET", "/dir", host, None)
        assert status == 200, f"Pebble answered {status} to GET /dir"
        directory = json.loads(body)
        self.new_order_path = "/" + directory["newOrder"].split("/", 3)[3]
        self._new_nonce_path = "/" + directory["newNonce"].split("/", 3)[3]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.pebble.workdir / CERT_NAME, self.pebble.workdir / KEY_NAME)
        self._server = _Server(self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="CaFront",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        with server.conn_lock:
            server.closing = True
            conns = list(server.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    @property
    def port(self) -> int:
        assert self._server is not None, "CaFront is not running"
        return self._server.server_port

    @property
    def directory_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/dir"

    @property
    def ca_bundle(self) -> Path:
        return self.pebble.ca_bundle

    def new_orders(
        self, start: float | None = None, end: float | None = None, status: int | None = None
    ) -> list[Seen]:
        """newOrder POSTs handled in the monotonic interval [start, end], optionally only
        those answered ``status`` (201: an order the CA created)."""
        with self._lock:
            seen = list(self.seen)
        return [
            s
            for s in seen
            if s.method == "POST"
            and s.path == self.new_order_path
            and (start is None or s.mono >= start)
            and (end is None or s.mono <= end)
            and (status is None or s.status == status)
        ]

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, status, datetime.now(UTC), time.monotonic()))

    def _fresh_nonce(self) -> str | None:
        host = [("Host", f"{LOOPBACK}:{self.port}")]
        try:
            _status, headers, _body = self._upstream.request(
                "HEAD", self._new_nonce_path, host, None
            )
        except (OSError, http.client.HTTPException):
            return None
        return next((v for n, v in headers if n.lower() == "replay-nonce"), None)
