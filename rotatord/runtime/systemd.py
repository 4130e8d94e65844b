"""sd_notify without a dependency: READY/STOPPING/STATUS/WATCHDOG datagrams to $NOTIFY_SOCKET.

Rules: a no-op when not started by systemd; never raises into the caller (a lost notification
must not stop rotations, systemd's own timeouts cover it).
"""

from __future__ import annotations

import contextlib
import os
import socket


class SdNotifier:
    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self.watchdog_interval: float | None = (
            watchdog_usec / 1e6 / 2 if watchdog_usec else None  # ping at half the deadline
        )

    @classmethod
    def from_env(cls) -> SdNotifier:
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if raw and raw.isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> None:
        if not self._address:
            return
        addr = self._address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace socket
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
        ):
            sock.sendto("\n".join(lines).encode(), addr)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *(["STATUS=" + status] if status else []))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")
