"""Walking to an output's directory without being steered by anyone else.

An output path is opened one component at a time, each relative to the directory before it
(``openat`` with ``O_DIRECTORY|O_NOFOLLOW``), and each directory is checked through the open
descriptor, so what is checked is what is used: nobody can swap a component between the check
and the write. The rules, with *trusted* meaning root or the daemon's own user (and for group
write: root's group or the daemon's group):

- a directory writable by others is refused, unless it is sticky and owned by a trusted user
  (``/tmp``); in a sticky directory only entries owned by a trusted user count as safe;
- once a directory is owned by someone untrusted (or is reached through one), everything below
  it can be swapped by that user, so from there on a symlink is refused. Above that point a
  symlink (``/var/run -> /run``) could only have been made by root and is followed;
- a directory output's root itself is never followed.

Writes then go through ``FsOps`` with paths of the form ``/proc/self/fd/N/name``: the kernel
resolves ``/proc/self/fd/N`` to the open directory itself, without walking its path again, so
the crash- and fault-injection seam stays while the check cannot go stale.

Rules: never follow a symlink an untrusted user could have made; never raise anything but
``StoreError`` (naming the offending component) for a refused path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from rotatord.core.errors import StoreError
from rotatord.fsutil import DEFAULT_OPS, FsOps

MAX_LINKS = 40  # what the kernel allows in one path resolution (ELOOP past it)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Trust:
    """Who may own what a rotatord output sits in: root and the daemon's user and group."""

    uids: frozenset[int]
    gids: frozenset[int]

    @classmethod
    def of_process(cls) -> Trust:
        return cls(frozenset({0, os.geteuid()}), frozenset({0, os.getegid()}))

    @classmethod
    def of(cls, uid: int, gid: int) -> Trust:
        return cls(frozenset({0, uid}), frozenset({0, gid}))

    def writable_by_others(self, st: os.stat_result) -> bool:
        mode = st.st_mode
        return bool(mode & stat.S_IWOTH or (mode & stat.S_IWGRP and st.st_gid not in self.gids))

    def describe(self) -> str:
        return "root" + "".join(f" or uid {u}" for u in sorted(self.uids - {0}))


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


class SafeDir:
    """An open directory reached by :func:`open_dir`; ``at(name)`` names an entry in it."""

    def __init__(self, fd: int, path: Path, st: os.stat_result, why_unsafe: str | None) -> None:
        self.fd = fd
        self.path = path  # as configured (for messages); never used to reach the directory
        self.st = st
        # None while only trusted users can change this directory's own entry and every one
        # above it; else why not (named in refusals of symlinks below it).
        self.why_unsafe = why_unsafe

    def at(self, name: str) -> Path:
        return Path(f"/proc/self/fd/{self.fd}") / name

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


def _checked(fd: int, path: Path, trust: Trust, parent: SafeDir | None) -> SafeDir:
    """Wrap an open directory, refusing one others can write to (sticky and trusted: allowed)."""
    st = os.fstat(fd)
    if trust.writable_by_others(st) and not (st.st_mode & stat.S_ISVTX and st.st_uid in trust.uids):
        os.close(fd)
        raise StoreError(
            f"{path}: directory is writable by others (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"uid {st.st_uid}, gid {st.st_gid}) and not sticky-and-owned by {trust.describe()}; "
            "anyone could swap what is below it"
        )
    why = None if parent is None else parent.why_unsafe
    if why is None and parent is not None and _entry_unsafe(parent, st, trust):
        why = f"{parent.path} lets others replace it"
    if why is None and st.st_uid not in trust.uids:
        why = f"{path} is owned by uid {st.st_uid}, not {trust.describe()}"
    return SafeDir(fd, path, st, why)


def _entry_unsafe(parent: SafeDir, st: os.stat_result, trust: Trust) -> bool:
    """Could someone untrusted replace this entry of ``parent`` (a sticky, shared directory)?"""
    return trust.writable_by_others(parent.st) and st.st_uid not in trust.uids


def open_dir(
    path: Path,
    trust: Trust,
    *,
    create_mode: int | None = None,
    follow_last: bool = False,
    ops: FsOps = DEFAULT_OPS,
) -> SafeDir | None:
    """Open directory ``path`` under the rules above; ``path`` itself is a symlink followed
    only with ``follow_last`` (a file's parent: yes; a directory output's root: never).

    Missing components are created with ``create_mode`` (owned by us), or, when it is None,
    the walk stops and returns None. Raises StoreError naming the component that is refused
    or could not be opened.
    """
    if not path.is_absolute():
        raise StoreError(f"{path}: must be an absolute path")
    todo = [p for p in path.parts[1:] if p not in ("", ".")]
    shown = Path("/")
    stack: list[SafeDir] = []
    links = 0
    try:
        stack.append(_checked(os.open("/", DIR_FLAGS), shown, trust, None))
        while todo:
            name = todo.pop(0)
            here = stack[-1]
            if name == "..":
                if len(stack) > 1:
                    stack.pop().close()
                shown = shown.parent
                continue
            shown = shown / name
            st = here.lstat(name)
            if st is None:
                if create_mode is None:
                    return None
                with contextlib.suppress(FileExistsError):  # someone else's: looked at below
                    ops.mkdir(here.at(name), create_mode)
                st = here.lstat(name)
                if st is None:
                    raise StoreError(f"{shown}: vanished while being created")
            last = not todo
            if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                if here.why_unsafe is not None or _entry_unsafe(here, st, trust):
                    why = here.why_unsafe or f"{here.path} lets others replace it"
                    raise StoreError(f"{shown}: is a symlink, and {why}; refusing to follow it")
                links += 1
                if links > MAX_LINKS:
                    raise StoreError(f"{path}: too many levels of symbolic links")
                target = os.readlink(name, dir_fd=here.fd)
                if target.startswith("/"):
                    for d in stack[1:]:
                        d.close()
                    del stack[1:]
                    shown = Path("/")
                else:
                    shown = shown.parent
                todo[:0] = [p for p in Path(target).parts if p not in ("/", "", ".")]
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise StoreError(f"{shown}: is {kind_of(st.st_mode)}, not a directory; refusing it")
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=here.fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise StoreError(f"{shown}: changed while being checked ({exc.strerror})") from exc
            stack.append(_checked(fd, path if last else shown, trust, here))
        return stack.pop()
    except OSError as exc:  # EACCES, ENOSPC, EIO, ... on the way: name where it happened
        raise StoreError(f"{shown}: cannot open or create: {exc.strerror or exc}") from exc
    finally:
        for d in stack:
            d.close()


def check_slot(parent: SafeDir, name: str, path: Path) -> os.stat_result | None:
    """What is at ``parent/name`` may be replaced by a new regular file: nothing, or a regular
    file with one link. Anything else (symlink, FIFO, device, socket, directory, hard link)
    raises StoreError naming ``path``. Returns what is there."""
    st = parent.lstat(name)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(
            f"{path}: is {kind_of(st.st_mode)}, not a regular file; refusing to replace it"
        )
    if st.st_nlink > 1:
        raise StoreError(f"{path}: has {st.st_nlink} hard links; refusing to replace it")
    return st


def check_owned_root(root: SafeDir, trust: Trust) -> None:
    """A directory output's root holds ``current``: only we (or root) may be able to change it."""
    st = root.st
    if st.st_uid not in trust.uids or trust.writable_by_others(st):
        raise StoreError(
            f"{root.path}: a directory output's root must be owned by {trust.describe()} and "
            f"writable by no one else; it is uid {st.st_uid}, gid {st.st_gid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}; refusing to publish into it"
        )
