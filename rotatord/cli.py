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
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from rotatord.clock import SystemClock
from rotatord.config import load_config
from rotatord.core.errors import ConfigError, RotatordError, UnknownServiceError
from rotatord.core.model import Config, Trigger
from rotatord.daemon import build_rotator
from rotatord.observe.logging import configure_logging
from rotatord.rotation import RotationResult, recover_service, service_status

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
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
    s = sub.add_parser("status", help="show each service's certificate and renewal state")
    s.add_argument("services", nargs="*", metavar="SERVICE")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _load(path: Path) -> Config:
    return load_config(path)


def _print_problems(exc: ConfigError) -> None:
    print(f"configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_check_config(config: Config) -> int:
    print(f"{config.source}: OK ({len(config.services)} services, {len(config.acme)} accounts)")
    return EXIT_OK


def cmd_rotate(config: Config, args: argparse.Namespace) -> int:
    names: list[str] = list(config.services) if args.all else list(args.services)
    if not names:
        print("rotate: name at least one SERVICE, or --all", file=sys.stderr)
        return EXIT_USAGE
    for n in names:
        if n not in config.services:
            print(f"rotate: unknown service {n!r} (not in {config.source})", file=sys.stderr)
            return EXIT_USAGE
    rotator = build_rotator(config)
    for n in names:
        recover_service(rotator, n, rotator.audit)

    def one(name: str) -> RotationResult:
        return rotator.rotate(name, trigger=Trigger.MANUAL, force=args.force, uid=os.getuid())

    workers = max(1, min(config.daemon.max_concurrent, len(names)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rotate") as pool:
        results = list(pool.map(one, names))
    failed = 0
    for res in results:
        if res.outcome == "rotated":
            print(
                f"{res.service}: rotated {res.old_serial or '-'} -> {res.new_serial} "
                f"({res.version})"
            )
        elif res.outcome == "not_due":
            print(f"{res.service}: not due ({res.reason}); use --force to rotate anyway")
        else:
            failed += 1
            print(f"{res.service}: {res.outcome}: {res.error}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _fmt_status(doc: dict[str, Any]) -> str:
    lines = [f"{doc['service']}:"]
    if doc.get("serial"):
        lines.append(f"  serial      {doc['serial']}")
        lines.append(f"  names       {', '.join(doc['names'])}")
        lines.append(f"  not after   {doc['not_after']}  ({doc['days_left']} days left)")
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
    rotator = build_rotator(config)
    now: datetime = SystemClock().now()
    try:
        docs = [service_status(rotator, n, now) for n in names]
    except UnknownServiceError as exc:
        print(f"status: {exc} (not in {config.source})", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"services": docs}, indent=2))
    else:
        print("\n".join(_fmt_status(d) for d in docs))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _load(args.config)
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
    except RotatordError as exc:
        print(f"rotatord: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE
