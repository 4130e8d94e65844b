"""The control socket: a Unix stream socket speaking one JSON object per line each way.

Verbs: ``status``, ``rotate`` (``service`` or ``all``, ``force``), ``reload-config``, ``ping``.
The caller's uid comes from SO_PEERCRED (the kernel's word, not the client's) and is refused
unless listed in ``[daemon] control_allowed_uids``. The socket is created 0660 (group from
config) under a private umask, so there is no instant at which it is open to everyone.

Rules: never trust anything the client says about who it is; one request per connection; bounded
request size.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rotatord.core.errors import ControlError

MAX_REQUEST = 64 * 1024


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


Handler = Callable[[dict[str, Any], Peer], dict[str, Any]]


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        peer = peer_of(self.request)
        line = self.rfile.readline(MAX_REQUEST + 1)
        if len(line) > MAX_REQUEST:
            reply: dict[str, Any] = {"ok": False, "error": "request too large"}
        else:
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
            except ValueError as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            else:
                reply = self.server.tracked_dispatch(request, peer)
        with contextlib.suppress(OSError):
            self.wfile.write((json.dumps(reply, default=str) + "\n").encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, dispatch: Handler) -> None:
        self.dispatch = dispatch
        # Requests being answered: a stop waits for them so a rotation asked for over the socket
        # finishes and its caller gets the reply, instead of the process exiting under it.
        self.busy = 0
        self.idle = threading.Condition()
        super().__init__(path, _RequestHandler)

    def tracked_dispatch(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        with self.idle:
            self.busy += 1
        try:
            return self.dispatch(request, peer)
        finally:
            with self.idle:
                self.busy -= 1
                self.idle.notify_all()


class ControlServer:
    def __init__(self, path: Path, handler: Handler, group: str | None = None) -> None:
        self.path = path
        self._handler = handler
        self._group = group
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

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
            server = _Server(str(self.path), self._handler)
        except OSError as exc:
            raise ControlError(f"{self.path}: cannot bind control socket: {exc.strerror}") from exc
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        if self._group is not None:
            os.chown(self.path, -1, grp.getgrnam(self._group).gr_gid)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="control", daemon=True
        )
        self._thread.start()

    def stop_accepting(self) -> None:
        """Stop taking connections (requests already being answered go on)."""
        if self._server is not None:
            self._server.shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, wait up to ``timeout`` for answers in progress, close."""
        server = self._server
        if server is not None:
            server.shutdown()
            with server.idle:
                server.idle.wait_for(lambda: not server.busy, timeout)
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._thread is not None:
            self._thread.join(timeout=5)


def request(path: Path, message: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Send one request to a running daemon. ``ControlError`` when nobody listens."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise ControlError(f"no daemon is listening on {path}") from exc
            sock.sendall((json.dumps(message) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except PermissionError as exc:
        raise ControlError(f"{path}: permission denied (are you in the socket's group?)") from exc
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from exc
    try:
        reply = json.loads(buf)
    except ValueError as exc:
        raise ControlError(f"{path}: daemon sent no valid reply") from exc
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: daemon sent no valid reply")
    return reply
