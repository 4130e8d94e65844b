"""The audit log: one JSON line per key-lifecycle event, hash-chained, sealed, never key material.

Each record is written to the audit file (0600, O_APPEND, fsynced) and echoed through structlog to
stdout. Each record carries ``hash``, the SHA-256 of its own JSON, and ``prev``, the ``hash`` of
the record before it, so an accidental edit, loss, insertion or reordering breaks the chain
(``verify_chain`` names the first bad line). That chain has no key: whoever can write the file
can rewrite it and recompute every hash.

**Forward-secure sealing** (journald's FSS is the model; wire format in ``record``) closes that
gap once ``rotatord audit init-seal`` has created the host key (``sealkey``): every record then
also carries ``epoch``, ``seq`` and ``mac`` (HMAC-SHA256 under the epoch's key). An epoch closes
with an ``audit_sealed`` record once it holds ``epoch_records`` records, or holds one and opened
``epoch_seconds`` ago (checked before every append and by ``maybe_seal``, which the daemon calls
from its main loop, and at a clean stop); then the key is evolved and the old one destroyed, so
an intruder who takes the host later cannot forge any closed epoch (``verify_sealed``).

Appends take an flock on the file and read the previous hash from its last line (however long
that line is), so two processes appending to one file (the daemon and a one-shot CLI run) still
produce one valid chain; the host key is only read and evolved under that flock.

If a record cannot be written, ``AuditError`` is raised: callers must stop the key operation,
because no key event may go unrecorded. Nothing is refused for its content: ``sanitize`` bounds
every value and puts a fingerprint in place of anything that looks like key material.

Rules: fixed event names only (``EVENTS``); no record larger than ``MAX_RECORD``; no key byte in
a record, a message or a log line.
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
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from rotatord.clock import Clock
from rotatord.core.errors import AuditError
from rotatord.core.model import Config
from rotatord.fsutil import ensure_tree
from rotatord.observe.logging import get_logger
from rotatord.observe.record import GENESIS, SEAL_EVENT, START_EVENT, encode
from rotatord.observe.sanitize import MAX_RECORD, sanitize
from rotatord.observe.sealkey import (
    SealState,
    create_host_key,
    evolve_host_key,
    host_key_path,
    load_host_key,
)
from rotatord.observe.verify import ChainResult, verify_chain

__all__ = ["EVENTS", "GENESIS", "AuditLog", "AuditSink", "BoundAudit", "ChainResult"]
__all__ += ["open_audit", "verify_chain"]

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
        "revocation_detected",
        START_EVENT,
        SEAL_EVENT,
    }
)
EPOCH_RECORDS = 64
EPOCH_SECONDS = 300
_CHUNK = 64 * 1024

log = get_logger("rotatord.audit")


class AuditSink(Protocol):
    """Records key-lifecycle events.

    Contract: ``emit`` returns only after the record is durable (or raises ``AuditError``); it
    never writes key material and never drops a record for its content (offending values are
    replaced by fingerprints, long ones truncated with a marker); event names come from
    ``EVENTS``.
    """

    def emit(self, event: str, **fields: Any) -> None: ...


@dataclass(frozen=True)
class _Tail:
    """What the next record needs to know about the last one in the file."""

    prev: str = GENESIS
    sealed: bool = False  # the last record carries a mac
    epoch: int | None = None
    seq: int | None = None
    closes_epoch: bool = False  # the last record is an audit_sealed

    def count_in(self, state: SealState) -> int:
        """Records already in ``state``'s epoch."""
        if not self.sealed or self.epoch != state.epoch or self.closes_epoch:
            return 0
        return (self.seq or 0) + 1


def _line_start(fd: int, end: int) -> int:
    """Offset of the line that ends at ``end`` (exclusive, at a newline or EOF): reads back in
    chunks until the newline before it, so no record is too long to chain onto."""
    pos = end
    while pos > 0:
        start = max(0, pos - _CHUNK)
        cut = os.pread(fd, pos - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def _read_tail(fd: int) -> _Tail:
    size = os.fstat(fd).st_size
    if size == 0:
        return _Tail()
    start = _line_start(fd, size - 1)
    last = os.pread(fd, size - start, start)
    try:
        record = json.loads(last)
        digest = record["hash"]
        if not isinstance(digest, str):
            raise TypeError("hash")
    except (ValueError, KeyError, TypeError) as exc:
        # Never chain onto a complete line we cannot read: that is tampering, or a log
        # from another program or an older format (move it aside to start a new one).
        raise AuditError(
            "the audit log's last line is not a sealed rotatord record; "
            "move the file aside to start a new chain"
        ) from exc
    epoch, seq = record.get("epoch"), record.get("seq")
    return _Tail(
        prev=digest,
        sealed="mac" in record,
        epoch=epoch if isinstance(epoch, int) else None,
        seq=seq if isinstance(seq, int) else None,
        closes_epoch=record.get("event") == SEAL_EVENT,
    )


class AuditLog:
    """Appends hash-chained records to ``path``, sealed once ``seal_key`` exists."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        *,
        echo: bool = True,
        seal_key: Path | None = None,
        epoch_records: int = EPOCH_RECORDS,
        epoch_seconds: float = EPOCH_SECONDS,
    ) -> None:
        self.path = path
        self.seal_key = seal_key
        self._clock = clock
        self._echo = echo
        self._epoch_records = epoch_records
        self._epoch_length = timedelta(seconds=epoch_seconds)
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
        keep = _line_start(fd, size)
        digest, pos = hashlib.sha256(), keep
        while pos < size:
            chunk = os.pread(fd, min(_CHUNK, size - pos), pos)
            digest.update(chunk)
            pos += len(chunk)
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return {
            "problem": "torn audit record removed (a write was interrupted)",
            "dropped_bytes": size - keep,
            "dropped_sha256": digest.hexdigest(),
        }

    def _seal_state(self, tail: _Tail) -> SealState | None:
        if self.seal_key is None:
            return None
        state = load_host_key(self.seal_key)
        if state is None:
            if tail.sealed:
                raise AuditError(
                    f"the audit log is sealed but its seal key {self.seal_key} is missing; "
                    "restore it, or move the log aside and run `rotatord audit init-seal`"
                )
            return None
        if tail.sealed and tail.epoch is not None and tail.epoch > state.epoch:
            raise AuditError(
                f"{self.seal_key}: the seal key is at epoch {state.epoch} but the audit log "
                f"already reached epoch {tail.epoch} (was the key restored from a backup?)"
            )
        if tail.closes_epoch and tail.epoch == state.epoch:
            # A kill between an epoch's seal record and the key's evolution: finish it now.
            state = evolve_host_key(self.seal_key, state, self._clock.now())
        return state

    def _append(
        self, fd: int, event: str, fields: Mapping[str, Any], tail: _Tail, state: SealState | None
    ) -> _Tail:
        record: dict[str, Any] = {
            "ts": self._clock.now().isoformat(),
            "event": event,
            **fields,
            "prev": tail.prev,
        }
        seq = None
        if state is not None:
            seq = tail.count_in(state)
            record["epoch"], record["seq"] = state.epoch, seq
        key = state.key if state is not None else None
        line, digest = encode(record, key)
        if len(line) > MAX_RECORD:  # sanitize keeps far below this; a last, blunt guarantee
            cut: dict[str, Any] = {
                k: record[k] for k in ("ts", "event", "prev", "epoch", "seq") if k in record
            }
            cut["problem"] = f"…[record of {len(line)} bytes cut; fields: {sorted(fields)[:20]}]"
            line, digest = encode(cut, key)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        epoch = state.epoch if state is not None else None
        return _Tail(digest, state is not None, epoch, seq, event == SEAL_EVENT)

    def _due(self, tail: _Tail, state: SealState, *, now: bool = False) -> bool:
        count = tail.count_in(state)
        if count == 0:
            return False
        if now or count >= self._epoch_records:
            return True
        return self._clock.now() - state.opened >= self._epoch_length

    def _close_epoch(self, fd: int, tail: _Tail, state: SealState) -> tuple[_Tail, SealState]:
        """Write the epoch's seal record, then evolve the key (destroying the old one)."""
        assert self.seal_key is not None
        tail = self._append(fd, SEAL_EVENT, {"records": tail.count_in(state)}, tail, state)
        if self._echo:
            log.info(SEAL_EVENT, audit=True, epoch=state.epoch)
        return tail, evolve_host_key(self.seal_key, state, self._clock.now())

    def _locked(self, body: Any, *, starting: bool = False) -> None:
        """Run ``body(fd, tail, state)`` holding the thread lock and the file's flock."""
        with self._lock:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                torn = self._repair_torn_tail(fd)
                tail = _read_tail(fd)
                state = None if starting else self._seal_state(tail)
                if torn is not None:
                    tail = self._append(fd, "alarm", torn, tail, state)
                    log.warning("audit_torn_record_removed", **torn)
                body(fd, tail, state)
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot write audit record: {exc.strerror}") from exc
            finally:
                os.close(fd)

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise AuditError(f"unknown audit event {event!r}")
        clean = sanitize(fields)

        def body(fd: int, tail: _Tail, state: SealState | None) -> None:
            if state is not None and self._due(tail, state):
                tail, state = self._close_epoch(fd, tail, state)
            self._append(fd, event, clean, tail, state)

        self._locked(body)
        if self._echo:
            log.info(event, audit=True, **clean)

    def maybe_seal(self, *, force: bool = False) -> None:
        """Close the current epoch if it is due (or, with ``force``, if it holds any record).
        The daemon calls this from its main loop, and with ``force`` when it stops."""
        if self.seal_key is None:
            return

        def body(fd: int, tail: _Tail, state: SealState | None) -> None:
            if state is not None and self._due(tail, state, now=force):
                self._close_epoch(fd, tail, state)

        self._locked(body)

    def start_sealing(self, initial_key: bytes, **fields: Any) -> str:
        """Create the host key (epoch 0 = ``initial_key``) and write ``audit_seal_started``
        as its first sealed record, both under the flock so no other writer comes between.
        Refuses when a host key exists. Returns the sealing run's key id."""
        if self.seal_key is None:
            raise AuditError("this audit log has no seal key path")
        seal_key = self.seal_key
        started: list[str] = []

        def body(fd: int, tail: _Tail, _state: SealState | None) -> None:
            state = create_host_key(seal_key, initial_key, self._clock.now())
            policy = {
                "epoch_records": self._epoch_records,
                "epoch_seconds": int(self._epoch_length.total_seconds()),
            }
            clean = sanitize({"key_id": state.key_id, **policy, **fields})
            self._append(fd, START_EVENT, clean, tail, state)
            started.append(state.key_id)

        self._locked(body, starting=True)
        return started[0]


def open_audit(config: Config, clock: Clock, *, echo: bool = True) -> AuditLog:
    """The configured audit log, sealed with the host key in the state dir once it exists."""
    return AuditLog(
        config.daemon.audit_log, clock, echo=echo, seal_key=host_key_path(config.daemon.state_dir)
    )


@dataclass(frozen=True)
class BoundAudit:
    """An AuditSink with fields (service, rotation_id, trigger, uid) added to every record."""

    sink: AuditSink
    context: Mapping[str, Any]

    def emit(self, event: str, **fields: Any) -> None:
        self.sink.emit(event, **{**self.context, **fields})
