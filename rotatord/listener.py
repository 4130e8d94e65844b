"""Bounded stream listeners: one selector thread per listening socket, a small worker pool, caps.

Used by the HTTP-01 responder (anyone on the internet may connect) and the control socket (any
member of its group may connect). A protocol object says when a request is complete and what to
answer; this module owns the sockets and every bound.

Rules:
- A connection costs one descriptor and no thread until its request is complete. Threads are the
  selector thread plus at most ``Limits.workers`` (0: answers are computed on the selector thread,
  which is right only for answers that never block).
- A request must be complete within ``request_deadline`` of accept, however its bytes arrive: a
  per-read timeout would let a client sending one byte a second live forever (slowloris). A reply
  must be written within ``write_deadline``. Past ``max_request`` bytes without a complete
  request the connection is answered with the protocol's refusal and closed.
- At most ``max_connections`` are open. At the cap, a connection that has sent nothing for
  ``EVICT_IDLE`` seconds (checked by reading it first) is dropped to make room for the next one
  (nginx reuses idle keep-alive connections the same way), so a flood of idle connections cannot
  lock out a real caller; with no such connection, accepting pauses and new callers wait in the
  kernel's backlog (a burst of real callers is queued, not refused). The cap is logged when
  reached and then at most once per ``CAP_LOG_INTERVAL``, with counts, never per connection.
- ``Protocol.admit`` runs at accept, before a byte is read; raising ``Refused`` closes the
  connection at once after a best-effort reply.
- Only the selector thread touches sockets; a failing protocol callback closes its connection
  only, never the loop.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from rotatord.clock import Clock, SystemClock
from rotatord.observe.logging import get_logger
from rotatord.workpool import WorkerPool

log = get_logger("rotatord.listener")

# listen(2) backlog. The kernel clamps it to net.core.somaxconn (4096 on current Linux); 5, the
# socketserver default, overflowed under four concurrent ACME orders (the CA's SYN is then retried
# after 1 s) and under 20 concurrent control clients (EAGAIN on a Unix socket).
BACKLOG = 1024
CAP_LOG_INTERVAL = 60.0
ACCEPT_BATCH = 64  # accepts per wake-up, so a connect flood cannot starve reads and writes
EMFILE_PAUSE = 0.1  # out of descriptors: stop accepting this long instead of spinning
# A caller that has sent nothing for this long may be dropped for a new one at the cap. Real
# callers send their request at once; this only has to outlast one slow turn of the loop.
EVICT_IDLE = 0.25

_READING, _BUSY, _WRITING = 0, 1, 2


@dataclass(frozen=True)
class Limits:
    max_connections: int
    request_deadline: float
    write_deadline: float
    max_request: int
    workers: int = 0


class Refused(Exception):
    """Raised by ``Protocol.admit``: send ``reply`` (best effort) and close."""

    def __init__(self, reply: bytes) -> None:
        super().__init__("refused at accept")
        self.reply = reply


class Protocol(TypingProtocol):
    """``admit``: at accept, the context for ``answer``, or raise ``Refused``. ``complete``:
    whether ``buf`` holds a request (bytes before ``new_from`` were already seen). ``answer``: the
    reply (to a partial request too, if the client ended it with EOF). ``refusal``: the reply for
    ``too_large``, ``timeout`` or ``error``."""

    def admit(self, sock: socket.socket) -> object: ...
    def complete(self, buf: bytearray, new_from: int) -> bool: ...
    def answer(self, request: bytes, context: object) -> bytes: ...
    def refusal(self, why: str) -> bytes: ...


class _Conn:
    __slots__ = ("active", "buf", "context", "deadline", "out", "sock", "state")

    def __init__(self, sock: socket.socket, context: object, now: float, deadline: float) -> None:
        self.sock = sock
        self.context = context
        self.active = now  # accept, or the last byte received
        self.deadline = deadline
        self.buf = bytearray()
        self.out = memoryview(b"")
        self.state = _READING


class Listener:
    """Serves ``protocol`` on an already bound and listening ``sock`` until ``close``."""

    def __init__(self, sock: socket.socket, protocol: Protocol, limits: Limits, name: str) -> None:
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self._protocol = protocol
        self._limits = limits
        self._name = name
        self._clock: Clock = SystemClock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._conns: dict[int, _Conn] = {}  # insertion order is accept order: oldest first
        self._cv = threading.Condition()
        self._finished: list[tuple[_Conn, bytes]] = []
        self._pending = 0  # connections being answered or written (a stop waits for them)
        self._stop = False
        self._no_accept = False
        self._paused_until: float | None = None  # out of descriptors until then
        self._accepting = False  # the listening socket is registered with the selector
        self._pool = WorkerPool(limits.workers, name) if limits.workers > 0 else None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._cap_logged_at: float | None = None
        self._since_log = [0, 0]  # evicted, pauses since the last cap log line
        self._at_cap = False
        self.evicted = 0
        self.timed_out = 0

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def start(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread.start()

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already accepted are still answered."""
        with self._cv:
            self._no_accept = True
        self._wake()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being answered or written; False if ``timeout`` passed."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        with self._cv:
            self._stop = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        else:  # never started: the loop's clean-up did not run
            self._cleanup()
        if self._pool is not None:
            self._pool.stop()

    # ------------------------------------------------------------------ the selector thread

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake (buffer full), or closing
            self._wake_w.send(b"x")

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    if self._stop:
                        return
                    finished, self._finished = self._finished, []
                    no_accept = self._no_accept
                if no_accept and self._sock is not None:
                    self._close_listener()
                now = self._clock.monotonic()
                for conn, reply in finished:
                    self._start_write(conn, reply, now)
                self._expire(now)
                self._set_accepting(self._may_accept(now))
                for key, events in self._selector.select(self._timeout(now)):
                    self._event(key, events)
        finally:
            self._cleanup()

    def _event(self, key: selectors.SelectorKey, events: int) -> None:
        if key.data is None:
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(4096):
                    pass
            return
        conn: _Conn | None = None if key.data is self._sock else key.data
        try:
            if conn is None:
                self._accept()
            elif conn.state == _READING and events & selectors.EVENT_READ:
                self._read(conn)
            elif conn.state == _WRITING and events & selectors.EVENT_WRITE:
                self._write(conn)
        except Exception:  # a protocol bug costs one connection, not the loop
            log.exception("listener_connection_failed", listener=self._name)
            if conn is not None:
                self._close(conn)

    def _oldest_idle(self) -> float | None:
        times = [c.active for c in self._conns.values() if c.state == _READING]
        return min(times) if times else None

    def _may_accept(self, now: float) -> bool:
        if self._sock is None:
            return False
        if self._paused_until is not None:
            if now < self._paused_until:
                return False
            self._paused_until = None
        if len(self._conns) < self._limits.max_connections:
            self._at_cap = False
            return True
        oldest = self._oldest_idle()
        evictable = oldest is not None and now - oldest >= EVICT_IDLE
        if not evictable and not self._at_cap:
            self._at_cap = True
            self._cap_hit(evicted=False)
        return evictable

    def _set_accepting(self, on: bool) -> None:
        if on != self._accepting and self._sock is not None:
            if on:
                self._selector.register(self._sock, selectors.EVENT_READ, self._sock)
            else:
                self._selector.unregister(self._sock)
            self._accepting = on

    def _timeout(self, now: float) -> float | None:
        deadlines = [c.deadline for c in self._conns.values() if c.state != _BUSY]
        if self._paused_until is not None:
            deadlines.append(self._paused_until)
        oldest = self._oldest_idle()
        if self._at_cap and not self._accepting and oldest is not None:
            deadlines.append(oldest + EVICT_IDLE)  # paused at the cap: when one becomes evictable
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.state != _BUSY and c.deadline <= now]:
            if conn.state == _READING:
                self.timed_out += 1
                self._send_and_close(conn, self._protocol.refusal("timeout"))
            else:
                self._close(conn)

    def _accept(self) -> None:
        assert self._sock is not None
        now = self._clock.monotonic()
        for _ in range(ACCEPT_BATCH):
            if len(self._conns) >= self._limits.max_connections and not self._evict_one(now):
                return  # the next turn of the loop stops accepting until a slot frees
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._paused_until = now + EMFILE_PAUSE
                    self._cap_hit(evicted=False, why=exc.strerror or "out of descriptors")
                    return
                continue  # ECONNABORTED and friends: that client is gone
            sock.setblocking(False)
            try:
                context = self._protocol.admit(sock)
            except Refused as refused:
                self._send_raw(sock, refused.reply)
                continue
            except Exception:  # a failing admit refuses that caller only
                log.exception("listener_admit_failed", listener=self._name)
                sock.close()
                continue
            conn = _Conn(sock, context, now, now + self._limits.request_deadline)
            self._conns[id(conn)] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_one(self, now: float) -> bool:
        """Drop the oldest connection idle for EVICT_IDLE; read each candidate first, so bytes
        waiting in the kernel count as activity."""
        for conn in [c for c in self._conns.values() if c.state == _READING]:
            if now - conn.active < EVICT_IDLE:
                continue
            self._read(conn)
            if (
                id(conn) in self._conns
                and conn.state == _READING
                and now - conn.active >= EVICT_IDLE
            ):
                self.evicted += 1
                self._cap_hit(evicted=True)
                self._close(conn)
                return True
        return False

    def _cap_hit(self, *, evicted: bool, why: str = "connection cap reached") -> None:
        self._since_log[0 if evicted else 1] += 1
        now = self._clock.monotonic()
        if self._cap_logged_at is not None and now - self._cap_logged_at < CAP_LOG_INTERVAL:
            return
        log.warning(
            "listener_connection_cap_reached",
            listener=self._name,
            why=why,
            max_connections=self._limits.max_connections,
            open_connections=len(self._conns),
            evicted_idle=self._since_log[0],
            paused=self._since_log[1],
            next_report_within_seconds=CAP_LOG_INTERVAL,
        )
        self._cap_logged_at = now
        self._since_log = [0, 0]

    def _read(self, conn: _Conn) -> None:
        room = self._limits.max_request + 1 - len(conn.buf)
        try:
            data = conn.sock.recv(min(65536, room))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # EOF: answer what came (a client may end its request that way)
            if conn.buf:
                self._dispatch(conn)
            else:
                self._close(conn)
            return
        seen = len(conn.buf)
        conn.buf += data
        conn.active = self._clock.monotonic()
        if self._protocol.complete(conn.buf, seen):
            self._dispatch(conn)
        elif len(conn.buf) > self._limits.max_request:
            self._send_and_close(conn, self._protocol.refusal("too_large"))

    def _dispatch(self, conn: _Conn) -> None:
        self._selector.unregister(conn.sock)
        conn.state = _BUSY
        request, conn.buf = bytes(conn.buf), bytearray()
        with self._cv:
            self._pending += 1
        if self._pool is None:
            self._start_write(conn, self._answer(conn, request), self._clock.monotonic())
            return

        def job() -> None:
            reply = self._answer(conn, request)
            with self._cv:
                self._finished.append((conn, reply))
            self._wake()

        self._pool.submit(job)

    def _answer(self, conn: _Conn, request: bytes) -> bytes:
        try:
            return self._protocol.answer(request, conn.context)
        except Exception:  # the caller gets an error reply, the log the traceback
            log.exception("listener_answer_failed", listener=self._name)
            return self._protocol.refusal("error")

    def _start_write(self, conn: _Conn, reply: bytes, now: float) -> None:
        if id(conn) not in self._conns:
            return  # closed meanwhile (shutdown)
        conn.state = _WRITING
        conn.out = memoryview(reply)
        conn.deadline = now + self._limits.write_deadline
        self._write(conn)
        if id(conn) in self._conns:
            self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)

    def _write(self, conn: _Conn) -> None:
        try:
            while conn.out:
                conn.out = conn.out[conn.sock.send(conn.out) :]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass  # the client left; nothing more to say
        self._close(conn)

    def _send_and_close(self, conn: _Conn, data: bytes) -> None:
        with contextlib.suppress(OSError):  # best effort: the connection is dropped anyway
            conn.sock.send(data)
        self._close(conn)

    def _send_raw(self, sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError), sock:
            sock.send(data)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(id(conn), None) is None:
            return
        if conn.state != _BUSY:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        if conn.state != _READING:
            with self._cv:
                self._pending -= 1
                self._cv.notify_all()
        conn.sock.close()

    def _close_listener(self) -> None:
        if self._sock is not None:
            self._set_accepting(False)
            self._sock.close()
            self._sock, self._at_cap = None, False

    def _cleanup(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._close_listener()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
