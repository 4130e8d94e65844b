"""What ``check-config`` can tell at load time about the paths rotatord will write and trust:
every output path and every ``signal`` reload's pid file, checked by the same code the daemon
runs at write time (``deploy.paths``, ``deploy.pidfile``), without creating or signalling
anything.

An *error* is a path the daemon would refuse; a *warning* is one it will use but that someone
else can still change (an output below a directory owned by another user), or a pid file that
cannot be judged yet (its service is not running). Nothing here is a substitute for the write
time check: the filesystem can change after ``check-config`` ran.

Rules: read-only; never open a FIFO without O_NONBLOCK, never signal a process.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rotatord.core.errors import StoreError
from rotatord.core.model import Config, OutputFormat, OutputSpec, ReloadAction, SignalReload
from rotatord.deploy.paths import SafeDir, Trust, check_owned_root, check_slot, open_dir
from rotatord.deploy.pidfile import PidFileError, open_target


@dataclass(frozen=True)
class PathFinding:
    severity: str  # "error" (the daemon will refuse it) or "warning"
    key: str  # dotted config path, e.g. services.web.outputs[0].path
    message: str


def daemon_trust(config: Config) -> Trust:
    """Root plus the daemon's user and group, taken from the state directory the daemon owns
    (``check-config`` is often run as root for a daemon that runs as its own user); this
    process's when the state directory does not exist yet."""
    try:
        st = os.lstat(config.daemon.state_dir)
    except OSError:
        return Trust.of_process()
    return Trust.of(st.st_uid, st.st_gid)


def check_paths(config: Config, trust: Trust | None = None) -> list[PathFinding]:
    """Every output path and pid file of ``config`` as the daemon would judge it now."""
    trust = trust or daemon_trust(config)
    found: list[PathFinding] = []
    for name, spec in sorted(config.services.items()):
        for i, out in enumerate(spec.outputs):
            key = f"services.{name}.outputs[{i}].path"
            found.extend(PathFinding(sev, key, msg) for sev, msg in _output(out, trust))
        found.extend(_pid_files(f"services.{name}.reload", spec.reload, trust))
    for tname, target in sorted(config.reload_targets.items()):
        found.extend(_pid_files(f"reload_targets.{tname}.actions", target.actions, trust))
    return found


def _output(out: OutputSpec, trust: Trust) -> Iterator[tuple[str, str]]:
    is_dir = out.format is OutputFormat.DIRECTORY
    try:
        where = open_dir(out.path if is_dir else out.path.parent, trust, follow_last=not is_dir)
    except StoreError as exc:
        yield "error", str(exc)
        return
    except OSError as exc:
        yield "error", f"{out.path}: cannot check: {exc.strerror or exc}"
        return
    if where is None:
        return  # created by the daemon, as its own, when first published
    with where:
        try:
            if is_dir:
                check_owned_root(where, trust)
                _check_current(where)
            else:
                check_slot(where, out.path.name, out.path)
        except StoreError as exc:
            yield "error", str(exc)
            return
        if where.why_unsafe is not None:
            yield (
                "warning",
                f"{out.path}: will be written, but {where.why_unsafe}: that user can replace "
                "what consumers read between rotations (the daemon re-checks before each "
                "write); give the output a directory only root or the daemon's user can change",
            )


def _check_current(root: SafeDir) -> None:
    st = root.lstat("current")
    if st is not None and not stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{root.path / 'current'}: is not a symlink; refusing to replace it")


def _pid_files(prefix: str, actions: Sequence[ReloadAction], trust: Trust) -> list[PathFinding]:
    found = []
    for i, action in enumerate(actions):
        if not isinstance(action, SignalReload):
            continue
        key = f"{prefix}[{i}].pid_file"
        try:
            open_target(action.pid_file, action.executable, trust).close()
        except PidFileError as exc:
            found.append(PathFinding("warning" if exc.absent else "error", key, str(exc)))
    return found
