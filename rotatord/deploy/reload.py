"""Reload actions: run an argv, signal a pid file's process, or ``systemctl reload UNIT``.

The only module that imports ``subprocess``. Commands never pass through a shell; they get an
explicit, minimal environment (a fixed PATH plus ``ROTATORD_*`` variables naming *paths*, never
secrets), no stdin, their own process group (so a timeout kills the whole group), and captured
output of which only a short tail is kept for the audit log. A ``signal`` reload signals only
a process ``deploy.pidfile`` has checked (the pid file's owner could have signalled it itself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from rotatord.core.errors import ReloadError
from rotatord.core.model import CommandReload, ReloadAction, SignalReload, SystemdReload
from rotatord.deploy.pidfile import open_target

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
}
TAIL = 2000


@dataclass(frozen=True)
class ReloadResult:
    action: str
    returncode: int | None
    stdout_tail: str = ""
    stderr_tail: str = ""


class Reloader(Protocol):
    """Runs one reload action.

    Contract: returns only when the action finished successfully; raises ``ReloadError`` with
    ``returncode``/``timed_out``/``stderr_tail`` otherwise; never blocks past the action's timeout
    (plus a short grace to reap); never hands a secret to the action.
    """

    def run(self, action: ReloadAction, env: Mapping[str, str]) -> ReloadResult: ...


def describe(action: ReloadAction) -> str:
    if isinstance(action, CommandReload):
        return "command:" + " ".join(action.argv)
    if isinstance(action, SignalReload):
        return f"signal:{action.signal.name}:{action.pid_file}"
    return f"systemd:{action.unit}"


def _tail(data: bytes) -> str:
    return data[-TAIL:].decode("utf-8", "replace")


class SubprocessReloader:
    def run(self, action: ReloadAction, env: Mapping[str, str]) -> ReloadResult:
        if isinstance(action, CommandReload):
            return self._command(list(action.argv), action.timeout_seconds, {**env, **action.env})
        if isinstance(action, SystemdReload):
            return self._command(
                ["systemctl", "reload", "--", action.unit], action.timeout_seconds, dict(env)
            )
        return self._signal(action)

    def _command(self, argv: list[str], timeout: float, extra: Mapping[str, str]) -> ReloadResult:
        desc = "command:" + " ".join(argv)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**BASE_ENV, **extra},
                close_fds=True,
                start_new_session=True,
                cwd="/",
            )
        except OSError as exc:
            raise ReloadError(f"{desc}: cannot start: {exc.strerror}") from exc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            # Kill the whole group: a reload script's children must not outlive its timeout.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise ReloadError(
                f"{desc}: timed out after {timeout:g}s",
                timed_out=True,
                stderr_tail=_tail(err),
            ) from exc
        if proc.returncode != 0:
            raise ReloadError(
                f"{desc}: exited with status {proc.returncode}",
                returncode=proc.returncode,
                stderr_tail=_tail(err),
            )
        return ReloadResult(desc, proc.returncode, _tail(out), _tail(err))

    def _signal(self, action: SignalReload) -> ReloadResult:
        desc = describe(action)
        # Whoever can write the pid file picks the process: open_target checks the file, that
        # its process is one the file's owner could signal, and holds it by pidfd until sent.
        try:
            target = open_target(action.pid_file, action.executable)
        except ReloadError as exc:
            raise ReloadError(f"{desc}: {exc}") from exc
        try:
            target.send(action.signal)
        except OSError as exc:
            raise ReloadError(f"{desc}: cannot signal pid {target.pid}: {exc.strerror}") from exc
        finally:
            target.close()
        return ReloadResult(desc, 0)
