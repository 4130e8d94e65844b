"""Process lifecycle pieces: the state-directory lock and signal plumbing.

Rules: a signal handler only writes one byte to a pipe (async-signal-safe); everything else
happens on the main loop.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from rotatord.core.errors import RotatordError
from rotatord.fsutil import ensure_tree


class DaemonLock:
    """``<state>/daemon.lock``: a second daemon on the same state dir refuses to start."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            ensure_tree(self.path.parent, 0o755)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RotatordError(f"{self.path}: cannot open: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise RotatordError(
                f"{self.path}: another rotatord daemon is running on this state directory"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def handler_for(fn: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        fn()

    return handler


def install_signals(handlers: dict[signal.Signals, Callable[[], None]]) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig, fn in handlers.items():
        previous[sig] = signal.signal(sig, handler_for(fn))
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
