"""The audit log: one JSON line per key-lifecycle event, hash-chained, never key material.

Each record is written to the audit file (0600, O_APPEND, fsynced) and echoed through structlog to
stdout. Each record carries ``hash``, the SHA-256 of its own JSON, and ``prev``, the ``hash`` of
the record before it, so an edited, deleted, inserted or reordered record breaks the chain
(``verify_chain`` names the first bad line). Appends
take an flock on the file and read the previous hash from its tail, so two processes appending to
one file (the daemon and a one-shot CLI run) still produce one valid chain.

If a record cannot be written, ``AuditError`` is raised: callers must stop the key operation,
because no key event may go unrecorded.

Rules: fixed event names only (``EVENTS``); values that look like a private key are refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rotatord.clock import Clock
from rotatord.core.errors import AuditError
from rotatord.fsutil import ensure_tree
from rotatord.observe.logging import contains_secret, get_logger

EVENTS = frozenset(
    {
        "config_loaded",
        "config_rejected",
        "control_request",
        "rotation_started",
        "key_generated",
        "csr_created",
        "certificate_issued",
        "certificate_activated",
        "certificate_superseded",
        "reload_succeeded",
        "reload_failed",
        "probe_succeeded",
        "probe_failed",
        "rolled_back",
        "rotation_failed",
        "rotation_finished",
        "certificate_revoked",
        "key_destroyed",
        "store_recovered",
        "renewal_info",
        "daemon_started",
        "daemon_stopped",
        "alarm",
        "budget_exhausted",
        "config_warning",
        "rotation_resumed",
    }
)
GENESIS = "0" * 64
TAIL_WINDOW = 1 << 20  # no record is anywhere near 1 MiB

log = get_logger("rotatord.audit")


class AuditSink(Protocol):
    """Records key-lifecycle events.

    Contract: ``emit`` returns only after the record is durable (or raises ``AuditError``); it
    never writes key material; event names come from ``EVENTS``.
    """

    def emit(self, event: str, **fields: Any) -> None: ...


def _seal(record: dict[str, Any]) -> bytes:
    """One audit line: the record's compact JSON plus ``hash``, the SHA-256 of that JSON."""
    body = json.dumps(record, default=str, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    return (body[:-1] + f',"hash":"{digest}"}}\n').encode()


def _check_seal(record: dict[str, Any]) -> bool:
    claimed = record.pop("hash", None)
    body = json.dumps(record, separators=(",", ":"))
    return bool(claimed == hashlib.sha256(body.encode()).hexdigest())


def _check_fields(fields: Mapping[str, Any]) -> None:
    for k, v in fields.items():
        if isinstance(v, bytes | bytearray):
            raise AuditError(f"audit field {k!r} is bytes; refusing possible key material")
        if isinstance(v, str) and contains_secret(v):
            raise AuditError(f"audit field {k!r} looks like key material; refusing to record it")


class AuditLog:
    """Appends hash-chained records to ``path``."""

    def __init__(self, path: Path, clock: Clock, *, echo: bool = True) -> None:
        self.path = path
        self._clock = clock
        self._echo = echo
        self._lock = threading.Lock()

    def _open(self) -> int:
        try:
            ensure_tree(self.path.parent, 0o750)
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot open audit log: {exc.strerror}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise AuditError(f"{self.path}: not a regular file with one link; refusing to append")
        os.fchmod(fd, 0o600)
        return fd

    def _repair_torn_tail(self, fd: int) -> dict[str, Any] | None:
        """A kill during an append can leave a last line without its newline (a torn write).
        Cut it back to the last complete record and return what was dropped, so the caller
        records an ``alarm`` about it; refusing to append would stop every rotation forever."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        start = max(0, size - TAIL_WINDOW)
        data = os.pread(fd, size - start, start)
        cut = data.rfind(b"\n")
        keep = start + cut + 1 if cut >= 0 else 0
        if cut < 0 and start > 0:
            raise AuditError(f"{self.path}: last record is torn and too long to repair")
        dropped = data[cut + 1 :]
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return {
            "problem": "torn audit record removed (a write was interrupted)",
            "dropped_bytes": len(dropped),
            "dropped_sha256": hashlib.sha256(dropped).hexdigest(),
        }

    @staticmethod
    def _last_hash(fd: int) -> str:
        size = os.fstat(fd).st_size
        if size == 0:
            return GENESIS
        start = max(0, size - TAIL_WINDOW)
        data = os.pread(fd, size - start, start)
        last = data.rstrip(b"\n").split(b"\n")[-1]
        try:
            digest = json.loads(last)["hash"]
        except (ValueError, KeyError, TypeError) as exc:
            # Never chain onto a complete line we cannot read: that is tampering, or a log
            # from another program or an older format (move it aside to start a new one).
            raise AuditError(
                "the audit log's last line is not a sealed rotatord record; "
                "move the file aside to start a new chain"
            ) from exc
        return str(digest)

    def _append(self, fd: int, event: str, fields: Mapping[str, Any]) -> None:
        record = {
            "ts": self._clock.now().isoformat(),
            "event": event,
            **fields,
            "prev": self._last_hash(fd),
        }
        os.write(fd, _seal(record))
        os.fsync(fd)

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise AuditError(f"unknown audit event {event!r}")
        _check_fields(fields)
        with self._lock:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                torn = self._repair_torn_tail(fd)
                if torn is not None:
                    self._append(fd, "alarm", torn)
                    log.warning("audit_torn_record_removed", **torn)
                self._append(fd, event, fields)
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot write audit record: {exc.strerror}") from exc
            finally:
                os.close(fd)
        if self._echo:
            log.info(event, audit=True, **fields)


@dataclass(frozen=True)
class BoundAudit:
    """An AuditSink with fields (service, rotation_id, trigger, uid) added to every record."""

    sink: AuditSink
    context: Mapping[str, Any]

    def emit(self, event: str, **fields: Any) -> None:
        self.sink.emit(event, **{**self.context, **fields})


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    records: int
    first_bad_line: int | None = None
    reason: str = ""


def verify_chain(path: Path) -> ChainResult:
    """Check each record's own ``hash`` (catches an edit of any line, the last one included) and
    its ``prev`` against the record before it (catches removal, insertion and reordering).

    What no in-file chain can see is the loss of the *newest* records (truncation); that needs
    an anchor kept elsewhere, e.g. the last ``hash`` shipped to a log collector.
    """
    prev = GENESIS
    n = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return ChainResult(False, n - 1, n, "truncated record (no end of line)")
            try:
                record = json.loads(raw)
            except ValueError:
                return ChainResult(False, n - 1, n, "not a JSON record")
            if not isinstance(record, dict):
                return ChainResult(False, n - 1, n, "not a JSON object")
            digest = record.get("hash")
            if not _check_seal(record):
                return ChainResult(False, n - 1, n, "record does not match its hash (edited)")
            if record.get("prev") != prev:
                return ChainResult(False, n - 1, n, "chain broken (removed, inserted or moved)")
            prev = str(digest)
    return ChainResult(True, n)
