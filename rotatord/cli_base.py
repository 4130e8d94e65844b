"""What every ``rotatord`` subcommand shares: exit codes, how a subcommand is declared (with
its description and EXIT CODES section), and the lazily loaded config and control socket.

Part of the entry layer. A subcommand module has one function, ``register(sub)``, that calls
:func:`add_command` once per subcommand; ``cli.COMMAND_MODULES`` lists the modules.

Rules: a handler returns an exit code and never lets a user error escape as a traceback (the
boundary in ``cli.main`` maps ``ConfigError`` to 2, ``ControlError`` to 3, any other
``RotatordError`` or ``OSError`` to 1, each as one line naming what failed).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from rotatord.config import load_config
from rotatord.core.errors import ConfigError, ControlError
from rotatord.core.model import Config, DaemonSpec
from rotatord.observe.logging import configure_logging
from rotatord.runtime import control

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED = 0, 1, 2, 3, 4
DEFAULT_CONFIG = "/etc/rotatord/rotatord.toml"
DEFAULT_SOCKET = DaemonSpec().control_socket

Handler = Callable[["Context"], int]
if TYPE_CHECKING:
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

#: The meaning every subcommand gives a code (a subcommand lists those it can return).
MEANING = {
    EXIT_OK: "success",
    EXIT_FAILED: "the operation failed",
    EXIT_USAGE: "usage or configuration error",
    EXIT_UNREACHABLE: "the daemon did not answer",
    EXIT_REFUSED: "the daemon refused you (control_allowed_uids) or the socket is not yours",
}


def common_options(*, top: bool) -> argparse.ArgumentParser:
    """``-c`` and ``--socket``, accepted before and after the subcommand (the subcommand's copy
    leaves the value alone unless given there: ``SUPPRESS``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options")
    g.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        default=None if top else argparse.SUPPRESS,
        help=f"config file (default: $ROTATORD_CONFIG, else {DEFAULT_CONFIG})",
    )
    g.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="the daemon's control socket (default: [daemon] control_socket from the config, "
        f"else {DEFAULT_SOCKET}); lets a socket-group member who cannot read the config talk "
        "to the daemon",
    )
    return p


def exit_codes_text(codes: dict[int, str]) -> str:
    lines = ["exit codes:"]
    lines += [f"  {code}  {text}" for code, text in sorted(codes.items())]
    return "\n".join(lines)


def add_command(
    sub: SubParsers,
    name: str,
    *,
    summary: str,
    description: str,
    exit_codes: dict[int, str],
    handler: Handler | None,
    examples: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """Declare one subcommand: ``summary`` is its line in ``rotatord --help``, ``description``
    opens its own ``--help``, ``exit_codes`` (every code it can return) closes it. A group
    (``audit``) passes ``handler=None`` and adds its own subcommands."""
    epilog = exit_codes_text(exit_codes)
    if examples:
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + epilog
    p = sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, width=78, break_on_hyphens=False),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(top=False)],
    )
    p.set_defaults(handler=handler, exit_codes=exit_codes)
    return p


def _socket_hint(path: Path) -> Path | None:
    """``[daemon] control_socket`` from a config that does not validate (or None): while a
    broken config is on disk, the daemon still runs on its last good one and listens there."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, ValueError):
        return None
    daemon = data.get("daemon")
    value = daemon.get("control_socket") if isinstance(daemon, dict) else None
    if not isinstance(value, str) or not value:
        return None
    return path.parent / value  # relative paths are against the config's directory


@dataclass
class Context:
    """The parsed arguments plus what is loaded only when a subcommand needs it."""

    args: argparse.Namespace
    _config: Config | None = field(default=None, init=False)

    @property
    def config_path(self) -> Path:
        given: Path | None = getattr(self.args, "config", None)
        return given or Path(os.environ.get("ROTATORD_CONFIG") or DEFAULT_CONFIG)

    def config(self) -> Config:
        """The validated config (``ConfigError`` when it cannot be read or is wrong)."""
        if self._config is None:
            self._config = load_config(self.config_path)
            stream = sys.stderr if getattr(self.args, "log_to_stderr", False) else None
            configure_logging(self._config.daemon.log_format, stream=stream)
        return self._config

    def socket(self) -> tuple[Path, ConfigError | None]:
        """The control socket to use, and the config's problem if it could not be read (the
        caller says so, and goes on: a running daemon needs no config file from its client)."""
        given: Path | None = getattr(self.args, "socket", None)
        if given is not None:
            return given, None
        try:
            return self.config().daemon.control_socket, None
        except ConfigError as exc:
            return _socket_hint(self.config_path) or DEFAULT_SOCKET, exc

    def request(self, socket: Path, message: dict[str, Any]) -> dict[str, Any] | None:
        """The daemon's reply, or None when no daemon listens on ``socket``."""
        try:
            return control.request(socket, message)
        except ControlError as exc:
            if exc.reason == "absent":
                return None
            raise


def print_problems(exc: ConfigError) -> None:
    print(f"configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def refused(command: str, reply: dict[str, Any], socket: Path) -> int | None:
    """The exit code for a refusal reply (None when ``reply`` is not one), after saying why."""
    if reply.get("code") != "forbidden":
        return None
    print(
        f"{command}: the daemon on {socket} refused this request: {reply.get('error')}. Being "
        "in the socket's group lets you connect; acting needs your uid in [daemon] "
        "control_allowed_uids.",
        file=sys.stderr,
    )
    return EXIT_REFUSED
