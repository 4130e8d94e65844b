"""``rotatord check-config``, ``run``, ``revoke`` and ``recover``.

Part of the entry layer: parse, call below, print, map to an exit code (see ``cli_base``).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

from rotatord.cli_base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Context,
    add_command,
    refused,
)
from rotatord.cli_local import print_results
from rotatord.core import policy
from rotatord.core.errors import RotatordError
from rotatord.core.model import Config
from rotatord.daemon import Daemon, DaemonLock, build_rotator
from rotatord.deploy.pathcheck import check_paths
from rotatord.rotation import (
    REVOCATION_REASONS,
    read_installed,
    recover_service,
    recover_state,
)
from rotatord.store import ServiceStore

if TYPE_CHECKING:
    from rotatord.cli_base import SubParsers

COMMON_LIFETIME = timedelta(days=90)


def cmd_check_config(ctx: Context) -> int:
    config = ctx.config()
    # Paths as the daemon will judge them at write time (it checks again then): an error is
    # one it would refuse, a warning one it would use but someone else can still change.
    findings = check_paths(config)
    errors = [f for f in findings if f.severity == "error"]
    for f in errors:
        print(f"error: {config.source}: {f.key}: {f.message}", file=sys.stderr)
    summary = f"{len(config.services)} services, {len(config.acme)} accounts"
    if errors:
        print(f"{config.source}: {len(errors)} path problem(s) ({summary})", file=sys.stderr)
    else:
        print(f"{config.source}: OK ({summary})")
    for line in renew_before_warnings(config):
        print(f"warning: {config.source}: {line}")
    for f in findings:
        if f.severity != "error":
            print(f"warning: {config.source}: {f.key}: {f.message}")
    return EXIT_USAGE if errors else EXIT_OK


def renew_before_warnings(config: Config) -> list[str]:
    """A ``renew_before`` the daemon will clamp: against the installed certificate when there
    is one (and it can be read), else against Let's Encrypt's 90 days (the common case)."""
    out = []
    for name, spec in sorted(config.services.items()):
        if spec.renew_before is None:
            continue
        lifetime, whose = COMMON_LIFETIME, "a 90-day (Let's Encrypt)"
        try:
            store = ServiceStore(config.daemon.state_dir, name)
            found = read_installed(store, with_key=False)
        except (OSError, RotatordError):
            found = None
        if found is not None:
            lifetime, whose = found.info.lifetime, "the installed"
        if policy.renew_before_clamped(lifetime, spec.renew_before):
            out.append(
                f"services.{name}.renew_before: too long for {whose} certificate; "
                + policy.clamp_message(spec.renew_before, lifetime)
            )
    return out


def cmd_run(ctx: Context) -> int:
    return Daemon(ctx.config_path).run()


def cmd_revoke(ctx: Context) -> int:
    args = ctx.args
    config = ctx.config()
    if args.service not in config.services:
        print(f"revoke: unknown service {args.service!r} (not in {config.source})", file=sys.stderr)
        return EXIT_USAGE
    socket = config.daemon.control_socket
    reply = ctx.request(socket, {"verb": "revoke", "service": args.service, "reason": args.reason})
    if reply is not None:
        if (code := refused("revoke", reply, socket)) is not None:
            return code
        if not reply.get("ok") and "revoked" not in reply:
            print(f"revoke: {reply.get('error')}", file=sys.stderr)
            return EXIT_FAILED
        revoked, results = reply.get("revoked"), reply.get("results", [])
    else:
        lock = DaemonLock(config.daemon.state_dir)
        lock.acquire()  # a daemon that does not listen but holds the state: refused (exit 1)
        try:
            rotator = build_rotator(config)
            try:
                revoked, result = rotator.revoke(args.service, args.reason, uid=os.getuid())
            finally:
                rotator.close()
        finally:
            lock.release()
        results = [result.summary()]
    print(f"{args.service}: revoked {revoked} ({args.reason})")
    return print_results(results)


def cmd_recover(ctx: Context) -> int:
    config = ctx.config()
    names = list(ctx.args.services) or list(config.services)
    for n in names:
        if n not in config.services:
            print(f"recover: unknown service {n!r} (not in {config.source})", file=sys.stderr)
            return EXIT_USAGE
    state = config.daemon.state_dir
    if state.exists() and not state.is_dir():
        print(f"recover: {state}: the state dir is not a directory", file=sys.stderr)
        return EXIT_FAILED
    rotator = build_rotator(config)
    try:
        for n in names:
            report = recover_service(rotator, n, rotator.audit, thorough=True)
            if report is None:
                print(f"{n}: nothing on disk")
                continue
            print(
                f"{n}: current={report.current} removed_temp={len(report.removed_temp)} "
                f"removed_incomplete={len(report.removed_incomplete)} "
                f"repointed={report.repointed_current or '-'}"
            )
    finally:
        rotator.close()
    # The ledgers and account files have no per-file lock: sweep them only while no daemon runs.
    lock = DaemonLock(config.daemon.state_dir)
    try:
        lock.acquire()
    except RotatordError:
        print("state: a daemon is running; it sweeps the budget and account files at start-up")
        return EXIT_OK
    try:
        removed = recover_state(config.daemon.state_dir)
    finally:
        lock.release()
    print(f"state: removed_temp={len(removed)}")
    return EXIT_OK


def register(sub: SubParsers) -> None:
    add_command(
        sub,
        "check-config",
        summary="validate the config and report every problem",
        description="Read the config and report every problem at once, each with its file and "
        "dotted key path; then check the paths it will write as the daemon would. Warnings "
        "(a renew_before the daemon will clamp, a path others can change) do not fail it.",
        exit_codes={
            EXIT_OK: "the config is valid (warnings may be printed)",
            EXIT_USAGE: "the config has problems (each is listed)",
        },
        handler=cmd_check_config,
        examples=("rotatord check-config -c /etc/rotatord/rotatord.toml",),
    )
    add_command(
        sub,
        "run",
        summary="run the daemon in the foreground (what systemd starts)",
        description="Run the daemon: recover the store, rotate what is due, schedule every "
        "service, serve the control socket and watch the config. Logs go to stdout (JSON "
        "when not a terminal); SIGTERM stops it after rotations in flight, SIGHUP reloads.",
        exit_codes={
            EXIT_OK: "stopped by SIGTERM",
            EXIT_FAILED: "another daemon holds the state dir, or the audit log is unwritable",
            EXIT_USAGE: "the config has problems",
        },
        handler=cmd_run,
    )
    rv = add_command(
        sub,
        "revoke",
        summary="revoke the current certificate and rotate to a new key",
        description="Revoke SERVICE's current certificate at the CA with REASON, rotate to a "
        "new key at once and destroy the revoked key. The daemon does it when it runs.",
        exit_codes={
            EXIT_OK: "revoked and rotated",
            EXIT_FAILED: "revocation or the rotation after it failed",
            EXIT_USAGE: "an unknown SERVICE or a config error",
            EXIT_UNREACHABLE: "the daemon did not answer",
            EXIT_REFUSED: "your uid is not in control_allowed_uids, or the socket is not yours",
        },
        handler=cmd_revoke,
        examples=("rotatord revoke web --reason keyCompromise",),
    )
    rv.add_argument("service", metavar="SERVICE")
    rv.add_argument("--reason", default="unspecified", choices=sorted(REVOCATION_REASONS))
    rc = add_command(
        sub,
        "recover",
        summary="repair what an interrupted rotation left on disk",
        description="Remove temp entries and incomplete versions an interrupted rotation left, "
        "repair a dangling `current`; with no daemon running, also sweep the temp files a kill "
        "left beside the budget ledgers and account files.",
        exit_codes={
            EXIT_OK: "repaired (or nothing to do)",
            EXIT_FAILED: "the state could not be repaired (the error is printed)",
            EXIT_USAGE: "an unknown SERVICE or a config error",
        },
        handler=cmd_recover,
    )
    rc.add_argument("services", nargs="*", metavar="SERVICE")
