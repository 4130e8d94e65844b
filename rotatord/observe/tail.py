"""The audit log's tail: what the next record needs to know about the last one in the file,
read from the file only when this process does not already know it (see ``audit``).

Rules: read the file from its end only (never in proportion to its size, except a torn last
line, which is hashed whole for the alarm); never chain onto a line that is not a record.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from rotatord.core.errors import AuditError
from rotatord.observe.record import GENESIS, SEAL_EVENT, hash_ok, mac_ok
from rotatord.observe.sealkey import SealState

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Tail:
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


def line_start(fd: int, end: int) -> int:
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


def read_tail(fd: int) -> tuple[Tail, dict[str, Any] | None]:
    size = os.fstat(fd).st_size
    if size == 0:
        return Tail(), None
    start = line_start(fd, size - 1)
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
    tail = Tail(
        prev=digest,
        sealed="mac" in record,
        epoch=epoch if isinstance(epoch, int) else None,
        seq=seq if isinstance(seq, int) else None,
        closes_epoch=record.get("event") == SEAL_EVENT,
    )
    return tail, record


def tail_problem(record: dict[str, Any], tail: Tail, state: SealState | None) -> str | None:
    """The once-per-open check of the record we chain onto: its hash, and its mac when it is
    in the epoch whose key we hold (an older epoch's key is destroyed; ``verify_sealed`` with
    the operator's key checks those)."""
    if not hash_ok(record):
        return "the audit log's last record does not match its hash (edited?)"
    current = state is not None and tail.epoch == state.epoch and not tail.closes_epoch
    if current and tail.sealed and state is not None and not mac_ok(record, state.key):
        return "the audit log's last record has a bad seal (edited or forged?)"
    return None


# What identifies a file's content for this process: a rename, a truncation or another
# writer's append changes one of these (mtime is set by every write). None: no such file.
FileId = tuple[int, int, int, int] | None


def file_id(st: os.stat_result, *, key: bool = False) -> FileId:
    # The host key is replaced by rename and its mode matters (chmod sets ctime, not mtime).
    last = st.st_ctime_ns if key else st.st_mtime_ns
    return (st.st_dev, st.st_ino, st.st_size, last)


def repair_torn_tail(fd: int) -> dict[str, Any] | None:
    """A kill during an append can leave a last line without its newline (a torn write).
    Cut it back to the last complete record and return what was dropped, so the caller
    records an ``alarm`` about it; refusing to append would stop every rotation forever."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    keep = line_start(fd, size)
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
