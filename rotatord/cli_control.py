"""``rotatord status``, ``rotate`` and ``reload``: the subcommands that ask the running daemon.

Part of the entry layer. They need no readable config when a daemon answers (``--socket``, or
the socket named in a config that does not validate): a ``control_socket_group`` admin cannot
read the 0640 config, and a broken config on disk must not stop anyone from asking the daemon,
which still runs on its last good one.

Rules: a refused caller (uid not in ``control_allowed_uids``) is told so and gets exit 4, never a
fall-back to files it may not read; only when no daemon listens does ``status`` read the disk and
``rotate`` rotate in this process (``cli_local``).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotatord import cli_local
from rotatord.cli_base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Context,
    add_command,
    print_problems,
    refused,
)
from rotatord.clock import SystemClock
from rotatord.core.errors import ConfigError, RotatordError
from rotatord.core.model import Config
from rotatord.daemon import build_rotator
from rotatord.daemon.changes import format_plan
from rotatord.rotation import service_status

if TYPE_CHECKING:
    from rotatord.cli_base import SubParsers


def _config_or_problem(ctx: Context) -> tuple[Config | None, ConfigError | None]:
    try:
        return ctx.config(), None
    except ConfigError as exc:
        return None, exc


def _unknown(command: str, names: list[str], config: Config) -> int | None:
    for n in names:
        if n not in config.services:
            print(f"{command}: unknown service {n!r} (not in {config.source})", file=sys.stderr)
            return EXIT_USAGE
    return None


def _warn_broken(command: str, ctx: Context, problem: ConfigError | None) -> None:
    if problem is not None:
        print(
            f"warning: {ctx.config_path}: cannot be used ({problem.problems[0].message}); "
            "the running daemon keeps its last good config",
            file=sys.stderr,
        )


def _daemon_error(command: str, reply: dict[str, Any], socket: Path) -> int:
    code = refused(command, reply, socket)
    if code is not None:
        return code
    print(f"{command}: {reply.get('error')}", file=sys.stderr)
    return EXIT_USAGE if reply.get("code") == "unknown" else EXIT_FAILED


# --- rotate -------------------------------------------------------------------------------


def cmd_rotate(ctx: Context) -> int:
    args = ctx.args
    if not args.services and not args.all:
        print("rotate: name at least one SERVICE, or --all", file=sys.stderr)
        return EXIT_USAGE
    if args.local:
        return cli_local.rotate_local(ctx)
    socket, _ = ctx.socket()
    config, problem = _config_or_problem(ctx)
    if config is not None and (bad := _unknown("rotate", list(args.services), config)):
        return bad
    message: dict[str, Any] = {"verb": "rotate", "force": args.force}
    if args.all:
        message["all"] = True
    else:
        message["services"] = list(args.services)
    reply = ctx.request(socket, message)
    if reply is None:
        if problem is not None:
            print(f"rotate: no daemon listening on {socket}", file=sys.stderr)
            print_problems(problem)
            return EXIT_USAGE
        print(f"# no daemon listening on {socket}; rotating in this process", file=sys.stderr)
        return cli_local.rotate_local(ctx)
    if "results" not in reply:
        return _daemon_error("rotate", reply, socket)
    _warn_broken("rotate", ctx, problem)
    print(f"# done by the running daemon ({socket})")
    return cli_local.print_results(reply["results"])


# --- status -------------------------------------------------------------------------------


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
        if doc.get("issued_by"):
            lines.append(f"  issued by   {doc['issued_by']} ({doc['issuer_directory']})")
    else:
        lines.append("  no certificate installed")
    if "account_in_use" in doc:
        lines.append(f"  account     {doc['account_in_use']} of {', '.join(doc['accounts'])}")
    nxt = doc["next_action"]
    lines.append(
        f"  renewal     {'due now' if doc['due_now'] else 'at ' + nxt['at']} ({nxt['why']})"
    )
    lines.append(
        f"  last result {doc.get('last_result') or '-'}"
        + (f" ({doc['failures']} failures: {doc['last_error']})" if doc.get("failures") else "")
    )
    return "\n".join(lines)


def _from_disk(
    socket: Path, config: Config | None, problem: ConfigError | None, names: list[str]
) -> list[dict[str, Any]] | int:
    where = f"status: no daemon listening on {socket}"
    if config is None:
        print(
            f"{where}, and the config cannot be used to read the state from disk:", file=sys.stderr
        )
        if problem is not None:
            print_problems(problem)
        return EXIT_UNREACHABLE
    try:
        rotator = build_rotator(config)
        now: datetime = SystemClock().now()
        try:
            return [service_status(rotator, n, now) for n in names or list(config.services)]
        finally:
            rotator.close()
    except (OSError, RotatordError) as exc:
        detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
        print(f"{where}, and the state on disk cannot be read: {detail}", file=sys.stderr)
        return EXIT_UNREACHABLE


def cmd_status(ctx: Context) -> int:
    args = ctx.args
    names = list(args.services)
    socket, _ = ctx.socket()
    config, problem = _config_or_problem(ctx)
    if config is not None and (bad := _unknown("status", names, config)):
        return bad
    reply = ctx.request(socket, {"verb": "status", "services": names})
    if reply is None:
        found = _from_disk(socket, config, problem, names)
        if isinstance(found, int):
            return found
        docs, source = found, "files (no daemon running)"
    elif reply.get("ok"):
        _warn_broken("status", ctx, problem)
        docs, source = reply["services"], "daemon"
    else:
        return _daemon_error("status", reply, socket)
    if args.json:
        print(json.dumps({"source": source, "services": docs}, indent=2))
    else:
        print(f"# from {source}")
        print("\n".join(_fmt_status(d) for d in docs))
    return EXIT_OK


# --- reload -------------------------------------------------------------------------------


def cmd_reload(ctx: Context) -> int:
    """``reload`` (apply) or ``plan`` (only say what applying a config would do)."""
    plan = ctx.args.command == "plan"
    name = "plan" if plan else "reload"
    request: dict[str, Any] = {"verb": "plan" if plan else "reload-config"}
    candidate = getattr(ctx.args, "candidate", None)
    if candidate is not None:
        request["config"] = str(candidate.absolute())
    socket, _ = ctx.socket()
    reply = ctx.request(socket, request)
    if reply is None:
        print(f"{name}: no daemon listening on {socket}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if reply.get("ok"):
        if not plan:
            print(
                f"reloaded: added {reply.get('added')}, removed {reply.get('removed')}, "
                f"changed {reply.get('changed')}"
            )
        print("\n".join(format_plan(reply)))
        return EXIT_OK
    if reply.get("problems"):
        what = "would reject" if plan else "rejected"
        print(f"{name}: the daemon {what} the new config and keeps the old one:", file=sys.stderr)
        for problem in reply["problems"]:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    return _daemon_error(name, reply, socket)


def register(sub: SubParsers) -> None:
    r = add_command(
        sub,
        "rotate",
        summary="renew services now if due (any time with --force)",
        description="Get a new key and certificate for each SERVICE now, if it is due (always "
        "with --force), deploy it, reload its consumers and probe them. A running daemon does "
        "it (your uid is audited); with no daemon listening, or with --local, it runs in this "
        "process.",
        exit_codes={
            EXIT_OK: "every service rotated, or was not due",
            EXIT_FAILED: "a rotation failed (its error is printed), or --local while a daemon runs",
            EXIT_USAGE: "no SERVICE, an unknown SERVICE, or (no daemon) a config error",
            EXIT_UNREACHABLE: "the daemon did not answer (no valid reply, timeout)",
            EXIT_REFUSED: "your uid is not in control_allowed_uids, or the socket is not yours",
        },
        handler=cmd_rotate,
        examples=("rotatord rotate web", "rotatord rotate --all --force"),
    )
    r.add_argument("services", nargs="*", metavar="SERVICE")
    r.add_argument("--all", action="store_true", help="every configured service")
    r.add_argument("--force", action="store_true", help="rotate even if not due")
    r.add_argument(
        "--local",
        action="store_true",
        help="rotate in this process; refused while a daemon runs on the state dir. As root, "
        "runs as the state dir's owner (the daemon's user)",
    )
    s = add_command(
        sub,
        "status",
        summary="show each service's certificate and renewal plan",
        description="For each SERVICE (default: all): serial, names, expiry, the next action "
        "and why, the current version and the last result. From the running daemon; from the "
        "files on disk only when no daemon listens.",
        exit_codes={
            EXIT_OK: "status shown",
            EXIT_FAILED: "the daemon could not answer the request",
            EXIT_USAGE: "an unknown SERVICE",
            EXIT_UNREACHABLE: "no daemon answered and the state cannot be read from disk",
            EXIT_REFUSED: "your uid is not in control_allowed_uids, or the socket is not yours",
        },
        handler=cmd_status,
        examples=(
            "rotatord status",
            "rotatord status web --json",
            "rotatord status --socket /run/rotatord/control.sock",
        ),
    )
    s.add_argument("services", nargs="*", metavar="SERVICE")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(log_to_stderr=True)
    add_command(
        sub,
        "reload",
        summary="make the running daemon re-read its config",
        description="Ask the daemon to re-read its config file (the same as SIGHUP or "
        "editing the file, which it watches). A config with problems is rejected and the "
        "daemon keeps the old one.",
        exit_codes={
            EXIT_OK: "the new config is in use",
            EXIT_FAILED: "the daemon could not reload (e.g. the audit log is unwritable)",
            EXIT_USAGE: "the new config has problems (listed); the old one stays",
            EXIT_UNREACHABLE: "no daemon is listening",
            EXIT_REFUSED: "your uid is not in control_allowed_uids, or the socket is not yours",
        },
        handler=cmd_reload,
    )
    pl = add_command(
        sub,
        "plan",
        summary="show what reloading a changed config would do; do nothing",
        description="Ask the running daemon what applying NEW_CONFIG (default: the -c file as "
        "it is now) would do: services to issue, re-key, re-deploy or stop managing, new "
        "outputs, and settings that need a restart. Nothing is changed.",
        exit_codes={
            EXIT_OK: "the plan is printed",
            EXIT_FAILED: "the daemon could not make the plan",
            EXIT_USAGE: "the new config has problems (listed)",
            EXIT_UNREACHABLE: "no daemon is listening",
            EXIT_REFUSED: "your uid is not in control_allowed_uids, or the socket is not yours",
        },
        handler=cmd_reload,
        examples=("rotatord plan /etc/rotatord/rotatord.toml.new",),
    )
    pl.add_argument(
        "candidate",
        nargs="?",
        type=Path,
        metavar="NEW_CONFIG",
        help="the config to compare with the running one (default: the -c file as it is now)",
    )
