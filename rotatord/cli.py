"""Command line: parse arguments, run one command, map the outcome to an exit code.

Exit codes: 0 ok, 1 operation failed, 2 usage or config error, 3 daemon unreachable.
Thin by design: every decision lives below (rotation, policy, config).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rotatord import cli_audit
from rotatord.clock import SystemClock
from rotatord.config import load_config
from rotatord.core import policy
from rotatord.core.errors import ConfigError, ControlError, RotatordError
from rotatord.core.model import Config, Trigger
from rotatord.daemon import Daemon, DaemonLock, build_rotator
from rotatord.daemon.changes import format_plan
from rotatord.deploy.pathcheck import check_paths
from rotatord.observe.logging import configure_logging
from rotatord.rotation import read_installed, recover_service, recover_state, service_status
from rotatord.runtime import control
from rotatord.store import ServiceStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
COMMON_LIFETIME = timedelta(days=90)
DEFAULT_CONFIG = "/etc/rotatord/rotatord.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rotatord", description=__doc__.splitlines()[0])
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=Path(os.environ.get("ROTATORD_CONFIG", DEFAULT_CONFIG)),
        help=f"config file (default: $ROTATORD_CONFIG or {DEFAULT_CONFIG})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check-config", help="validate the config and report every problem")
    r = sub.add_parser("rotate", help="rotate services now if due (always with --force)")
    r.add_argument("services", nargs="*", metavar="SERVICE")
    r.add_argument("--all", action="store_true", help="every configured service")
    r.add_argument("--force", action="store_true", help="rotate even if not due")
    r.add_argument(
        "--local",
        action="store_true",
        help="rotate in this process even if a daemon runs (it still takes the service lock)",
    )
    s = sub.add_parser("status", help="show each service's certificate and renewal state")
    s.add_argument("services", nargs="*", metavar="SERVICE")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    rv = sub.add_parser("revoke", help="revoke the current certificate and rotate to a new key")
    rv.add_argument("service", metavar="SERVICE")
    rv.add_argument(
        "--reason",
        default="unspecified",
        choices=[
            "unspecified",
            "keyCompromise",
            "affiliationChanged",
            "superseded",
            "cessationOfOperation",
        ],
    )
    rc = sub.add_parser("recover", help="repair what an interrupted rotation left on disk")
    rc.add_argument("services", nargs="*", metavar="SERVICE")
    sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    sub.add_parser("reload", help="ask the running daemon to re-read its config")
    pl = sub.add_parser("plan", help="show what reloading a changed config would do; do nothing")
    pl.add_argument(
        "candidate",
        nargs="?",
        type=Path,
        metavar="NEW_CONFIG",
        help="the config to compare with the running one (default: the -c file as it is now)",
    )
    cli_audit.add_parsers(sub)
    return p


def _print_problems(exc: ConfigError) -> None:
    print(f"configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_check_config(config: Config) -> int:
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


def _daemon_request(config: Config, message: dict[str, Any]) -> dict[str, Any] | None:
    """The daemon's reply, or None when no daemon listens on the configured socket."""
    try:
        return control.request(config.daemon.control_socket, message)
    except ControlError as exc:
        if "no daemon is listening" in str(exc):
            return None
        raise


def _print_results(results: list[dict[str, Any]]) -> int:
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


def cmd_rotate(config: Config, args: argparse.Namespace) -> int:
    names: list[str] = list(config.services) if args.all else list(args.services)
    if not names:
        print("rotate: name at least one SERVICE, or --all", file=sys.stderr)
        return EXIT_USAGE
    for n in names:
        if n not in config.services:
            print(f"rotate: unknown service {n!r} (not in {config.source})", file=sys.stderr)
            return EXIT_USAGE
    if not args.local:
        reply = _daemon_request(config, {"verb": "rotate", "services": names, "force": args.force})
        if reply is not None:
            if "results" not in reply:
                print(f"rotate: daemon refused: {reply.get('error')}", file=sys.stderr)
                return EXIT_FAILED
            print(f"# done by the running daemon ({config.daemon.control_socket})")
            return _print_results(reply["results"])
        print(
            f"# no daemon listening on {config.daemon.control_socket}; rotating in this process",
            file=sys.stderr,
        )
    rotator = build_rotator(config)
    for n in names:
        recover_service(rotator, n, rotator.audit)

    try:
        local_results = rotator.rotate_batch(
            names, trigger=Trigger.MANUAL, force=args.force, uid=os.getuid()
        )
    finally:
        rotator.close()
    return _print_results([r.summary() for r in local_results])


def _left(seconds: int) -> str:
    days = seconds / 86400
    if seconds < 0:
        return "EXPIRED"
    if seconds < 3600:
        return f"{seconds} s left"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min left"
    return f"{days:.1f} days left"


def _fmt_status(doc: dict[str, Any]) -> str:
    lines = [f"{doc['service']}:"]
    if doc.get("serial"):
        lines.append(f"  serial      {doc['serial']}")
        lines.append(f"  names       {', '.join(doc['names'])}")
        lines.append(f"  not after   {doc['not_after']}  ({_left(doc['seconds_left'])})")
        lines.append(f"  version     {doc['version']}")
    else:
        lines.append("  no certificate installed")
    nxt = doc["next_action"]
    lines.append(
        f"  renewal     {'due now' if doc['due_now'] else 'at ' + nxt['at']} ({nxt['why']})"
    )
    lines.append(
        f"  last result {doc.get('last_result') or '-'}"
        + (f" ({doc['failures']} failures: {doc['last_error']})" if doc.get("failures") else "")
    )
    return "\n".join(lines)


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    names = list(args.services) or list(config.services)
    for n in names:
        if n not in config.services:
            print(f"status: unknown service {n!r} (not in {config.source})", file=sys.stderr)
            return EXIT_USAGE
    reply = _daemon_request(config, {"verb": "status", "services": names})
    if reply is not None and reply.get("ok"):
        docs = reply["services"]
        source = "daemon"
    else:
        if reply is not None:
            print(f"status: daemon refused: {reply.get('error')}", file=sys.stderr)
        rotator = build_rotator(config)
        now: datetime = SystemClock().now()
        docs = [service_status(rotator, n, now) for n in names]
        source = "files (no daemon running)"
    if not args.json:
        print(f"# from {source}")
    if args.json:
        print(json.dumps({"source": source, "services": docs}, indent=2))
    else:
        print("\n".join(_fmt_status(d) for d in docs))
    return EXIT_OK


def cmd_revoke(config: Config, args: argparse.Namespace) -> int:
    if args.service not in config.services:
        print(f"revoke: unknown service {args.service!r} (not in {config.source})", file=sys.stderr)
        return EXIT_USAGE
    reply = _daemon_request(
        config, {"verb": "revoke", "service": args.service, "reason": args.reason}
    )
    if reply is not None:
        if not reply.get("ok") and "revoked" not in reply:
            print(f"revoke: {reply.get('error')}", file=sys.stderr)
            return EXIT_FAILED
        revoked, results = reply.get("revoked"), reply.get("results", [])
    else:
        rotator = build_rotator(config)
        try:
            revoked, result = rotator.revoke(args.service, args.reason, uid=os.getuid())
        finally:
            rotator.close()
        results = [result.summary()]
    print(f"{args.service}: revoked {revoked} ({args.reason})")
    return _print_results(results)


def cmd_recover(config: Config, args: argparse.Namespace) -> int:
    names = list(args.services) or list(config.services)
    rotator = build_rotator(config)
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


def cmd_reload(config: Config, verb: str = "reload-config", candidate: Path | None = None) -> int:
    """``reload`` (apply) or ``plan`` (only say what applying ``candidate`` would do)."""
    name = "plan" if verb == "plan" else "reload"
    request: dict[str, Any] = {"verb": verb}
    if candidate is not None:
        request["config"] = str(candidate.absolute())
    try:
        reply = _daemon_request(config, request)
    except ControlError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if reply is None:
        print(f"{name}: no daemon listening on {config.daemon.control_socket}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if reply.get("ok") and verb == "plan":
        print("\n".join(format_plan(reply)))
        return EXIT_OK
    if reply.get("ok"):
        print(
            f"reloaded: added {reply.get('added')}, removed {reply.get('removed')}, "
            f"changed {reply.get('changed')}"
        )
        print("\n".join(format_plan(reply)))
        return EXIT_OK
    for problem in reply.get("problems") or [reply.get("error")]:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE if reply.get("problems") else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return Daemon(args.config).run()
    if args.command == "audit" and args.audit_command == "verify" and args.file is not None:
        return cli_audit.cmd_verify(args.file, args.key)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_USAGE
    configure_logging(
        config.daemon.log_format, stream=sys.stderr if args.command == "status" else None
    )
    try:
        if args.command == "check-config":
            return cmd_check_config(config)
        if args.command == "rotate":
            return cmd_rotate(config, args)
        if args.command == "status":
            return cmd_status(config, args)
        if args.command == "reload":
            return cmd_reload(config)
        if args.command == "plan":
            return cmd_reload(config, "plan", args.candidate)
        if args.command == "revoke":
            return cmd_revoke(config, args)
        if args.command == "recover":
            return cmd_recover(config, args)
        if args.command == "audit" and args.audit_command == "init-seal":
            return cli_audit.cmd_init_seal(config, args.out)
        if args.command == "audit":
            return cli_audit.cmd_verify(config.daemon.audit_log, args.key)
    except ControlError as exc:
        print(f"rotatord: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RotatordError as exc:
        print(f"rotatord: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE
