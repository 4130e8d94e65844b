"""The control socket: a Unix stream socket speaking one JSON object per line each way.

Verbs: ``status``, ``rotate`` (``service`` or ``all``, ``force``), ``reload-config``, ``ping``.
The caller's uid comes from SO_PEERCRED (the kernel's word, not the client's) and is refused
unless listed in ``[daemon] control_allowed_uids``. The socket is created 0660 (group from
config) under a private umask, so there is no instant at which it is open to everyone.

Connections are served by a ``rotatord.listener.Listener`` (one selector thread, at most
``CONTROL_LIMITS.workers`` answering, capped connections, a deadline per request). With an
``admit`` callback the uid is checked at accept, before a byte is read, and a refused caller gets
its reply and is closed at once.

Rules: never trust anything the client says about who it is; one request per connection; bounded
request size and nesting; every malformed request gets an error reply (``ok: false`` and a
``code``), never silence or a traceback.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rotatord.core.errors import ControlError
from rotatord.listener import BACKLOG, Limits, Listener, Refused
from rotatord.observe.logging import get_logger

log = get_logger("rotatord.control")

MAX_REQUEST = 64 * 1024
MAX_DEPTH = 16  # no verb takes more than two levels; json's own limit (~1000) is a RecursionError
# Callers are the CLI and scripts of the socket's group: one short line sent at once. 64 slots
# and 10 s bound what a member of the group can hold (a flood of idle connections evicts the
# oldest idle one, so a real `status` still gets in); 8 workers answer at once (a `rotate` holds
# one for as long as the rotation takes), more wait their turn.
CONTROL_LIMITS = Limits(
    max_connections=64,
    request_deadline=10.0,
    write_deadline=30.0,
    max_request=MAX_REQUEST,
    workers=8,
)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


Handler = Callable[[dict[str, Any], Peer], dict[str, Any]]
# Called at accept with the kernel's word on the caller, before a byte is read: None admits,
# a reply refuses (sent, then the connection is closed).
Admit = Callable[[Peer], dict[str, Any] | None]


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def _encode(reply: dict[str, Any]) -> bytes:
    return (json.dumps(reply, default=str) + "\n").encode()


def _error(code: str, message: str) -> bytes:
    return _encode({"ok": False, "error": message, "code": code})


def _too_deep(doc: object, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: list[object] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def parse_request(line: bytes) -> dict[str, Any] | bytes:
    """The request object, or the error reply for a malformed one."""
    try:
        request = json.loads(line)
    except RecursionError:
        return _error("bad_request", f"bad request: nested deeper than {MAX_DEPTH} levels")
    except ValueError as exc:  # also bad UTF-8 (UnicodeDecodeError) and huge integers
        return _error("bad_request", f"bad request: {str(exc)[:200]}")
    if not isinstance(request, dict):
        return _error("bad_request", "bad request: request must be a JSON object")
    if _too_deep(request, MAX_DEPTH):
        return _error("bad_request", f"bad request: nested deeper than {MAX_DEPTH} levels")
    return request


class _ControlProtocol:
    def __init__(self, dispatch: Handler, admit: Admit | None) -> None:
        self._dispatch = dispatch
        self._admit = admit

    def admit(self, sock: socket.socket) -> object:
        peer = peer_of(sock)
        if self._admit is not None:
            refusal = self._admit(peer)
            if refusal is not None:
                raise Refused(_encode(refusal))
        return peer

    def complete(self, buf: bytearray, new_from: int) -> bool:
        return buf.find(b"\n", new_from) >= 0

    def answer(self, request: bytes, context: object) -> bytes:
        assert isinstance(context, Peer)
        parsed = parse_request(request.split(b"\n", 1)[0])
        if isinstance(parsed, bytes):
            return parsed
        try:
            return _encode(self._dispatch(parsed, context))
        except Exception:  # a verb must not raise; if one does, the caller still gets a reply
            log.exception("control_request_failed", verb=str(parsed.get("verb"))[:64])
            return _error("internal", "internal error (see the daemon's log)")

    def refusal(self, why: str) -> bytes:
        return {
            "too_large": _error("too_large", f"request too large (limit {MAX_REQUEST} bytes)"),
            "timeout": _error("timeout", "request not complete in time"),
            "busy": _error("busy", "too many control connections; try again"),
        }.get(why, _error("internal", "internal error (see the daemon's log)"))


class _Server:
    """The bound, listening socket (binding is its own step, so tests can see the mode bind()
    gives the socket file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.server_bind()
            self.socket.listen(BACKLOG)
        except OSError:
            self.socket.close()
            raise

    def server_bind(self) -> None:
        self.socket.bind(self.path)


class ControlServer:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        group: str | None = None,
        *,
        admit: Admit | None = None,
        limits: Limits = CONTROL_LIMITS,
    ) -> None:
        self.path = path
        self._handler = handler
        self._group = group
        self._admit = admit
        self._limits = limits
        self.listener: Listener | None = None

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path}: exists and is not a socket; refusing to replace it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(self.path)  # left by a daemon that died: nobody listens
                return
        raise ControlError(f"{self.path}: another daemon is listening on this control socket")

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        old = os.umask(0o117)  # the socket is born 0660, never wider
        try:
            server = _Server(str(self.path))
        except OSError as exc:
            raise ControlError(f"{self.path}: cannot bind control socket: {exc.strerror}") from exc
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        if self._group is not None:
            os.chown(self.path, -1, grp.getgrnam(self._group).gr_gid)
        protocol = _ControlProtocol(self._handler, self._admit)
        self.listener = Listener(server.socket, protocol, self._limits, "control")
        self.listener.start()

    def stop_accepting(self) -> None:
        """Stop taking connections (requests already being answered go on)."""
        if self.listener is not None:
            self.listener.stop_accepting()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, wait up to ``timeout`` for answers in progress, close."""
        listener = self.listener
        if listener is not None:
            listener.stop_accepting()
            listener.wait_idle(timeout)
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.listener = None


def request(path: Path, message: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Send one request to a running daemon. ``ControlError`` when nobody listens."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise ControlError(f"no daemon is listening on {path}", "absent") from exc
            # A caller refused at accept gets its reply without the daemon reading a byte, and
            # the daemon may close before this send: the reply is still there to read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall((json.dumps(message) + "\n").encode())
            buf = bytearray()  # a status of 10,000 services is megabytes: no bytes +=
            with contextlib.suppress(ConnectionResetError):
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
    except PermissionError as exc:
        raise ControlError(
            f"{path}: permission denied (are you in the socket's group?)", "denied"
        ) from exc
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from exc
    try:
        reply = json.loads(buf)
    except ValueError as exc:
        raise ControlError(f"{path}: daemon sent no valid reply") from exc
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: daemon sent no valid reply")
    return reply
