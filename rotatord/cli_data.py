"""``rotatord example-config`` and ``rotatord systemd-unit``: print the files the wheel carries.

Part of the entry layer. There is one copy of each file, in the source tree's ``config/`` and
``systemd/``; ``setup.py`` maps them into the wheel as ``rotatord._data.*``. From a checkout
(``PYTHONPATH=.``, no install) they are read from the tree itself.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rotatord.cli_base import EXIT_FAILED, EXIT_OK, Context, Handler, add_command
from rotatord.packaged import packaged_text

if TYPE_CHECKING:
    from rotatord.cli_base import SubParsers

def _printer(what: str) -> Handler:
    def handler(ctx: Context) -> int:
        try:
            text = packaged_text(what)
        except OSError as exc:
            print(f"{what}: not installed with this copy of rotatord: {exc}", file=sys.stderr)
            return EXIT_FAILED
        sys.stdout.write(text)
        return EXIT_OK

    return handler


def register(sub: SubParsers) -> None:
    codes = {EXIT_OK: "printed", EXIT_FAILED: "the file is missing from this installation"}
    add_command(
        sub,
        "example-config",
        summary="print the example config (every key, with its default)",
        description="Print the example config that documents every key with its default; "
        "start a config from it.",
        exit_codes=codes,
        handler=_printer("example-config"),
        examples=("rotatord example-config > /etc/rotatord/rotatord.toml",),
    )
    add_command(
        sub,
        "systemd-unit",
        summary="print the systemd unit file (rotatord.service)",
        description="Print the hardened systemd unit for `rotatord run`.",
        exit_codes=codes,
        handler=_printer("systemd-unit"),
        examples=("rotatord systemd-unit > /etc/systemd/system/rotatord.service",),
    )
