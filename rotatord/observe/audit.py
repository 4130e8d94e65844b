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

Appends take an flock on the file. The previous hash and the sealing position are kept in
memory with the identity of the file they describe (device, inode, size, mtime), so an append
costs the same on a 100 MB log as on an empty one (the small host key is read at each append,
under the flock, since another process may evolve or replace it).
When the file is not the one this object last wrote (first append, a log moved aside or
truncated by logrotate, another process such as a one-shot CLI run appended), the tail is read
again from the file's last line (however long it is), a torn last line is cut back, and the
last record's hash (and, in the current epoch, its mac) is checked once; a mismatch is
recorded as an ``alarm`` and the chain goes on from the hash the line claims, so the verifier
still names the edited line.

**Grouped fsyncs** (``deferred``): inside ``with deferred(sink):`` records are written at once
(so the chain, the order and other readers see them) but fsynced together when the block ends
or at ``sync(sink)``. Durability rule for callers: ``sync`` before any step whose effect must
not outlive a lost record, that is before a key or CSR leaves the process (the order), before
a key reaches the disk (staging) and before every journal mark (recovery reads a journal phase
as "the records of the steps before it exist"). A record that is only lost by a crash *after*
its effect and before the next barrier is then the same as a crash just before its emit, which
recovery already handles. An epoch's seal always fsyncs everything pending before the key is
evolved (a lost record there would break a closed epoch).

If a record cannot be written, ``AuditError`` is raised: callers must stop the key operation,
because no key event may go unrecorded. Nothing is refused for its content: ``sanitize`` bounds
every value and puts a fingerprint in place of anything that looks like key material.

Rules: fixed event names only (``EVENTS``); no record larger than ``MAX_RECORD``; no key byte in
a record, a message or a log line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
from collections.abc import Iterator, Mapping
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
from rotatord.observe.tail import FileId, Tail, file_id, read_tail, repair_torn_tail, tail_problem
from rotatord.observe.verify import ChainResult, verify_chain

__all__ = ["EVENTS", "GENESIS", "AuditLog", "AuditSink", "BoundAudit", "ChainResult"]
__all__ += ["deferred", "open_audit", "sync", "verify_chain"]

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
        "account_switched",
        "account_key_rollover_started",
        "account_key_rolled",
        "account_key_rollover_failed",
        "account_deactivated",
        "revocation_detected",
        START_EVENT,
        SEAL_EVENT,
    }
)
EPOCH_RECORDS = 64
EPOCH_SECONDS = 300

log = get_logger("rotatord.audit")


class AuditSink(Protocol):
    """Records key-lifecycle events.

    Contract: ``emit`` returns only after the record is durable (or raises ``AuditError``),
    except inside the sink's ``deferred()`` block, where it is durable at the next ``sync()`` or
    the block's end (a sink without those methods is always durable: see ``deferred``); it
    never writes key material and never drops a record for its content (offending values are
    replaced by fingerprints, long ones truncated with a marker); event names come from
    ``EVENTS``.
    """

    def emit(self, event: str, **fields: Any) -> None: ...


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
        self._known: tuple[FileId, Tail] | None = None  # the file as this object left it
        self._pending: int | None = None  # a dup of a descriptor with unsynced records
        self._local = threading.local()

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
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        return fd

    def _evolve(self, state: SealState) -> SealState:
        assert self.seal_key is not None
        return evolve_host_key(self.seal_key, state, self._clock.now())

    def _seal_state(self, tail: Tail) -> SealState | None:
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
            state = self._evolve(state)
        return state

    def _append(
        self,
        fd: int,
        event: str,
        fields: Mapping[str, Any],
        tail: Tail,
        state: SealState | None,
        *,
        durable: bool = True,
    ) -> Tail:
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
        if durable:
            self._sync_pending()
            os.fsync(fd)
        elif self._pending is None:
            self._pending = os.dup(fd)  # the log may be moved aside before the sync
        epoch = state.epoch if state is not None else None
        return Tail(digest, state is not None, epoch, seq, event == SEAL_EVENT)

    def _sync_pending(self) -> None:
        fd, self._pending = self._pending, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _due(self, tail: Tail, state: SealState, *, now: bool = False) -> bool:
        count = tail.count_in(state)
        if count == 0:
            return False
        if now or count >= self._epoch_records:
            return True
        return self._clock.now() - state.opened >= self._epoch_length

    def _close_epoch(self, fd: int, tail: Tail, state: SealState) -> tuple[Tail, SealState]:
        """Write the epoch's seal record and fsync it with every record still pending, then
        evolve the key (destroying the old one)."""
        tail = self._append(fd, SEAL_EVENT, {"records": tail.count_in(state)}, tail, state)
        if self._echo:
            log.info(SEAL_EVENT, audit=True, epoch=state.epoch)
        return tail, self._evolve(state)

    def _tail_at_open(self, fd: int) -> tuple[Tail, SealState | None, list[dict[str, Any]]]:
        """Read and check the file's tail: the once-per-open work an unchanged file skips."""
        alarms: list[dict[str, Any]] = []
        torn = repair_torn_tail(fd)
        if torn is not None:
            alarms.append(torn)
        tail, record = read_tail(fd)
        state = self._seal_state(tail)
        if record is not None:
            problem = tail_problem(record, tail, state)
            if problem is not None:
                alarms.append({"problem": problem, "last_hash": tail.prev})
        return tail, state, alarms

    def _locked(self, body: Any, *, starting: bool = False) -> None:
        """Run ``body(fd, tail, state) -> tail`` holding the thread lock and the file's flock."""
        with self._lock:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                ident = file_id(os.fstat(fd))
                known, self._known = self._known, None  # until this append is complete
                alarms: list[dict[str, Any]] = []
                if known is not None and known[0] == ident:
                    tail = known[1]
                    state = None if starting else self._seal_state(tail)
                elif starting:
                    torn = repair_torn_tail(fd)
                    alarms = [torn] if torn is not None else []
                    tail, state = read_tail(fd)[0], None
                else:
                    tail, state, alarms = self._tail_at_open(fd)
                for alarm in alarms:
                    tail = self._append(fd, "alarm", alarm, tail, state)
                    log.warning("audit_tail_alarm", **alarm)
                tail = body(fd, tail, state)
                self._known = (file_id(os.fstat(fd)), tail)
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot write audit record: {exc.strerror}") from exc
            finally:
                # Unlock explicitly: a pending dup shares this open file and would keep the flock.
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _deferring(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Records this thread emits inside are fsynced together at the end (see the module
        doc for when a caller must ``sync`` earlier). Nests; other threads are unaffected."""
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            if self._local.depth == 0:
                self.sync()

    def sync(self) -> None:
        """Make every record written so far durable (a no-op when none is pending)."""
        with self._lock:
            try:
                self._sync_pending()
            except OSError as exc:
                self._known = None  # read the tail again: the file may not hold what we wrote
                raise AuditError(f"{self.path}: cannot sync audit records: {exc.strerror}") from exc

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise AuditError(f"unknown audit event {event!r}")
        clean = sanitize(fields)
        durable = not self._deferring()

        def body(fd: int, tail: Tail, state: SealState | None) -> Tail:
            if state is not None and self._due(tail, state):
                tail, state = self._close_epoch(fd, tail, state)
            return self._append(fd, event, clean, tail, state, durable=durable)

        self._locked(body)
        if self._echo:
            log.info(event, audit=True, **clean)

    def maybe_seal(self, *, force: bool = False) -> None:
        """Close the current epoch if it is due (or, with ``force``, if it holds any record).
        The daemon calls this from its main loop, and with ``force`` when it stops."""
        if self.seal_key is None:
            return

        def body(fd: int, tail: Tail, state: SealState | None) -> Tail:
            if state is not None and self._due(tail, state, now=force):
                tail, _state = self._close_epoch(fd, tail, state)
            return tail

        self._locked(body)

    def start_sealing(self, initial_key: bytes, **fields: Any) -> str:
        """Create the host key (epoch 0 = ``initial_key``) and write ``audit_seal_started``
        as its first sealed record, both under the flock so no other writer comes between.
        Refuses when a host key exists. Returns the sealing run's key id."""
        if self.seal_key is None:
            raise AuditError("this audit log has no seal key path")
        seal_key = self.seal_key
        started: list[str] = []

        def body(fd: int, tail: Tail, _state: SealState | None) -> Tail:
            state = create_host_key(seal_key, initial_key, self._clock.now())
            policy = {
                "epoch_records": self._epoch_records,
                "epoch_seconds": int(self._epoch_length.total_seconds()),
            }
            clean = sanitize({"key_id": state.key_id, **policy, **fields})
            started.append(state.key_id)
            return self._append(fd, START_EVENT, clean, tail, state)

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

    def deferred(self) -> contextlib.AbstractContextManager[None]:
        return deferred(self.sink)

    def sync(self) -> None:
        sync(self.sink)


def deferred(sink: AuditSink) -> contextlib.AbstractContextManager[None]:
    """``sink``'s grouped-fsync block (``AuditLog.deferred``); a sink without one (a test
    recorder) keeps every record as durable as it always was."""
    block = getattr(sink, "deferred", None)
    return block() if block is not None else contextlib.nullcontext()


def sync(sink: AuditSink) -> None:
    """A durability barrier: every record ``sink`` took so far is durable on return."""
    barrier = getattr(sink, "sync", None)
    if barrier is not None:
        barrier()
