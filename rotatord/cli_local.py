"""``rotatord rotate --local`` (and ``rotate`` with no daemon listening): rotate in this process.

Part of the entry layer. Two rules make it safe beside a daemon:

- It takes the daemon's own ``<state>/daemon.lock`` first, before a key is generated or a
  status written: while a daemon runs on the state dir it is refused up front (exit 1) and
  touches nothing; while it runs, a daemon cannot start (it would refuse the same way).
- Run as root on a state dir another user owns (the daemon's user), it becomes that user
  (``initgroups``, ``setgid``, ``setuid``) before touching the store, so every version, status
  and lock file it leaves is one the daemon can read, replace and prune. It then has exactly
  the daemon's rights, for output owners and reload actions too.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotatord.cli_base import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from rotatord.core.errors import RotatordError
from rotatord.core.model import Trigger
from rotatord.daemon import DaemonLock, build_rotator
from rotatord.rotation import recover_service

if TYPE_CHECKING:
    from rotatord.cli_base import Context


def print_results(results: list[dict[str, Any]]) -> int:
    failed = 0
    for res in results:
        if res["outcome"] == "rotated":
            print(
                f"{res['service']}: rotated {res.get('old_serial') or '-'} -> "
                f"{res.get('new_serial')} ({res.get('version')})"
            )
        elif res["outcome"] == "not_due":
            print(f"{res['service']}: not due ({res.get('reason')}); use --force to rotate anyway")
        else:
            failed += 1
            print(f"{res['service']}: {res['outcome']}: {res.get('error')}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def become_state_owner(state_dir: Path) -> str | None:
    """As root, become the owner of ``state_dir`` when that is another user; the user's name
    (None when nothing changed: not root, root's own or a missing state dir)."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        return None
    if st.st_uid == 0:
        return None
    try:
        entry = pwd.getpwuid(st.st_uid)
        name, gid = entry.pw_name, entry.pw_gid
        os.initgroups(name, gid)
    except KeyError:  # a uid without a passwd entry: its own group only
        name, gid = str(st.st_uid), st.st_gid
        os.setgroups([])
    os.setgid(gid)
    os.setuid(st.st_uid)
    return name


def rotate_local(ctx: Context) -> int:
    args = ctx.args
    config = ctx.config()
    names: list[str] = list(config.services) if args.all else list(args.services)
    for n in names:
        if n not in config.services:
            print(f"rotate: unknown service {n!r} (not in {config.source})", file=sys.stderr)
            return EXIT_USAGE
    state = config.daemon.state_dir
    caller = os.getuid()  # audited as the one who asked, whoever the rotation then runs as
    user = become_state_owner(state)
    if user is not None:
        print(f"# running as {user}, the owner of {state} (the daemon's user)", file=sys.stderr)
    lock = DaemonLock(state)
    try:
        lock.acquire()
    except RotatordError as exc:
        print(
            f"rotate --local: refused, nothing was done: {exc}. Ask the daemon instead: "
            f"rotatord rotate {' '.join(names) if not args.all else '--all'}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        rotator = build_rotator(config)
        try:
            for n in names:
                recover_service(rotator, n, rotator.audit)
            results = rotator.rotate_batch(
                names, trigger=Trigger.MANUAL, force=args.force, uid=caller
            )
        finally:
            rotator.close()
    finally:
        lock.release()
    return print_results([r.summary() for r in results])
