"""The audit log: one JSON line per key-lifecycle event, hash-chained, never key material.

Each record is written to the audit file (0600, O_APPEND, fsynced) and echoed through structlog to
stdout. Each record carries ``prev``, the SHA-256 of the previous line, so an edited, deleted,
inserted or reordered record breaks the chain (``verify_chain`` names the first bad line). Appends
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
    }
)
GENESIS = "0" * 64

log = get_logger("rotatord.audit")


class AuditSink(Protocol):
    """Records key-lifecycle events.

    Contract: ``emit`` returns only after the record is durable (or raises ``AuditError``); it
    never writes key material; event names come from ``EVENTS``.
    """

    def emit(self, event: str, **fields: Any) -> None: ...


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


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
        os.fchmod(fd, 0o600)
        return fd

    @staticmethod
    def _last_hash(fd: int) -> str:
        size = os.fstat(fd).st_size
        if size == 0:
            return GENESIS
        chunk = 65536
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start)
        lines = data.rstrip(b"\n").split(b"\n")
        return _line_hash(lines[-1])

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise AuditError(f"unknown audit event {event!r}")
        _check_fields(fields)
        with self._lock:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                record = {
                    "ts": self._clock.now().isoformat(),
                    "event": event,
                    **fields,
                    "prev": self._last_hash(fd),
                }
                line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
                os.write(fd, line)
                os.fsync(fd)
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

    def bind(self, **fields: Any) -> BoundAudit:
        return BoundAudit(self.sink, {**self.context, **fields})


class MemoryAudit:
    """An in-memory AuditSink for unit tests of pure logic."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise AuditError(f"unknown audit event {event!r}")
        _check_fields(fields)
        self.records.append({"event": event, **fields})


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    records: int
    first_bad_line: int | None = None
    reason: str = ""


def verify_chain(path: Path) -> ChainResult:
    """Check every record's ``prev`` against the hash of the line before it."""
    prev = GENESIS
    n = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                record = json.loads(raw)
            except ValueError:
                return ChainResult(False, n - 1, n, "not a JSON record")
            if not isinstance(record, dict) or record.get("prev") != prev:
                return ChainResult(False, n - 1, n, "hash chain broken (edited, removed or moved)")
            prev = _line_hash(raw)
    return ChainResult(True, n)
