"""``rotatord setup-systemd``: the entry-layer side of ``rotatord.setup_systemd``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotatord import setup_systemd
from rotatord.cli_base import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Context, add_command

if TYPE_CHECKING:
    from rotatord.cli_base import SubParsers


def _handler(ctx: Context) -> int:
    return setup_systemd.main(ctx.config_path, ctx.args)


def register(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "setup-systemd",
        summary="create the user, directories, drop-in and unit rotatord.service needs",
        description="Create the service user, the state and log directories (owners and modes), "
        "a drop-in granting write access to the configured output paths, and the unit; "
        "idempotent: a second run changes nothing and says so. Run as root.",
        exit_codes={
            EXIT_OK: "done, or nothing to do",
            EXIT_FAILED: "steps left for you (listed as todo)",
            EXIT_USAGE: "configuration error, or the setup could not be done",
        },
        handler=_handler,
        examples=("rotatord setup-systemd -c /etc/rotatord/rotatord.toml --bootstrap-certs",),
    )
    setup_systemd.add_arguments(p)
