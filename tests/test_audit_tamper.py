"""Tamper-evident audit log: every record carries the SHA-256 of the line before it, and
``rotatord audit verify [FILE]`` accepts an intact chain and names the first bad line after an
edit, deletion, insertion, reordering, truncation or appended garbage. A rotation whose audit
log cannot be written stops before any key is generated.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from pebble import PebbleServer
from rotatord.clock import FakeClock
from rotatord.observe.audit import GENESIS, AuditLog
from tests.daemon_harness import events, read_audit, run_cli, service, write_config

RECORDS = 20
EVENT_CYCLE = (
    "rotation_started",
    "key_generated",
    "certificate_issued",
    "certificate_activated",
    "rotation_finished",
)

Lines = list[bytes]


def line_hash(line: bytes) -> str:
    """A record's seal, recomputed here independently of rotatord: SHA-256 of the record's
    compact JSON without its ``hash`` member, which must equal that member."""
    record = json.loads(line)
    claimed = record.pop("hash")
    digest = hashlib.sha256(json.dumps(record, separators=(",", ":")).encode()).hexdigest()
    assert digest == claimed
    return str(claimed)


def seal(record: Mapping[str, object]) -> bytes:
    """What a forger who knows the format writes: a record with a valid self-hash."""
    body = json.dumps(record, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    return (body[:-1] + f',"hash":"{digest}"}}\n').encode()


def build_log(path: Path) -> Lines:
    """Write RECORDS audit events through the real AuditLog and return the file's lines."""
    clock = FakeClock()
    audit = AuditLog(path, clock, echo=False)
    for i in range(RECORDS):
        audit.emit(
            EVENT_CYCLE[i % len(EVENT_CYCLE)],
            service="web",
            rotation_id=f"rot{i // len(EVENT_CYCLE)}",
            trigger="manual",
            n=i,
        )
        clock.advance(1)
    return path.read_bytes().splitlines(keepends=True)


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m rotatord audit verify FILE``."""
    return subprocess.run(
        [sys.executable, "-m", "rotatord", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def reported_line(result: subprocess.CompletedProcess[str], path: Path) -> int:
    """The line number ``audit verify`` names on stderr (``FILE:LINE: reason``)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    prefix = f"{path}:"
    assert result.stderr.startswith(prefix), result.stderr
    return int(result.stderr[len(prefix) :].split(":", 1)[0])


def edit_value(line: bytes) -> bytes:
    record = json.loads(line)
    record["service"] = "api"
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def test_intact_log_verifies(tmp_path: Path) -> None:
    """A log written by AuditLog verifies: exit 0, OK and the record count on stdout."""
    path = tmp_path / "audit.jsonl"
    lines = build_log(path)
    assert len(lines) == RECORDS
    # The chain is what the README says, checked without rotatord's own verifier.
    prev = GENESIS
    for line in lines:
        assert json.loads(line)["prev"] == prev
        prev = line_hash(line)
    result = verify(path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and f"{RECORDS} records" in result.stdout


def _swap(lines: Lines, i: int, j: int) -> Lines:
    out = list(lines)
    out[i - 1], out[j - 1] = out[j - 1], out[i - 1]
    return out


def _insert_forged(lines: Lines, at: int) -> Lines:
    """A forged record at line ``at`` whose own ``prev`` correctly covers the line before it."""
    forged = {
        "ts": "2026-01-01T00:00:30+00:00",
        "event": "rotation_finished",
        "service": "web",
        "rotation_id": "forged",
        "trigger": "manual",
        "outcome": "rotated",
        "prev": line_hash(lines[at - 2]),
    }
    return [*lines[: at - 1], seal(forged), *lines[at - 1 :]]


# (how the log is tampered with, the line numbers `audit verify` may rightly name)
TAMPERING: dict[str, tuple[Callable[[Lines], Lines], set[int]]] = {
    # An edited record no longer matches its own hash: the edited line itself is named.
    "edit-value-line-7": (lambda ls: [*ls[:6], edit_value(ls[6]), *ls[7:]], {7}),
    "edit-value-line-1": (lambda ls: [edit_value(ls[0]), *ls[1:]], {1}),
    "edit-prev-line-7": (
        lambda ls: [*ls[:6], ls[6].replace(b'"prev":"', b'"prev":"0'), *ls[7:]],
        {7},
    ),
    "delete-line-7": (lambda ls: [*ls[:6], *ls[7:]], {7}),
    "delete-line-1": (lambda ls: ls[1:], {1}),
    "insert-forged-line-7": (lambda ls: _insert_forged(ls, 7), {8}),
    "swap-lines-7-12": (lambda ls: _swap(ls, 7, 12), {7}),
    "swap-adjacent-7-8": (lambda ls: _swap(ls, 7, 8), {7}),
    "truncate-last-line": (lambda ls: [*ls[:-1], ls[-1][: len(ls[-1]) // 2]], {RECORDS}),
    "append-garbage": (lambda ls: [*ls, b"this is not an audit record\n"], {RECORDS + 1}),
    "append-garbage-no-newline": (lambda ls: [*ls, b'{"event":'], {RECORDS + 1}),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_detected_and_first_bad_line_named(tmp_path: Path, kind: str) -> None:
    """Each kind of tampering makes ``audit verify`` exit 1 naming the first line whose chain
    check fails."""
    path = tmp_path / "audit.jsonl"
    tamper, expected = TAMPERING[kind]
    path.write_bytes(b"".join(tamper(build_log(path))))
    assert reported_line(verify(path), path) in expected


def test_edit_of_last_record_is_detected(tmp_path: Path) -> None:
    """Editing the newest record (no later line's prev covers it) still fails verification,
    naming that line."""
    path = tmp_path / "audit.jsonl"
    lines = build_log(path)
    path.write_bytes(b"".join([*lines[:-1], edit_value(lines[-1])]))
    assert reported_line(verify(path), path) == RECORDS


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    """Eight processes appending to one audit file at once (a daemon and CLI runs) still leave a
    single valid chain holding every record."""
    path = tmp_path / "audit.jsonl"
    writers, per_writer = 8, 100
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from rotatord.clock import SystemClock\nfrom rotatord.observe.audit import AuditLog\n"
        "audit = AuditLog(Path(sys.argv[1]), SystemClock(), echo=False)\n"
        "print('ready', flush=True)\nsys.stdin.readline()\n"
        "for i in range(int(sys.argv[2])):\n"
        "    audit.emit('control_request', verb='ping', writer=sys.argv[3], n=i)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(per_writer), str(w)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for w in range(writers)
    ]
    for p in procs:  # a start barrier: every writer imported and waiting, then all go at once
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
    for p in procs:
        assert p.wait(timeout=120) == 0
        assert p.stdout is not None
        p.stdout.close()
    result = verify(path)
    assert result.returncode == 0, result.stderr
    assert f"{writers * per_writer} records" in result.stdout


# --------------------------------------------------------------------------- real rotations


def pebble_config(pebble: PebbleServer, tmp: Path) -> tuple[Path, Path]:
    state = tmp / "state"
    cfg = write_config(tmp / "r.toml", pebble, state, service("web", pebble.http_port))
    return cfg, state


@pytest.mark.pebble
def test_audit_verify_passes_on_a_real_rotation_log(
    pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """After real CLI rotations against Pebble, ``rotatord audit verify`` (file from the config)
    passes; deleting that log's key_generated record is then caught at its line."""
    cfg, state = pebble_config(pebble_server, short_tmp)
    for _ in range(2):
        result = run_cli(cfg, "rotate", "web", "--force")
        assert result.returncode == 0, result.stderr
    ok = run_cli(cfg, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    path = state / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines, 1) if json.loads(line)["event"] == "key_generated")
    path.write_bytes(b"".join(lines[: at - 1] + lines[at:]))
    assert reported_line(run_cli(cfg, "audit", "verify"), path) == at


@pytest.mark.pebble
@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_rotate_stops_before_any_key_when_audit_is_unwritable(
    pebble_server: PebbleServer, short_tmp: Path, kind: str
) -> None:
    """When the audit log cannot be written (its path is a directory or a symlink), `rotatord
    rotate` exits 1 before generating a key: no new version, no key_generated anywhere, and
    stderr says why."""
    cfg, state = pebble_config(pebble_server, short_tmp)
    first = run_cli(cfg, "rotate", "web", "--force")
    assert first.returncode == 0, first.stderr
    service_dir = state / "services" / "web"
    versions = sorted(os.listdir(service_dir / "versions"))
    current = os.readlink(service_dir / "current")
    audit = state / "audit.jsonl"
    saved = audit.read_bytes()
    audit.unlink()
    elsewhere = short_tmp / "elsewhere.jsonl"
    if kind == "directory":
        audit.mkdir()
    else:
        elsewhere.write_bytes(saved)
        audit.symlink_to(elsewhere)

    result = run_cli(cfg, "rotate", "web", "--force")

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "audit" in result.stderr, result.stderr
    assert sorted(os.listdir(service_dir / "versions")) == versions, "a key was generated"
    assert os.readlink(service_dir / "current") == current
    assert "key_generated" not in result.stdout + result.stderr
    if kind == "directory":
        assert os.listdir(audit) == []
    else:
        assert elsewhere.read_bytes() == saved, "the symlink's target was written through"
    restored = short_tmp / "restored.jsonl"
    restored.write_bytes(saved)
    assert len(events(read_audit(restored), "key_generated")) == 1  # the first rotation's only


def test_torn_tail_is_cut_and_alarmed(tmp_path: Path) -> None:
    """A kill mid-append leaves a line without its newline; the next append cuts it back,
    records an alarm naming the dropped bytes, and the chain verifies again."""
    path = tmp_path / "audit.jsonl"
    lines = build_log(path)
    torn = b'{"ts":"2026-01-01T00:00:00+00:00","event":"rotation_star'
    path.write_bytes(b"".join(lines) + torn)
    assert verify(path).returncode == 1
    AuditLog(path, FakeClock()).emit("rotation_started", service="web", rotation_id="r")
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert len(records) == RECORDS + 2
    alarm = records[-2]
    assert alarm["event"] == "alarm"
    assert alarm["dropped_bytes"] == len(torn)
    assert alarm["dropped_sha256"] == hashlib.sha256(torn).hexdigest()
    assert verify(path).returncode == 0
