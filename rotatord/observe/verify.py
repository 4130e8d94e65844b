"""Verify an audit log: the plain hash chain (no key), or the forward-secure seals (``--key``).

``verify_chain`` proves integrity against accidents only: whoever can write the file can edit a
record and recompute every hash after it. ``verify_sealed`` takes the operator's verification key
``k_0``, derives each epoch's key and checks every sealed record's MAC, epoch and sequence
number, so it proves that every record up to the last ``audit_sealed`` record is authentic and in
order; an intruder who took the host during a later epoch had only that epoch's key.

Neither can see the loss of the newest records (the file cut back to a seal, or within the open
epoch): ship the lines, or at least the latest ``hash``, elsewhere if that matters.

Rules: read-only; the clock is never read (verification is a pure function of file and key).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rotatord.observe.record import (
    GENESIS,
    SEAL_EVENT,
    START_EVENT,
    evolve,
    hash_ok,
    mac_ok,
)

MAX_EPOCH = 1 << 24  # far beyond any real log; bounds the work a forged epoch number can cause


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    records: int
    first_bad_line: int | None = None
    reason: str = ""
    sealed_records: int = 0  # records carrying a mac (a hint to verify with --key)


@dataclass(frozen=True)
class _Bad:
    reason: str


class _Line(Exception):
    """The first bad line and why."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any] | _Bad]]:
    """Each line's record, or why it is not one (and then nothing more)."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                yield n, _Bad("truncated record (no end of line)")
                return
            try:
                record = json.loads(raw)
            except ValueError:
                yield n, _Bad("not a JSON record")
                return
            if not isinstance(record, dict):
                yield n, _Bad("not a JSON object")
                return
            yield n, record


def _chained(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records whose own hash and ``prev`` check out; raises ``_Line`` at the first that does
    not."""
    prev = GENESIS
    for n, item in _records(path):
        if isinstance(item, _Bad):
            raise _Line(n, item.reason)
        if not hash_ok(item):
            raise _Line(n, "record does not match its hash (edited)")
        if item.get("prev") != prev:
            raise _Line(n, "chain broken (removed, inserted or moved)")
        prev = str(item["hash"])
        yield n, item


def verify_chain(path: Path) -> ChainResult:
    """Check each record's own ``hash`` (catches an edit of any line, the last one included) and
    its ``prev`` against the record before it (catches removal, insertion and reordering), as
    long as nobody recomputed the hashes."""
    n = sealed = 0
    try:
        for n, record in _chained(path):  # noqa: B007 - n is the count once the loop ends
            sealed += "mac" in record
    except _Line as bad:
        return ChainResult(False, bad.line - 1, bad.line, bad.reason, sealed)
    return ChainResult(True, n, sealed_records=sealed)


@dataclass(frozen=True)
class SealResult:
    ok: bool
    records: int
    first_bad_line: int | None = None
    reason: str = ""
    before_sealing: int = 0  # leading records written before sealing with this key began
    sealed_through: int = 0  # the last line inside a closed (sealed) epoch
    epochs: int = 0  # closed epochs
    last_seal_ts: str | None = None
    open_records: int = 0  # records after the last seal: their epoch's key is still on the host
    first_epoch: int = 0  # the epoch of the first sealed record
    has_start: bool = True  # the log holds this key's audit_seal_started record


def _start_line(path: Path, kid: str) -> int | None:
    """The line of the ``audit_seal_started`` record of the sealing run named ``kid``."""
    for n, item in _records(path):
        if isinstance(item, dict) and (item.get("event"), item.get("key_id")) == (START_EVENT, kid):
            return n
    return None


class _Sealed:
    """The verifier's state once sealing with the key has begun."""

    def __init__(self, key: bytes, epoch: int) -> None:
        for _ in range(epoch):
            key = evolve(key)
        self.key, self.epoch, self.seq = key, epoch, 0
        self.epochs, self.sealed_through = 0, 0
        self.last_seal_ts: str | None = None

    def check(self, n: int, record: dict[str, Any], first: bool, kid: str) -> None:
        event = record.get("event")
        if event == START_EVENT and not first:
            raise _Line(
                n,
                f"sealing restarted here with another key (key id {record.get('key_id')}); "
                "records from here on need that key",
            )
        if "mac" not in record:
            raise _Line(n, "record is not sealed (written without the seal key, or forged)")
        epoch, seq = record.get("epoch"), record.get("seq")
        if epoch != self.epoch:
            hint = " (that epoch's seal record is missing)" if epoch == self.epoch + 1 else ""
            raise _Line(n, f"record claims epoch {epoch}, expected {self.epoch}{hint}")
        if seq != self.seq:
            raise _Line(
                n,
                f"record claims sequence {seq} in epoch {epoch}, expected {self.seq} "
                "(a record removed, inserted or moved)",
            )
        if not mac_ok(record, self.key):
            why = "MAC does not match: the record was forged or rewritten"
            if first:
                why += f", or this is not the key that sealed this log (its key id is {kid})"
            raise _Line(n, why)
        if event == SEAL_EVENT:
            self.epochs += 1
            self.sealed_through = n
            self.last_seal_ts = str(record.get("ts"))
            self.key, self.epoch, self.seq = evolve(self.key), self.epoch + 1, 0
        else:
            self.seq += 1


def verify_sealed(path: Path, initial_key: bytes, kid: str) -> SealResult:
    """Check the plain chain and every seal made with ``initial_key`` (see module docstring).

    Sealing starts at the ``audit_seal_started`` record of this key (records before it are
    pinned by its ``prev`` only), or, in a log that was moved aside and started anew, at the
    first record carrying a ``mac`` (which must be the first of its epoch).
    """
    start = _start_line(path, kid)
    sealed: _Sealed | None = None
    n = before = first_epoch = 0
    try:
        for n, record in _chained(path):
            first = False
            if sealed is None:
                if (start is None and "mac" not in record) or (start is not None and n < start):
                    before += 1
                    continue
                epoch = record.get("epoch")
                if not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
                    raise _Line(n, f"sealed record has a bad epoch ({epoch!r})")
                if record.get("seq") != 0:
                    raise _Line(n, f"sealed records begin inside epoch {epoch}: records missing")
                sealed, first, first_epoch = _Sealed(initial_key, epoch), True, epoch
            sealed.check(n, record, first, kid)
    except _Line as bad:
        return SealResult(False, bad.line - 1, bad.line, bad.reason, before)
    if sealed is None:
        return SealResult(False, n, n + 1, "no record in this log is sealed with this key", n)
    return SealResult(
        True,
        n,
        before_sealing=before,
        sealed_through=sealed.sealed_through,
        epochs=sealed.epochs,
        last_seal_ts=sealed.last_seal_ts,
        open_records=n - max(sealed.sealed_through, before),
        first_epoch=first_epoch,
        has_start=start is not None,
    )
