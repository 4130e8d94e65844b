"""The audit log's in-memory tail and grouped fsyncs: an append to a file this object wrote last
reads nothing back; any other file state (moved aside, truncated, another writer, a torn or
edited last line) is read and checked once; inside ``deferred`` records share one fsync, and a
rotation's records are durable before every order, staging, activation flip and journal mark.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rotatord.clock import FakeClock
from rotatord.observe import sealkey
from rotatord.observe.audit import GENESIS, AuditLog
from rotatord.observe.record import encode
from rotatord.observe.sealkey import load_verification_key, new_initial_key, write_verification_key
from rotatord.observe.verify import verify_chain, verify_sealed
from rotatord.rotation import Rotator
from rotatord.rotation import journal as journal_mod
from rotatord.store.fs import ServiceStore
from tests.world import make_world, service


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@dataclass
class FsyncTrace:
    """Counts fsyncs of one file and remembers its size at the last one (the durable bytes)."""

    path: Path
    count: int = 0
    durable: int = 0

    def pending(self) -> int:
        """Bytes of the file written but not yet covered by an fsync."""
        size = self.path.stat().st_size if self.path.exists() else 0
        return size - self.durable


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FsyncTrace]:
    trace = FsyncTrace(tmp_path / "audit.jsonl")
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == str(trace.path):
            trace.count += 1
            trace.durable = os.fstat(fd).st_size

    monkeypatch.setattr(os, "fsync", fsync)
    yield trace


def test_an_append_to_a_file_it_wrote_last_reads_nothing_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first append (which reads and checks the tail), further appends do not read
    the log at all, so their cost does not depend on its size; the chain verifies."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, FakeClock(), echo=False)
    audit.emit("daemon_started", pid=1)
    reads: list[int] = []
    real = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)  # the tail module reads with os.pread
    for i in range(50):
        audit.emit("rotation_started", service=f"s{i}")
    assert reads == []
    AuditLog(path, FakeClock(), echo=False).emit("rotation_finished", service="s0")
    assert reads, "a new AuditLog object reads the tail once"
    result = verify_chain(path)
    assert result.ok and result.records == 52, result


def test_other_writers_and_logrotate_keep_every_chain_valid(tmp_path: Path) -> None:
    """Two objects (the daemon and a CLI run) interleaving appends, a log moved aside and a
    log truncated in place (copytruncate): each append chains onto what the file really ends
    with, and every file verifies."""
    path = tmp_path / "audit.jsonl"
    clock = FakeClock()
    daemon, cli = AuditLog(path, clock, echo=False), AuditLog(path, clock, echo=False)
    for i in range(6):
        (daemon if i % 2 else cli).emit("control_request", n=i)
    assert verify_chain(path).ok and verify_chain(path).records == 6

    os.rename(path, tmp_path / "audit.1.jsonl")
    daemon.emit("rotation_started", service="web")
    assert records(path)[0]["prev"] == GENESIS
    os.truncate(path, 0)
    daemon.emit("rotation_finished", service="web")
    cli.emit("control_request", n=7)
    got = records(path)
    assert [r["event"] for r in got] == ["rotation_finished", "control_request"]
    assert got[0]["prev"] == GENESIS and got[1]["prev"] == got[0]["hash"]
    for f in (path, tmp_path / "audit.1.jsonl"):
        assert verify_chain(f).ok, f


def test_a_torn_write_by_another_process_is_cut_back(tmp_path: Path) -> None:
    """A writer killed mid-line after this object's last append: the next append cuts the torn
    bytes, records an alarm, and the chain verifies."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, FakeClock(), echo=False)
    audit.emit("daemon_started", pid=1)
    with open(path, "ab") as fh:
        fh.write(b'{"ts":"2026-01-01T00:00:00+00:00","event":"rotation_sta')
    audit.emit("rotation_started", service="web")
    got = records(path)
    assert [r["event"] for r in got] == ["daemon_started", "alarm", "rotation_started"]
    assert got[1]["problem"].startswith("torn audit record removed")
    assert verify_chain(path).ok


def test_an_edited_last_record_is_alarmed_at_open(tmp_path: Path) -> None:
    """An edit of the last record (hash no longer matching) is found by the check at open: an
    alarm is the next record, and the verifier still names the edited line."""
    path = tmp_path / "audit.jsonl"
    AuditLog(path, FakeClock(), echo=False).emit("key_generated", service="web")
    doc = records(path)[0]
    doc["service"] = "evil"
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    AuditLog(path, FakeClock(), echo=False).emit("rotation_started", service="web")
    got = records(path)
    assert got[1]["event"] == "alarm" and "does not match its hash" in got[1]["problem"]
    assert got[1]["prev"] == doc["hash"]
    result = verify_chain(path)
    assert not result.ok and result.first_bad_line == 1, result


def test_a_forged_seal_on_the_last_record_is_alarmed(tmp_path: Path) -> None:
    """A last record re-hashed by a forger without the epoch key fails its mac at open."""
    path, clock = tmp_path / "audit.jsonl", FakeClock()
    host = tmp_path / "seal.key"
    audit = AuditLog(path, clock, echo=False, seal_key=host)
    audit.start_sealing(new_initial_key())
    audit.emit("key_generated", service="web")
    lines = path.read_bytes().splitlines(keepends=True)
    doc = json.loads(lines[-1])
    doc["service"] = "evil"
    doc.pop("hash")
    forged, _ = encode({k: v for k, v in doc.items() if k != "mac"}, None)
    forged = forged[:-2] + f',"mac":"{doc["mac"]}"}}\n'.encode()
    path.write_bytes(b"".join(lines[:-1]) + forged)
    AuditLog(path, clock, echo=False, seal_key=host).emit("rotation_started", service="web")
    alarm = records(path)[-2]
    assert alarm["event"] == "alarm" and "bad seal" in alarm["problem"], alarm


def test_deferred_records_are_written_at_once_and_share_one_fsync(
    tmp_path: Path, fsyncs: FsyncTrace
) -> None:
    """Inside ``deferred`` each record is in the file at once (readers and the chain see it)
    but none is fsynced until the block ends, where one fsync covers them all; ``sync`` is a
    barrier inside the block; other threads' emits stay durable."""
    audit = AuditLog(fsyncs.path, FakeClock(), echo=False)
    audit.emit("daemon_started", pid=1)
    base = fsyncs.count
    with audit.deferred():
        for i in range(3):
            audit.emit("reload_succeeded", n=i)
        assert len(records(fsyncs.path)) == 4 and fsyncs.pending() > 0
        assert fsyncs.count == base
        audit.sync()
        assert fsyncs.pending() == 0 and fsyncs.count == base + 1
        audit.emit("probe_succeeded")
        other = threading.Thread(target=lambda: audit.emit("control_request", n=9))
        other.start()
        other.join()
        assert fsyncs.pending() == 0  # the other thread's durable emit covered ours too
        audit.emit("rotation_finished")
        pending_count = fsyncs.count
    assert fsyncs.pending() == 0 and fsyncs.count == pending_count + 1
    assert verify_chain(fsyncs.path).ok


def test_an_epoch_closing_inside_deferred_is_durable_before_the_key_evolves(
    tmp_path: Path, fsyncs: FsyncTrace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch's records and its seal record are fsynced before the old key is destroyed,
    deferred or not; the sealed log verifies."""

    clock, host, k0 = FakeClock(), tmp_path / "seal.key", new_initial_key()
    write_verification_key(tmp_path / "v.key", k0, clock.now())
    audit = AuditLog(fsyncs.path, clock, echo=False, seal_key=host, epoch_records=3)
    audit.start_sealing(k0)
    at_evolve: list[int] = []
    real = sealkey.evolve_host_key

    def evolve(*args: Any) -> Any:
        at_evolve.append(fsyncs.pending())
        return real(*args)

    monkeypatch.setattr("rotatord.observe.audit.evolve_host_key", evolve)
    with audit.deferred():
        for i in range(7):
            audit.emit("reload_succeeded", n=i)
    assert at_evolve == [0, 0]
    assert verify_sealed(fsyncs.path, *load_verification_key(tmp_path / "v.key")).ok


def test_a_rotation_groups_its_fsyncs_and_syncs_before_every_step(
    tmp_path: Path, fsyncs: FsyncTrace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full rotation (2 names, own reload, probe) against the fake CA with the real audit
    log: at the order, at staging, at the activation flip and at every journal mark, no audit
    byte is left unsynced; and the rotation's records take fewer fsyncs than records."""
    world = make_world(tmp_path, [service("web")])
    audit = AuditLog(fsyncs.path, world.clock, echo=False)
    rotator = Rotator(
        world.config,
        clock=world.clock,
        audit=audit,
        issuer_for=lambda _account: world.ca,
        reloader=world.reloader,
        prober=world.prober,
        ops=world.ops,
    )
    steps: list[tuple[str, int]] = []

    def watch(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            steps.append((name, fsyncs.pending()))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(world.ca, "issue", watch("order", world.ca.issue))
    monkeypatch.setattr(ServiceStore, "stage", watch("stage", ServiceStore.stage))
    monkeypatch.setattr(ServiceStore, "activate", watch("activate", ServiceStore.activate))
    monkeypatch.setattr(journal_mod, "mark", watch("mark", journal_mod.mark))
    for _ in range(2):  # the second rotation supersedes the first one's pair
        before, lines_before = (
            fsyncs.count,
            len(records(fsyncs.path)) if fsyncs.path.exists() else 0,
        )
        result = rotator.rotate("web", force=True)
        assert result.outcome == "rotated", result
        written = len(records(fsyncs.path)) - lines_before
        assert fsyncs.pending() == 0
        synced = fsyncs.count - before
        print(f"\n[measured] rotation: {written} audit records, {synced} audit fsyncs")
        assert synced < written, (synced, written)
    names = [name for name, _ in steps]
    assert {"order", "stage", "activate", "mark"} <= set(names), names
    assert all(pending == 0 for _, pending in steps), steps
    assert verify_chain(fsyncs.path).ok
