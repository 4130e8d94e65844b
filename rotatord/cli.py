"""The ``rotatord`` command: global options, the subcommand registry and the error boundary.

Part of the entry layer, thin by design: every decision lives below (rotation, policy, config).

Adding a subcommand: write a module ``rotatord/cli_<topic>.py`` with ``register(sub)`` calling
``cli_base.add_command(...)`` (summary, description, exit codes, handler) and add its name to
``COMMAND_MODULES``. Its handler gets a ``cli_base.Context`` and returns an exit code.

Rules: no traceback for a user error; every exit code a subcommand returns is listed in its
``--help`` (tests/test_cli_codes.py runs them all).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rotatord import __version__
from rotatord.cli_base import (
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    MEANING,
    Context,
    common_options,
    exit_codes_text,
    print_problems,
)
from rotatord.core.errors import ConfigError, ControlError, RotatordError

#: Modules that add subcommands, in the order ``rotatord --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "rotatord.cli_ops",
    "rotatord.cli_control",
    "rotatord.cli_audit",
    "rotatord.cli_account",
    "rotatord.cli_data",
    "rotatord.cli_setup",
)

DESCRIPTION = """\
rotatord keeps TLS certificates and their private keys fresh: for every service in its config
it gets a new key and certificate from an ACME CA (Let's Encrypt, or any RFC 8555 server) before
the old one runs out, installs key and chain as one atomic unit, reloads the programs that use
them and proves with a TLS handshake that they serve the new certificate.

The most common commands:

  run the daemon:
    run              what systemd starts (`rotatord systemd-unit` prints the unit)
    reload           make the running daemon re-read its config

  check and inspect:
    check-config     validate the config; every problem with its key path
    status           each certificate, its expiry and the next renewal

  act now:
    rotate           renew now if due (any time with --force)
    revoke           revoke a certificate and rotate to a new key

Commands talk to the running daemon over its control socket when it runs."""

EPILOG = f"""\
examples:
  rotatord example-config > /etc/rotatord/rotatord.toml
  rotatord check-config -c /etc/rotatord/rotatord.toml
  rotatord status
  rotatord rotate web --force

{exit_codes_text(MEANING)}

See 'rotatord COMMAND --help' for a command's options and its own exit codes."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rotatord",
        usage="rotatord [-c FILE] COMMAND [options]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(top=True)],
    )
    p.add_argument("--version", action="version", version=f"rotatord {__version__}")
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands", prog="rotatord"
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Context(args)
    try:
        return int(args.handler(ctx))
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_USAGE
    except ControlError as exc:
        print(f"rotatord {args.command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED if exc.reason == "denied" else EXIT_UNREACHABLE
    except RotatordError as exc:
        print(f"rotatord {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a file or directory this user may not touch, named
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rotatord {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
