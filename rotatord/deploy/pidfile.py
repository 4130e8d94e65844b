"""A ``signal`` reload's pid file, and the process it names, checked before anything is signalled.

Whoever can write the pid file chooses which process rotatord signals, so the file must be one
only the target's own user (or root) could have written, and the process must be one that user
could have signalled itself:

- the file is reached like an output (``deploy.paths``: no symlink an untrusted user could have
  planted), is a regular file with one link, and is writable by no one but its owner (group
  write only for root's or the daemon's group);
- it is owned by root, or by the user the process runs as: its real or saved uid, the test
  ``kill(2)`` applies, so a user can never make rotatord signal what they could not;
- optionally the process runs ``executable`` (``/proc/<pid>/exe``, an upgraded binary's
  `` (deleted)`` suffix ignored).

The process is held by a pidfd from before the check until the signal, so a pid reused in
between gets nothing (the signal goes to the exited process and fails).

Rules: never signal pid 0 or 1, or a process the checks did not pass; raise only ``PidFileError``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

from rotatord.core.errors import ReloadError, StoreError
from rotatord.deploy.paths import Trust, kind_of, open_dir

DELETED = " (deleted)"


class PidFileError(ReloadError):
    """A pid file or its process refused; ``absent`` when the file or process does not exist
    (at check-config time that is only a warning: the service may not be running yet)."""

    def __init__(self, message: str, *, absent: bool = False) -> None:
        super().__init__(message)
        self.absent = absent


@dataclass(frozen=True)
class Target:
    """A checked process, held by ``pidfd`` (close it with :meth:`close`)."""

    pid: int
    pidfd: int
    file_uid: int

    def send(self, sig: int) -> None:
        signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def _read(path: Path, trust: Trust) -> tuple[int, os.stat_result]:
    try:
        parent = open_dir(path.parent, trust, follow_last=True)
    except StoreError as exc:
        raise PidFileError(f"pid file {exc}") from exc
    if parent is None:
        raise PidFileError(f"pid file {path}: its directory does not exist", absent=True)
    with parent:
        try:
            fd = os.open(
                path.name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=parent.fd,
            )
        except FileNotFoundError as exc:
            raise PidFileError(f"pid file {path}: does not exist", absent=True) from exc
        except OSError as exc:
            raise PidFileError(f"pid file {path}: cannot open: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PidFileError(f"pid file {path}: is {kind_of(st.st_mode)}, not a regular file")
        if st.st_nlink > 1:
            raise PidFileError(f"pid file {path}: has {st.st_nlink} hard links; refusing it")
        if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid not in trust.gids):
            raise PidFileError(
                f"pid file {path}: is writable by others (mode {stat.S_IMODE(st.st_mode):04o}, "
                f"gid {st.st_gid}), who could name any process; refusing it"
            )
        raw = os.read(fd, 64)
    finally:
        os.close(fd)
    try:
        pid = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise PidFileError(f"pid file {path}: does not hold a pid") from exc
    if pid <= 1:
        raise PidFileError(f"pid file {path}: names pid {pid}; refusing to signal it")
    return pid, st


def _uids(pid: int) -> tuple[int, int, int]:
    """Real, effective and saved uid of ``pid`` from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("Uid:"):
                real, effective, saved = (int(v) for v in line.split()[1:4])
                return real, effective, saved
    raise OSError(f"/proc/{pid}/status has no Uid line")


def check_process(pid: int, file_uid: int, path: Path, executable: Path | None) -> None:
    """The process may be signalled on behalf of ``file_uid`` (and runs ``executable``)."""
    if file_uid != 0:
        try:
            real, _effective, saved = _uids(pid)
        except OSError as exc:
            raise PidFileError(
                f"pid file {path}: cannot see who runs pid {pid} ({exc}; with systemd's "
                "ProtectProc=invisible only root-owned pid files can be checked)"
            ) from exc
        if file_uid not in (real, saved):
            raise PidFileError(
                f"pid file {path}: is owned by uid {file_uid} but names pid {pid}, which runs "
                f"as uid {real}; a pid file must be owned by root or by its process's user"
            )
    if executable is not None:
        try:
            running = os.readlink(f"/proc/{pid}/exe").removesuffix(DELETED)
        except OSError as exc:
            raise PidFileError(
                f"pid file {path}: cannot see what pid {pid} runs ({exc.strerror})"
            ) from exc
        if os.path.realpath(executable) != running:
            raise PidFileError(
                f"pid file {path}: names pid {pid}, which runs {running}, not {executable}"
            )


def open_target(path: Path, executable: Path | None = None, trust: Trust | None = None) -> Target:
    """Read ``path``, check it and its process, and hold the process; PidFileError if refused."""
    trust = trust or Trust.of_process()
    pid, st = _read(path, trust)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError as exc:
        raise PidFileError(
            f"pid file {path}: names pid {pid}, which is not running", absent=True
        ) from exc
    except OSError as exc:
        raise PidFileError(f"pid file {path}: cannot open pid {pid}: {exc.strerror}") from exc
    target = Target(pid, pidfd, st.st_uid)
    try:
        check_process(pid, st.st_uid, path, executable)
        # Still the process we held: what /proc described was not a successor on a reused pid.
        target.send(0)
    except ProcessLookupError as exc:
        target.close()
        raise PidFileError(f"pid file {path}: pid {pid} exited while checked", absent=True) from exc
    except BaseException:
        target.close()
        raise
    return target
