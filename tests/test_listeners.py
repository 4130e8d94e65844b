"""The HTTP-01 responder and the control socket under hostile clients: caps, deadlines, refusals.

Real sockets on 127.0.0.1 and under a short /tmp directory, real threads, and a separate attacker
process (``tests/flood.py``) holding the idle connections, so this process's thread and descriptor
counts are the servers' own. Nothing waits with a bare sleep: tests poll a condition under a
deadline, or block on a socket or pipe event.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rotatord.clock import FakeClock
from rotatord.config import load_config
from rotatord.core.model import Http01Standalone
from rotatord.daemon import Planner, build_rotator
from rotatord.daemon.loop import ServiceLoop
from rotatord.daemon.verbs import Verbs
from rotatord.issuing.challenges.http01 import HTTP01_LIMITS, StandalonePool
from rotatord.listener import BACKLOG, Limits, Listener
from rotatord.observe.audit import AuditLog
from rotatord.runtime import control
from rotatord.runtime.control import CONTROL_LIMITS, MAX_REQUEST, ControlServer, Peer

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-123"
KEY_AUTH = "tok-123.thumbprint"
IDLE = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def poll(condition: Callable[[], bool], deadline: float = 30.0, what: str = "") -> None:
    """Wait until ``condition()`` holds, checking every 10 ms, failing after ``deadline`` s."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not reached within {deadline}s: {what}")
        select.select([], [], [], 0.01)


def all_accepted(listener: Listener) -> bool:
    """Every flood connection has been accepted (and is open, or was evicted for a newer one)."""
    return listener.open_connections + listener.evicted == IDLE


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fetch(port: int, path: str = f"/.well-known/acme-challenge/{TOKEN}") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def flood(*args: str) -> Iterator[str]:
    """Run ``tests/flood.py`` with ``args``; yields its ``ready`` line once every connect
    returned, and closes all its connections on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.flood", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the attacker holds every connection
        assert line.startswith("ready"), f"flood did not get ready: {line!r}"
        yield line.strip()
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=60)
        proc.stdout.close()


def raw_request(path: Path, data: bytes, timeout: float = 10) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sent before it closed (a reset after a refusal included: closing
    with unread request bytes makes the kernel send RST)."""
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


def make_verbs(tmp: Path, allowed: list[int], clock: FakeClock) -> tuple[Verbs, Path]:
    """The daemon's real control verbs over a one-service config; returns them and the audit
    log's path."""
    state = tmp / "state"
    cfg = tmp / "r.toml"
    cfg.write_text(
        f"""
[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
control_socket = "{tmp}/ctl.sock"
control_allowed_uids = {allowed}

[acme.pebble]
directory = "https://127.0.0.1:9/dir"

[services.web]
domains = ["web.example.test"]
account = "pebble"
[services.web.challenge]
listen = "127.0.0.1:{free_port()}"
"""
    )
    config = load_config(cfg)
    audit = AuditLog(state / "audit.jsonl", clock, echo=False)
    rotator = build_rotator(config, clock, audit=audit)
    loop = ServiceLoop(
        rotator, Planner(rotator, clock), clock, audit, lambda *_: None, lambda *_: None
    )
    return Verbs(lambda: config, loop, lambda _uid: {"ok": True}), state / "audit.jsonl"


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ============================================================================================
# 1,000 idle connections on each listener: flat threads and descriptors, service goes on
# ============================================================================================


def test_thousand_idle_connections_on_each_listener_cost_no_threads(short_tmp: Path) -> None:
    """With 1,000 idle connections held on the HTTP-01 port and 1,000 on the control socket (by
    a separate process), this process runs at most 2 + 8 extra threads and holds at most the two
    caps' worth of descriptors; a challenge fetch and a `status` request still succeed, and the
    cap is logged once per listener, not once per connection."""
    base_threads, base_fds = threads(), fds()
    port = free_port()
    spec = Http01Standalone("127.0.0.1", port)
    pool = StandalonePool(linger=0)
    path = short_tmp / "ctl.sock"
    ctl = ControlServer(path, lambda req, peer: {"ok": True, "verb": req.get("verb")})
    ctl.start()
    assert ctl.listener is not None
    try:
        with capture_logs() as logs, pool.serving(spec, {TOKEN: KEY_AUTH}):
            http_listener = pool.listener_for(spec)
            assert http_listener is not None
            with flood("--tcp", f"127.0.0.1:{port}", str(IDLE), "--unix", str(path), str(IDLE)):
                for lst in (http_listener, ctl.listener):
                    poll(partial(all_accepted, lst), what="every flood connection accepted")
                held_threads, held_fds = threads() - base_threads, fds() - base_fds
                assert fetch(port) == (200, KEY_AUTH.encode())
                assert control.request(path, {"verb": "status"}, timeout=10) == {
                    "ok": True,
                    "verb": "status",
                }
                after_threads, after_fds = threads() - base_threads, fds() - base_fds
                open_http, open_ctl = http_listener.open_connections, ctl.listener.open_connections
            print(
                f"\n[measured] idle={IDLE}+{IDLE}: extra threads held={held_threads} "
                f"after requests={after_threads}; extra fds held={held_fds} "
                f"after requests={after_fds}; open http01={open_http} control={open_ctl}"
            )
        caps = HTTP01_LIMITS.max_connections + CONTROL_LIMITS.max_connections
        # Each listener: listening socket, epoll, a wake-up socket pair (4 descriptors).
        assert held_fds <= caps + 8 + 2 and after_fds <= caps + 8 + 2  # + the flood's 2 pipes
        assert held_threads <= 2 and after_threads <= 2 + CONTROL_LIMITS.workers
        assert open_http <= HTTP01_LIMITS.max_connections
        assert open_ctl <= CONTROL_LIMITS.max_connections
        cap_lines = [e for e in logs if e["event"] == "listener_connection_cap_reached"]
        assert sorted(e["listener"] for e in cap_lines) == ["control", f"http01-{port}"]
    finally:
        ctl.stop()
        pool.close()
    poll(lambda: threads() <= base_threads and fds() <= base_fds, 10, "all released")


def test_refused_uid_is_closed_at_accept_before_any_byte(short_tmp: Path) -> None:
    """A caller whose uid is not allowed gets `forbidden` without sending a byte, and 1,000 such
    connections leave no connection open and one `control_request` audit record (the refusals
    in between are counted, not fsynced one by one)."""
    clock = FakeClock()
    verbs, audit_path = make_verbs(short_tmp, [54321], clock)
    path = short_tmp / "ctl.sock"
    ctl = ControlServer(path, verbs.handle, admit=verbs.admit)
    ctl.start()
    assert ctl.listener is not None
    base_threads, base_fds = threads(), fds()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            reply = json.loads(sock.makefile("rb").readline())  # nothing sent at all
        assert reply == {
            "ok": False,
            "error": f"uid {os.getuid()} is not allowed",
            "code": "forbidden",
        }
        with flood("--unix", str(path), str(IDLE), "--expect-reply") as ready:
            assert ready == f"ready {IDLE}"
            assert ctl.listener.open_connections == 0
            held_threads, held_fds = threads() - base_threads, fds() - base_fds
        print(f"\n[measured] {IDLE} refused: extra threads={held_threads} extra fds={held_fds}")
        assert held_threads == 0 and held_fds <= 2  # the flood's 2 pipes
        # The CLI's own path: it sends its request and reads the refusal.
        assert control.request(path, {"verb": "status"}, timeout=10)["code"] == "forbidden"
    finally:
        ctl.stop()
    records = [r for r in audit_records(audit_path) if r["event"] == "control_request"]
    assert len(records) == 1, records
    assert (records[0]["uid"], records[0]["allowed"], records[0]["stage"]) == (
        os.getuid(),
        False,
        "accept",
    )
    # Let the clock move: the next refusal is audited with the count of those in between.
    clock.advance(2.0)
    ctl = ControlServer(path, verbs.handle, admit=verbs.admit)
    ctl.start()
    try:
        assert raw_request(path, b"")["code"] == "forbidden"
    finally:
        ctl.stop()
        verbs_rotator_close(verbs)
    records = [r for r in audit_records(audit_path) if r["event"] == "control_request"]
    assert [r["refused_since_last"] for r in records] == [0, IDLE + 1]


def verbs_rotator_close(verbs: Verbs) -> None:
    verbs._loop.rotator.close()


# ============================================================================================
# Slowloris: a trickle is cut at the overall deadline
# ============================================================================================


def trickle(sock: socket.socket, payload: bytes, pace: float, limit: float) -> tuple[float, bytes]:
    """Send ``payload`` one byte per ``pace`` s until the server closes or ``limit`` s pass;
    returns (seconds until the server closed, what it sent)."""
    start = time.monotonic()
    got = b""
    for i in range(len(payload) * 1000):
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.send(payload[i % len(payload) : i % len(payload) + 1])
        readable, _, _ = select.select([sock], [], [], pace)  # pacing, or the server's close
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            got += chunk
            if not chunk:
                return time.monotonic() - start, got
        if time.monotonic() - start > limit:
            break
    raise AssertionError(f"server still reading after {limit}s of trickle")


SHORT = Limits(max_connections=16, request_deadline=0.5, write_deadline=0.5, max_request=8192)


def test_http01_trickle_is_cut_at_the_request_deadline() -> None:
    """A client sending one header byte every 50 ms (never idle long enough for a per-read
    timeout) is answered 408 and closed at the 0.5 s overall deadline; the next client is
    served."""
    port = free_port()
    spec = Http01Standalone("127.0.0.1", port)
    pool = StandalonePool(linger=0, limits=SHORT)
    with pool.serving(spec, {TOKEN: KEY_AUTH}):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            took, got = trickle(
                sock, b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nX-a: b", 0.05, 5
            )
        assert 0.45 <= took < 2.0, took
        assert got == b"" or got.startswith(b"HTTP/1.1 408 "), got
        assert fetch(port) == (200, KEY_AUTH.encode())
        listener = pool.listener_for(spec)
        assert listener is not None and listener.timed_out == 1
    pool.close()


def test_control_trickle_is_cut_at_the_request_deadline(short_tmp: Path) -> None:
    """The same trickle on the control socket gets a `timeout` error reply and is closed at the
    0.5 s deadline; a real request right after is answered."""
    path = short_tmp / "ctl.sock"
    ctl = ControlServer(path, lambda req, peer: {"ok": True}, limits=SHORT)
    ctl.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            took, got = trickle(sock, b'{"verb": "status"   ', 0.05, 5)
        assert 0.45 <= took < 2.0, took
        assert json.loads(got)["code"] == "timeout"
        assert control.request(path, {"verb": "ping"}, timeout=10) == {"ok": True}
    finally:
        ctl.stop()


# ============================================================================================
# Every malformed control request gets an error reply
# ============================================================================================

MALFORMED = {
    "array nested 20000 deep": (b"[" * 20000 + b"]" * 20000 + b"\n", "bad_request", "nested"),
    "object nested 17 deep": (b'{"a":' * 17 + b"1" + b"}" * 17 + b"\n", "bad_request", "nested"),
    "not json": (b"status please\n", "bad_request", "bad request"),
    "not an object": (b'["status"]\n', "bad_request", "JSON object"),
    "not utf-8": (b'{"verb": "\xff"}\n', "bad_request", "bad request"),
    "huge integer": (b'{"verb": ' + b"9" * 5000 + b"}\n", "bad_request", "bad request"),
    "too long": (b'{"verb": "' + b"a" * (MAX_REQUEST + 10) + b'"}\n', "too_large", "too large"),
    "unknown verb": (b'{"verb": "format-disk"}\n', None, "unknown verb"),
    "verb not a string": (b'{"verb": {"x": [1]}}\n', None, "unknown verb"),
    "services deeply nested": (
        b'{"verb": "status", "services": ' + b"[" * 15 + b"]" * 15 + b"}\n",
        "unknown",  # a service name that is not a string names no service
        "unknown service",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_control_request_gets_an_error_reply(short_tmp: Path, case: str) -> None:
    """Each malformed request (too deep, too long, not JSON, not an object, bad UTF-8, unknown
    verb) is answered with ``ok: false`` and a reason, from the daemon's real verbs."""
    data, code, text = MALFORMED[case]
    verbs, _ = make_verbs(short_tmp, [os.getuid()], FakeClock())
    path = short_tmp / "ctl.sock"
    ctl = ControlServer(path, verbs.handle, admit=verbs.admit)
    ctl.start()
    try:
        reply = raw_request(path, data)
        assert control.request(path, {"verb": "ping"}, timeout=10)["ok"] is True
    finally:
        ctl.stop()
        verbs_rotator_close(verbs)
    assert reply["ok"] is False, reply
    assert reply.get("code") == code, reply
    assert text in reply["error"]
    assert "Traceback" not in reply["error"]


def test_a_verb_that_raises_still_gets_a_reply(short_tmp: Path) -> None:
    """A handler bug becomes an `internal` error reply (the traceback goes to the log only)."""

    def broken(_req: dict[str, Any], _peer: Peer) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    path = short_tmp / "ctl.sock"
    ctl = ControlServer(path, broken)
    ctl.start()
    try:
        with capture_logs() as logs:
            reply = control.request(path, {"verb": "status"}, timeout=10)
    finally:
        ctl.stop()
    assert reply["code"] == "internal" and "secret" not in reply["error"]
    assert [e["event"] for e in logs] == ["control_request_failed"]


# ============================================================================================
# Listen backlog
# ============================================================================================


def test_two_hundred_concurrent_control_clients_are_all_answered(short_tmp: Path) -> None:
    """200 clients connecting at once all get their reply (a backlog of 5 refused some with
    EAGAIN, 'Resource temporarily unavailable')."""
    path = short_tmp / "ctl.sock"
    ctl = ControlServer(path, lambda req, peer: {"ok": True, "n": req["n"]})
    ctl.start()
    results: list[Any] = []
    gate = threading.Barrier(200)

    def client(n: int) -> None:
        gate.wait()
        try:
            results.append(control.request(path, {"verb": "ping", "n": n}, timeout=30)["n"])
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results.append(repr(exc))

    workers = [threading.Thread(target=client, args=(n,)) for n in range(200)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    ctl.stop()
    assert sorted(results, key=str) == sorted(range(200), key=str)


def test_http01_listen_backlog_is_not_five() -> None:
    """The HTTP-01 socket listens with a backlog of BACKLOG (clamped by net.core.somaxconn),
    read back from the kernel (TCP_INFO's tcpi_sacked is a listener's maximum backlog)."""
    port = free_port()
    spec = Http01Standalone("127.0.0.1", port)
    pool = StandalonePool(linger=0)
    with pool.serving(spec, {}):
        listener = pool.listener_for(spec)
        assert listener is not None
        sock = listener._sock
        assert sock is not None
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        max_backlog = struct.unpack_from("I", info, 28)[0]
    pool.close()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert max_backlog == min(BACKLOG, somaxconn) >= 512


def test_listener_close_releases_threads_and_descriptors() -> None:
    """Starting and closing a listener returns every thread and descriptor it took."""
    base_threads, base_fds = threads(), fds()
    sock = socket.create_server(("127.0.0.1", 0))
    listener = Listener(sock, _Echo(), SHORT, "echo")
    listener.start()
    with socket.create_connection(sock.getsockname(), timeout=10) as c:
        c.sendall(b"hi\n")
        assert c.recv(100) == b"hi\n"
    listener.close()
    # At most the counts from before: a thread an earlier test left may end meanwhile (then
    # equality would never come back), but anything this listener leaked stays above them.
    poll(lambda: threads() <= base_threads and fds() <= base_fds, 10, "released")


class _Echo:
    def admit(self, sock: socket.socket) -> object:
        return None

    def complete(self, buf: bytearray, new_from: int) -> bool:
        return b"\n" in buf

    def answer(self, request: bytes, context: object) -> bytes:
        return request

    def refusal(self, why: str) -> bytes:
        return why.encode() + b"\n"


def thread_cpu_seconds(native_id: int) -> float:
    """User + system CPU time of one thread of this process, from /proc."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_listener_at_its_cap_or_stopped_does_not_spin() -> None:
    """At its cap with idle connections, and after stop_accepting with idle connections left,
    the selector thread sleeps until the next deadline instead of spinning (under 0.1 s of CPU
    in a 1 s window each)."""
    sock = socket.create_server(("127.0.0.1", 0))
    limits = Limits(max_connections=2, request_deadline=5.0, write_deadline=1.0, max_request=64)
    listener = Listener(sock, _Echo(), limits, "spin")
    listener.start()
    tid = listener._thread.native_id
    assert tid is not None
    clients = [socket.create_connection(sock.getsockname(), timeout=10) for _ in range(4)]
    try:
        poll(lambda: listener.evicted == 2 and listener.open_connections == 2, 10, "evictions")
        for phase in ("at cap", "stopped"):
            before = thread_cpu_seconds(tid)
            select.select([], [], [], 1.0)  # the measuring window, not a synchronisation
            used = thread_cpu_seconds(tid) - before
            assert used < 0.1, f"{phase}: selector thread used {used:.2f}s of CPU in 1s"
            listener.stop_accepting()
    finally:
        for c in clients:
            c.close()
        listener.close()


HTTP_CASES = {
    "token": (f"GET /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "head": (f"HEAD /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\n\r\n", 200),
    "http/1.0, bare newlines": (f"GET /.well-known/acme-challenge/{TOKEN} HTTP/1.0\n\n", 200),
    "unknown token": ("GET /.well-known/acme-challenge/other HTTP/1.1\r\n\r\n", 404),
    "outside the prefix": ("GET /etc/passwd HTTP/1.1\r\n\r\n", 404),
    "other method": (f"POST /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\n\r\n", 405),
    "garbage": ("\x16\x03\x01 hello\r\n\r\n", 400),
    "headers too large": ("GET / HTTP/1.1\r\nX: " + "a" * 9000, 431),
}


@pytest.mark.parametrize("case", list(HTTP_CASES), ids=list(HTTP_CASES))
def test_http01_answers_each_request_with_the_right_status(case: str) -> None:
    """Validators get 200 with the key authorization; anything else gets a plain status line
    (404, 405, 400, 431), then the connection closes."""
    raw, status = HTTP_CASES[case]
    port = free_port()
    pool = StandalonePool(linger=0)
    with (
        pool.serving(Http01Standalone("127.0.0.1", port), {TOKEN: KEY_AUTH}),
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(raw.encode("latin-1"))
        reply = read_until_closed(sock)
    pool.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].startswith(f"HTTP/1.1 {status} ".encode()), reply
    assert b"Connection: close" in head
    expected = KEY_AUTH.encode() if status == 200 and not raw.startswith("HEAD") else b""
    assert body == expected


def test_control_reply_nobody_reads_is_dropped_at_the_write_deadline(short_tmp: Path) -> None:
    """A client that asks for a large reply and never reads it holds its worker and slot only
    until the write deadline (0.5 s here): then the server is idle again."""
    called = threading.Event()

    def big(_req: dict[str, Any], _peer: Peer) -> dict[str, Any]:
        called.set()
        return {"ok": True, "blob": "x" * 8_000_000}

    path = short_tmp / "ctl.sock"
    limits = Limits(16, request_deadline=5.0, write_deadline=0.5, max_request=1024, workers=2)
    ctl = ControlServer(path, big, limits=limits)
    ctl.start()
    assert ctl.listener is not None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(b'{"verb": "status"}\n')
            assert called.wait(10)
            start = time.monotonic()
            assert ctl.listener.wait_idle(10), "reply still pending after 10 s"
            took = time.monotonic() - start
            assert ctl.listener.open_connections == 0
        assert 0.3 <= took < 3.0, took
        assert control.request(path, {"verb": "ping"}, timeout=10)["ok"] is True
    finally:
        ctl.stop()
