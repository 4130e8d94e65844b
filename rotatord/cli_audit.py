"""``rotatord audit ...``: verify the audit log, with or without the seal key; start sealing.

Part of the entry layer (like ``cli.py``, which delegates here): parse, call ``observe``, print,
map to an exit code (0 ok, 1 tampered or failed, 2 usage: a file or key that cannot be read).

Rules: say exactly what a check proves and what it cannot; never print key material, except the
verification key itself, once, to stdout when the operator asks for ``--out -``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rotatord.cli_base import Context, add_command
from rotatord.clock import SystemClock
from rotatord.core.errors import AuditError
from rotatord.core.model import Config
from rotatord.fsutil import zero_file
from rotatord.observe.audit import open_audit
from rotatord.observe.sealkey import (
    host_key_path,
    load_host_key,
    load_verification_key,
    new_initial_key,
    verification_key_text,
    write_verification_key,
)
from rotatord.observe.verify import SealResult, verify_chain, verify_sealed

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

PLAIN_CAVEAT = (
    "note: without --key this proves integrity against accidents only (a torn write, a bad "
    "edit, a lost or doubled line); anyone who can write the file can rewrite it and recompute "
    "every hash."
)
TAIL_CAVEAT = (
    "not provable from the file alone: records lost from its end (the file cut back to a seal, "
    "or within the open epoch); compare with the latest hash shipped elsewhere."
)

if TYPE_CHECKING:
    from rotatord.cli_base import SubParsers


def _verify(ctx: Context) -> int:
    args = ctx.args
    path = args.file if args.file is not None else ctx.config().daemon.audit_log
    return cmd_verify(path, args.key)


def _init_seal(ctx: Context) -> int:
    return cmd_init_seal(ctx.config(), ctx.args.out)


def register(sub: SubParsers) -> None:
    a = add_command(
        sub,
        "audit",
        summary="verify the audit log; start forward-secure sealing",
        description="Tools for the audit log (every key event, never key material): check its "
        "hash chain and seals, or start sealing it.",
        exit_codes={EXIT_USAGE: "no audit subcommand given"},
        handler=None,
    )
    a_sub = a.add_subparsers(
        dest="audit_command", required=True, metavar="COMMAND", prog="rotatord audit"
    )
    v = add_command(
        a_sub,
        "verify",
        summary="check the audit log's hash chain (and seals, with --key)",
        description="Check FILE's hash chain and name the first bad line. Without --key this "
        "proves integrity against accidents only; with the verification key from `audit "
        "init-seal` it proves every record up to the last sealed epoch authentic and in order.",
        exit_codes={
            EXIT_OK: "intact",
            EXIT_FAILED: "tampered or damaged (the first bad line is named)",
            EXIT_USAGE: "the file or key cannot be read, or (no FILE) a config error",
        },
        handler=_verify,
        examples=(
            "rotatord audit verify /var/log/rotatord/audit.jsonl",
            "rotatord audit verify --key verify.key",
        ),
    )
    v.add_argument("file", nargs="?", type=Path, help="audit file (default: from config)")
    v.add_argument(
        "--key", type=Path, metavar="KEYFILE", help="verification key from `audit init-seal`"
    )
    i = add_command(
        a_sub,
        "init-seal",
        summary="start forward-secure sealing of the audit log",
        description="Start forward-secure sealing: write the verification key to the new file "
        "FILE ('-': stdout) and the daemon's evolving key to <state_dir>/audit/seal.key.",
        exit_codes={
            EXIT_OK: "sealing started",
            EXIT_FAILED: "sealing already started, or a file cannot be written",
            EXIT_USAGE: "a config error",
        },
        handler=_init_seal,
    )
    i.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="new file for the verification key (0600; '-' prints it to stdout); keep it off "
        "this host",
    )


def _span(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"


def _report_sealed(path: Path, kid: str, res: SealResult) -> None:
    print(f"{path}: OK, {res.records} records, seals checked with key id {kid}")
    if not res.has_start:
        print(
            f"  this file begins at epoch {res.first_epoch}, not at the start of sealing: the "
            "records before are in another file (log rotation), or were removed"
        )
    if res.before_sealing:
        print(
            f"  {_span(1, res.before_sealing)}: written before sealing with this key began; "
            "the seal pins them as they stood then, nothing proves what happened before"
        )
    if res.epochs:
        print(
            f"  {_span(res.before_sealing + 1, res.sealed_through)}: authentic and in order "
            f"({res.epochs} sealed epochs, the last sealed at {res.last_seal_ts})"
        )
    else:
        print("  no epoch is sealed yet: nothing is proven beyond the plain hash chain")
    if res.open_records:
        print(
            f"  {_span(res.records - res.open_records + 1, res.records)}: in the open epoch; "
            "their MACs are valid, but that epoch's key is still on the host, so they are not "
            "proven against an intruder who took it"
        )
    print(f"  {TAIL_CAVEAT}")


def cmd_verify(path: Path, key_file: Path | None) -> int:
    try:
        if key_file is None:
            result = verify_chain(path)
        else:
            initial, kid = load_verification_key(key_file)
            sealed = verify_sealed(path, initial, kid)
    except OSError as exc:
        print(f"audit verify: {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except AuditError as exc:
        print(f"audit verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if key_file is not None:
        if not sealed.ok:
            print(f"{path}:{sealed.first_bad_line}: {sealed.reason}", file=sys.stderr)
            return EXIT_FAILED
        _report_sealed(path, kid, sealed)
        return EXIT_OK
    if not result.ok:
        print(f"{path}:{result.first_bad_line}: {result.reason}", file=sys.stderr)
        print(PLAIN_CAVEAT, file=sys.stderr)
        return EXIT_FAILED
    print(f"{path}: OK, {result.records} records, hash chain intact")
    print(PLAIN_CAVEAT)
    if result.sealed_records:
        print(
            f"{result.sealed_records} records are sealed: `rotatord audit verify --key KEYFILE` "
            "proves them authentic up to the last sealed epoch."
        )
    return EXIT_OK


def cmd_init_seal(config: Config, out: str) -> int:
    """Create ``k_0``: the operator's copy goes to ``out``, the host's evolving copy to the
    state dir, and the log records ``audit_seal_started``."""
    host = host_key_path(config.daemon.state_dir)
    clock = SystemClock()
    try:
        if load_host_key(host) is not None:
            raise AuditError(
                f"{host}: sealing has already started; to start over with a new key (the old "
                "one was lost), move this file aside first"
            )
        initial = new_initial_key()
        now = clock.now()
        if out == "-":
            sys.stdout.write(verification_key_text(initial, now))
            sys.stdout.flush()
        else:
            write_verification_key(Path(out), initial, now)
        try:
            # No echo: with ``--out -`` stdout must hold the verification key and nothing else.
            kid = open_audit(config, clock, echo=False).start_sealing(initial, uid=os.getuid())
        except AuditError:
            if out != "-":  # a key for a sealing run that never started: useless, destroy it
                with contextlib.suppress(OSError):
                    zero_file(Path(out).parent, Path(out).name)
                    os.unlink(out)
            raise
    except AuditError as exc:
        print(f"audit init-seal: {exc}", file=sys.stderr)
        return EXIT_FAILED
    where = "printed above" if out == "-" else f"written to {out}"
    print(
        f"sealing started, key id {kid}; the host's evolving key is {host}.\n"
        f"The verification key was {where}. Move it off this host now and delete it here: "
        "anyone who holds it can verify every record, and forge any.\n"
        f"Check the log with: rotatord audit verify --key KEYFILE {config.daemon.audit_log}",
        file=sys.stderr,
    )
    return EXIT_OK
