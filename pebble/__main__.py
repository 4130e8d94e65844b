"""Command line for a private loopback Pebble: ``python -m pebble serve|run``.

``serve`` starts Pebble, prints its addresses as one JSON object (optionally also writing it to a
file, removed again at exit) and runs until SIGINT/SIGTERM. ``run -- CMD ARGS...`` starts Pebble,
runs CMD with ``PEBBLE_DIRECTORY_URL``, ``PEBBLE_CA_BUNDLE``, ``PEBBLE_HTTP_PORT`` and
``PEBBLE_MANAGEMENT_URL`` in its environment, stops Pebble and exits with CMD's exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pebble.runner import PebbleServer, PebbleUnavailable


class _Terminated(Exception):
    """Raised in the main thread by the SIGTERM handler of ``run``."""


def _server_from_args(args: argparse.Namespace) -> PebbleServer:
    return PebbleServer(
        validity_seconds=args.validity,
        nonce_reject=args.nonce_reject,
        authz_reuse=args.authz_reuse,
        http_port=args.http_port,
    )


def _describe(server: PebbleServer) -> dict[str, Any]:
    return {
        "directory_url": server.directory_url,
        "ca_bundle": str(server.ca_bundle),
        "http_port": server.http_port,
        "tls_port": server.tls_port,
        "management_url": server.management_url,
        "dns_address": server.dns_address,
        "challtestsrv_management_url": server.challtestsrv_management_url,
        "workdir": str(server.workdir),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (readers never see a partial file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _serve(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before start: a signal during startup still leads to a clean stop.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    json_file: Path | None = args.json_file
    with _server_from_args(args) as server:
        info = _describe(server)
        print(json.dumps(info), flush=True)
        try:
            if json_file is not None:
                _write_json(json_file, info)
            stop.wait()
        finally:
            # The addresses die with the server: do not leave a stale file behind.
            if json_file is not None:
                json_file.unlink(missing_ok=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("pebble run: missing command after '--'", file=sys.stderr)
        return 2

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    server = _server_from_args(args)
    try:
        server.start()
        env = dict(os.environ)
        env.update(
            PEBBLE_DIRECTORY_URL=server.directory_url,
            PEBBLE_CA_BUNDLE=str(server.ca_bundle),
            PEBBLE_HTTP_PORT=str(server.http_port),
            PEBBLE_MANAGEMENT_URL=server.management_url,
        )
        # subprocess.run kills and reaps CMD if an exception interrupts the wait.
        code = subprocess.run(command, env=env, check=False).returncode
    except FileNotFoundError:
        print(f"pebble run: command not found: {command[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"pebble run: cannot execute: {command[0]}", file=sys.stderr)
        return 126
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Terminated:
        return 128 + signal.SIGTERM
    finally:
        # No signal may interrupt the cleanup: that would orphan Pebble.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.stop()
    # A CMD killed by signal N reports -N; exit like a shell would.
    return 128 - code if code < 0 else code


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--validity", type=int, metavar="SECONDS", help="certificate validity (default: 5 years)"
    )
    common.add_argument(
        "--nonce-reject", type=int, metavar="PERCENT", help="PEBBLE_WFE_NONCEREJECT (default 5)"
    )
    common.add_argument(
        "--authz-reuse", type=int, default=0, metavar="PERCENT", help="PEBBLE_AUTHZREUSE (0)"
    )
    common.add_argument(
        "--http-port", type=int, metavar="PORT", help="HTTP-01 port (default: a free one)"
    )

    parser = argparse.ArgumentParser(prog="python -m pebble", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", parents=[common], help="run until SIGINT/SIGTERM")
    serve.add_argument("--json-file", type=Path, metavar="PATH", help="also write the JSON here")
    serve.set_defaults(handler=_serve)
    run = sub.add_parser("run", parents=[common], help="run a command against Pebble")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except PebbleUnavailable as exc:
        print(f"pebble: {exc}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    except (RuntimeError, ValueError) as exc:
        print(f"pebble: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
