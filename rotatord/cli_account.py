"""``rotatord account show|rollover|deactivate``: look at and change the ACME accounts.

Part of the entry layer (``cli.py`` delegates here): parse, call ``issuing.account_ops``,
print, map to an exit code (0 ok, 1 the CA or the files said no, 2 usage).

These run in this process even when a daemon runs: the account's flock orders them with the
daemon's own use of the account, and the daemon reads a rolled-over key before its next order.
Contacts need no command: the daemon sends the config's contacts at the first use of an
account whose contacts changed (``account show`` tells what was last sent).

Rules: never print key material; thumbprints (public) identify keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from rotatord.cli_base import Context, add_command, print_problems
from rotatord.clock import SystemClock
from rotatord.core.errors import ConfigError, RotatordError
from rotatord.core.model import Config
from rotatord.issuing import account_ops
from rotatord.issuing.account import account_dir
from rotatord.issuing.acme_issuer import AcmeIssuer
from rotatord.observe.audit import BoundAudit, open_audit

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

if TYPE_CHECKING:
    from rotatord.cli_base import SubParsers


def _handler(ctx: Context) -> int:
    try:
        config = ctx.config()
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_USAGE
    return run(config, ctx.args)


def register(sub: SubParsers) -> None:
    a = add_command(
        sub,
        "account",
        summary="show, roll over the key of, or deactivate ACME accounts",
        description="Look at and change the ACME accounts of [acme.<name>]: what is known "
        "here and at the CA, a key rollover (RFC 8555 7.3.5, crash-safe), deactivation.",
        exit_codes={EXIT_USAGE: "no account subcommand given"},
        handler=None,
    )
    verbs = a.add_subparsers(
        dest="account_command", required=True, metavar="COMMAND", prog="rotatord account"
    )
    codes = {
        EXIT_OK: "done",
        EXIT_FAILED: "the CA or the files said no",
        EXIT_USAGE: "unknown account or a config error",
    }
    s = add_command(
        verbs,
        "show",
        summary="what is known of each account, here and at the CA",
        description="Show each account (or the named ones): key thumbprint, account URL, "
        "contacts last sent, and what the CA says of it (unless --offline).",
        exit_codes=codes,
        handler=_handler,
        examples=("rotatord account show --offline",),
    )
    s.add_argument("accounts", nargs="*", metavar="NAME")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--offline", action="store_true", help="local files only; do not ask the CA")
    r = add_command(
        verbs,
        "rollover",
        summary="replace the account key (RFC 8555 7.3.5)",
        description="Generate a new account key and have the CA switch to it; the old key is "
        "kept until the CA confirmed the new one, so a kill at any point leaves a usable account.",
        exit_codes=codes,
        handler=_handler,
    )
    r.add_argument("name", metavar="NAME")
    d = add_command(
        verbs,
        "deactivate",
        summary="deactivate the account at the CA (final)",
        description="Deactivate the account at the CA; it cannot be undone (--yes confirms).",
        exit_codes=codes,
        handler=_handler,
    )
    d.add_argument("name", metavar="NAME")
    d.add_argument("--yes", action="store_true", help="confirm: deactivation cannot be undone")


def _issuer(config: Config, name: str) -> AcmeIssuer:
    return AcmeIssuer(config.acme[name], account_dir(config.daemon.state_dir, name), SystemClock())


def _audit(config: Config) -> BoundAudit:
    sink = open_audit(config, SystemClock(), echo=False)
    return BoundAudit(sink, {"trigger": "manual", "uid": os.getuid()})


def run(config: Config, args: argparse.Namespace) -> int:
    names = [args.name] if hasattr(args, "name") else list(args.accounts) or list(config.acme)
    for name in names:
        if name not in config.acme:
            known = ", ".join(sorted(config.acme)) or "none"
            print(
                f"account: unknown account {name!r} (not an [acme.<name>] in {config.source}; "
                f"defined: {known})",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if args.account_command == "show":
        return _show(config, names, args)
    if args.account_command == "deactivate" and not args.yes:
        print(
            f"account deactivate: this cannot be undone; the CA will refuse {args.name!r} for "
            "good. Run again with --yes to go ahead.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    issuer = _issuer(config, args.name)
    try:
        if args.account_command == "rollover":
            old, new = account_ops.rollover(issuer, _audit(config))
            print(f"{args.name}: account key rolled over {old} -> {new}")
        else:
            uri = account_ops.deactivate(issuer, _audit(config))
            print(f"{args.name}: deactivated {uri}")
    except RotatordError as exc:
        print(f"account {args.account_command} {args.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        issuer.close()
    return EXIT_OK


def _show(config: Config, names: list[str], args: argparse.Namespace) -> int:
    docs: list[dict[str, Any]] = []
    failed = 0
    for name in names:
        issuer = _issuer(config, name)
        try:
            doc = account_ops.describe(issuer, ask_ca=not args.offline)
        except RotatordError as exc:
            doc = account_ops.describe(issuer, ask_ca=False)
            doc["ca_error"] = str(exc)
            failed += 1
        finally:
            issuer.close()
        docs.append(doc)
    if args.json:
        print(json.dumps({"accounts": docs}, indent=2))
    else:
        for doc in docs:
            print(f"{doc['account']}:")
            for key in (
                "directory",
                "uri",
                "local_status",
                "ca_status",
                "key_thumbprint",
                "pending_key",
                "contact_config",
                "contact_sent",
                "ca_contact",
                "eab_kid",
                "ca_error",
            ):
                if key in doc and doc[key] not in (None, False):
                    value = doc[key]
                    shown = ", ".join(value) or "-" if isinstance(value, list) else value
                    print(f"  {key:<15} {shown}")
    return EXIT_FAILED if failed else EXIT_OK
