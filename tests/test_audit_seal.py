"""Forward-secure sealing of the audit log: with the operator's verification key, ``rotatord
audit verify --key`` proves every record up to the last sealed epoch authentic and in order, and
names the first bad record after an edit, deletion, insertion, reordering, or a rewrite with
recomputed hashes (even one re-MACed with the key stolen from the host); the plain check catches
only the accidental kinds and says so. Host keys are 0600, evolve at each epoch and the old
key's bytes are overwritten.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pebble import PebbleServer
from rotatord.clock import FakeClock
from rotatord.core.errors import AuditError
from rotatord.observe.audit import AuditLog
from rotatord.observe.sealkey import (
    host_key_path,
    load_verification_key,
    new_initial_key,
    write_verification_key,
)
from rotatord.observe.verify import verify_chain, verify_sealed
from rotatord.runtime import control
from tests.daemon_harness import DaemonProcess, read_audit, run_cli, service, write_config
from tests.unavailable import unavailable

Lines = list[bytes]
PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n"
EPOCH = 5  # records per epoch in these tests
EMITS = 24


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m rotatord ARGS`` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "rotatord", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sealed_log(tmp: Path, *, emits: int = EMITS) -> tuple[Path, Path, Path, FakeClock]:
    """A sealed log written through the real AuditLog: (log, verification key, host key)."""
    path, vkey, host = tmp / "audit.jsonl", tmp / "verify.key", host_key_path(tmp / "state")
    clock = FakeClock()
    initial = new_initial_key()
    write_verification_key(vkey, initial, clock.now())
    audit = AuditLog(path, clock, echo=False, seal_key=host, epoch_records=EPOCH)
    audit.start_sealing(initial, uid=0)
    for i in range(emits):
        audit.emit("rotation_started", service="web", n=i)
        clock.advance(1)
    return path, vkey, host, clock


def lines_of(path: Path) -> Lines:
    return path.read_bytes().splitlines(keepends=True)


def rec(line: bytes) -> dict[str, Any]:
    record = json.loads(line)
    assert isinstance(record, dict)
    return record


# ----------------------------------------------------------- what a forger does (independently)


def reseal(record: dict[str, Any], mac_key: bytes | None = None) -> bytes:
    """Recompute a record's hash (and, given a key, its MAC) the way the format is documented."""
    inner = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    body = json.dumps(inner, separators=(",", ":")).encode()
    out = {**inner, "hash": hashlib.sha256(body).hexdigest()}
    if mac_key is not None:
        out["mac"] = hmac.new(mac_key, b"rotatord audit record\n" + body, "sha256").hexdigest()
    elif "mac" in record:
        out["mac"] = record["mac"]
    return (json.dumps(out, separators=(",", ":")) + "\n").encode()


def rechain(lines: Lines, start: int, mac_key: bytes | None = None) -> Lines:
    """Fix every ``prev`` and ``hash`` from line ``start`` on, so the plain chain is intact."""
    out = list(lines[: start - 1])
    prev = rec(out[-1])["hash"] if out else "0" * 64
    for line in lines[start - 1 :]:
        record = rec(line)
        record["prev"] = prev
        fixed = reseal(record, mac_key)
        prev = rec(fixed)["hash"]
        out.append(fixed)
    return out


def edit(line: bytes) -> bytes:
    record = rec(line)
    record["service"] = "api"
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def stolen_key(host: Path) -> bytes:
    return bytes.fromhex(json.loads(host.read_text())["key"])


TARGET = 9  # a plain record inside epoch 1, which is sealed


def _insert_unsealed(ls: Lines) -> Lines:
    forged = {"ts": "2026-01-01T00:00:08+00:00", "event": "rotation_finished", "service": "web"}
    forged["prev"] = rec(ls[TARGET - 2])["hash"]
    return [*ls[: TARGET - 1], reseal(forged), *ls[TARGET - 1 :]]


# kind: (tampering given the lines and the host key, line named with the key, plain verify's
# verdict: the line it names, or None when the plain chain cannot see it)
Tamper = Callable[[Lines, Path], Lines]
TAMPERING: dict[str, tuple[Tamper, int, int | None]] = {
    "edit": (
        lambda ls, _h: [*ls[: TARGET - 1], edit(ls[TARGET - 1]), *ls[TARGET:]],
        TARGET,
        TARGET,
    ),
    "delete": (lambda ls, _h: [*ls[: TARGET - 1], *ls[TARGET:]], TARGET, TARGET),
    "insert": (lambda ls, _h: _insert_unsealed(ls), TARGET, TARGET + 1),
    "reorder": (
        lambda ls, _h: [*ls[: TARGET - 1], ls[TARGET], ls[TARGET - 1], *ls[TARGET + 1 :]],
        TARGET,
        TARGET,
    ),
    "rewrite-recomputed-hashes": (
        lambda ls, _h: rechain([*ls[: TARGET - 1], edit(ls[TARGET - 1]), *ls[TARGET:]], TARGET),
        TARGET,
        None,
    ),
    "delete-recomputed-hashes": (
        lambda ls, _h: rechain([*ls[: TARGET - 1], *ls[TARGET:]], TARGET),
        TARGET,
        None,
    ),
    "reorder-recomputed-hashes": (
        lambda ls, _h: rechain(
            [*ls[: TARGET - 1], ls[TARGET], ls[TARGET - 1], *ls[TARGET + 1 :]], TARGET
        ),
        TARGET,
        None,
    ),
    # The intruder holds the host's current key and re-MACs everything from the edit on.
    "rewrite-with-stolen-host-key": (
        lambda ls, h: rechain(
            [*ls[: TARGET - 1], edit(ls[TARGET - 1]), *ls[TARGET:]], TARGET, stolen_key(h)
        ),
        TARGET,
        None,
    ),
    # Removing an epoch's seal record (and fixing the chain) shows at the next epoch's first.
    "drop-seal-recomputed-hashes": (
        lambda ls, _h: rechain([*ls[:11], *ls[12:]], 12),
        12,
        None,
    ),
}


def test_sealed_log_verifies_and_says_what_is_proven(tmp_path: Path) -> None:
    """An untouched sealed log passes ``audit verify --key`` (a real subprocess), which reports
    the sealed epochs and the open tail; without the key it passes and says it proves
    integrity against accidents only."""
    path, vkey, _host, _ = sealed_log(tmp_path)
    records = [rec(line) for line in lines_of(path)]
    seals = [n for n, r in enumerate(records, 1) if r["event"] == "audit_sealed"]
    assert seals == [6, 12, 18, 24]  # START + 4, then every 5 records, each epoch closed by one
    assert [r["epoch"] for r in records[:7]] == [0] * 6 + [1]
    assert records[TARGET - 1]["event"] == "rotation_started" and records[TARGET - 1]["epoch"] == 1

    keyed = cli("audit", "verify", "--key", str(vkey), str(path))
    assert keyed.returncode == 0, keyed.stderr
    assert f"OK, {len(records)} records" in keyed.stdout
    assert "lines 1-24: authentic and in order (4 sealed epochs" in keyed.stdout
    assert f"lines 25-{len(records)}: in the open epoch" in keyed.stdout
    assert "records lost from its end" in keyed.stdout

    plain = cli("audit", "verify", str(path))
    assert plain.returncode == 0, plain.stderr
    assert "accidents only" in plain.stdout and "--key" in plain.stdout


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_caught_by_the_key(tmp_path: Path, kind: str) -> None:
    """Each tampering makes ``verify --key`` fail naming the first bad record; the plain check
    catches only the ones that did not recompute the hashes, and says what it cannot prove."""
    path, vkey, host, _ = sealed_log(tmp_path)
    tamper, keyed_line, plain_line = TAMPERING[kind]
    path.write_bytes(b"".join(tamper(lines_of(path), host)))

    initial, kid = load_verification_key(vkey)
    sealed = verify_sealed(path, initial, kid)
    assert not sealed.ok and sealed.first_bad_line == keyed_line, sealed

    plain = verify_chain(path)
    if plain_line is None:
        assert plain.ok, plain  # a forger who recomputes hashes fools the keyless check...
    else:
        assert not plain.ok and plain.first_bad_line == plain_line, plain


def test_cli_names_the_first_bad_record(tmp_path: Path) -> None:
    """Through the real CLI: a rewrite with recomputed hashes exits 1 with
    ``FILE:LINE: reason`` under ``--key``, while the plain check passes and warns."""
    path, vkey, host, _ = sealed_log(tmp_path)
    tamper = TAMPERING["rewrite-recomputed-hashes"][0]
    path.write_bytes(b"".join(tamper(lines_of(path), host)))
    keyed = cli("audit", "verify", "--key", str(vkey), str(path))
    assert keyed.returncode == 1
    assert keyed.stderr.startswith(f"{path}:{TARGET}: MAC does not match"), keyed.stderr
    plain = cli("audit", "verify", str(path))
    assert plain.returncode == 0 and "accidents only" in plain.stdout


def test_truncation_to_a_seal_is_not_claimed(tmp_path: Path) -> None:
    """Cutting the file back to a seal cannot be seen in the file: verify passes but reports
    fewer sealed epochs and states that lost newest records are not provable."""
    path, vkey, _host, _ = sealed_log(tmp_path)
    path.write_bytes(b"".join(lines_of(path)[:12]))
    initial, kid = load_verification_key(vkey)
    result = verify_sealed(path, initial, kid)
    assert result.ok and result.epochs == 2 and result.open_records == 0


def test_wrong_key_and_unsealed_records_fail(tmp_path: Path) -> None:
    """Another key fails at the first sealed record naming its key id; a record appended by a
    writer without the seal key is named as unsealed."""
    path, _vkey, _host, clock = sealed_log(tmp_path)
    other = new_initial_key()
    write_verification_key(tmp_path / "other.key", other, clock.now())
    initial, kid = load_verification_key(tmp_path / "other.key")
    wrong = verify_sealed(path, initial, kid)
    assert not wrong.ok and wrong.first_bad_line == 1 and "not the key" in wrong.reason
    AuditLog(path, clock, echo=False).emit("alarm", problem="unsealed writer")
    right = verify_sealed(path, *load_verification_key(tmp_path / "verify.key"))
    assert not right.ok and right.first_bad_line == len(lines_of(path))
    assert "not sealed" in right.reason


def test_epoch_closes_on_time_and_at_stop(tmp_path: Path) -> None:
    """An epoch holding records closes after epoch_seconds (at the next append, or by
    ``maybe_seal`` from the daemon's loop) and at a forced seal (clean stop); an empty epoch is
    never sealed."""
    path, host = tmp_path / "audit.jsonl", host_key_path(tmp_path / "state")
    clock = FakeClock()
    audit = AuditLog(path, clock, echo=False, seal_key=host, epoch_seconds=300)
    audit.start_sealing(new_initial_key())
    audit.maybe_seal()
    assert len(lines_of(path)) == 1  # not due yet
    clock.advance(timedelta(seconds=301))
    audit.maybe_seal()
    audit.maybe_seal()  # the new epoch is empty: nothing to seal
    audit.emit("daemon_stopped", pid=1)
    audit.maybe_seal(force=True)
    events = [(r["event"], r["epoch"]) for r in map(rec, lines_of(path))]
    assert events == [
        ("audit_seal_started", 0),
        ("audit_sealed", 0),
        ("daemon_stopped", 1),
        ("audit_sealed", 1),
    ]
    assert json.loads(host.read_text())["epoch"] == 2


def test_host_key_is_private_and_the_old_key_is_overwritten(tmp_path: Path) -> None:
    """The host key and the verification key are 0600 regular files; an evolution replaces the
    host key and zeroes the old file's bytes (read here through a descriptor held open)."""
    path, vkey, host, _ = sealed_log(tmp_path, emits=3)
    for f in (host, vkey):
        st = os.lstat(f)
        assert st.st_mode & 0o777 == 0o600 and st.st_nlink == 1
    assert os.lstat(host.parent).st_mode & 0o777 == 0o700
    fd = os.open(host, os.O_RDONLY)
    try:
        before = os.pread(fd, 4096, 0)
        assert b'"key"' in before
        audit = AuditLog(path, FakeClock(), echo=False, seal_key=host, epoch_records=EPOCH)
        for _ in range(EPOCH):
            audit.emit("alarm", problem="fill the epoch")
        after = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    assert after == b"\0" * len(before)
    assert json.loads(host.read_text())["epoch"] == 1
    assert sorted(os.listdir(host.parent)) == ["seal.key"]
    assert b"PRIVATE" not in path.read_bytes()
    assert stolen_key(host).hex().encode() not in path.read_bytes()


def test_kill_between_seal_and_evolution_is_finished(tmp_path: Path) -> None:
    """If the process dies after an epoch's seal record but before the key evolved, the next
    append evolves it first; the log verifies."""
    path, vkey, host, clock = sealed_log(tmp_path, emits=4)  # epoch 0 is full, not yet sealed
    audit = AuditLog(path, clock, echo=False, seal_key=host, epoch_records=EPOCH)
    saved = host.read_bytes()
    audit.maybe_seal(force=True)
    host.unlink()
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, saved)  # the old key back, as if the evolution never happened
    os.close(fd)
    audit.emit("alarm", problem="after the crash")
    records = [rec(line) for line in lines_of(path)]
    assert [(r["event"], r["epoch"], r["seq"]) for r in records[-2:]] == [
        ("audit_sealed", 0, 5),
        ("alarm", 1, 0),
    ]
    assert json.loads(host.read_text())["epoch"] == 1
    assert verify_sealed(path, *load_verification_key(vkey)).ok


def test_a_host_key_behind_the_log_is_refused(tmp_path: Path) -> None:
    """A host key older than the log (restored from a backup) is refused rather than used to
    write records no verifier would accept."""
    path, _vkey, host, clock = sealed_log(tmp_path, emits=2)
    saved = host.read_bytes()
    audit = AuditLog(path, clock, echo=False, seal_key=host, epoch_records=EPOCH)
    audit.maybe_seal(force=True)
    audit.emit("alarm", problem="in epoch 1")
    host.unlink()
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, saved)
    os.close(fd)
    with pytest.raises(AuditError, match="restored from a backup"):
        audit.emit("alarm", problem="must not be written with epoch 0's key")


def test_sealed_log_without_its_host_key_refuses_to_append(tmp_path: Path) -> None:
    """Once the log is sealed, a missing host key stops appends (no silent fall back to an
    unsealed log) with a message saying what to do."""
    path, _vkey, host, clock = sealed_log(tmp_path, emits=1)
    host.unlink()
    audit = AuditLog(path, clock, echo=False, seal_key=host)
    with pytest.raises(AuditError, match=r"seal key .* is missing"):
        audit.emit("rotation_started", service="web")


def test_restarted_sealing_and_a_moved_aside_log(tmp_path: Path) -> None:
    """After the host key is lost and sealing restarted in the same log, the old key names the
    restart and the new key proves the rest; a log moved aside and begun anew verifies with
    the same key from its first (sealed) record."""
    path, vkey, host, clock = sealed_log(tmp_path, emits=7)
    n = len(lines_of(path))
    host.unlink()
    second = new_initial_key()
    write_verification_key(tmp_path / "second.key", second, clock.now())
    audit = AuditLog(path, clock, echo=False, seal_key=host, epoch_records=EPOCH)
    audit.start_sealing(second)
    audit.emit("rotation_started", service="web")
    old = verify_sealed(path, *load_verification_key(vkey))
    assert not old.ok and old.first_bad_line == n + 1 and "restarted" in old.reason
    new = verify_sealed(path, *load_verification_key(tmp_path / "second.key"))
    assert new.ok and new.before_sealing == n, new

    os.rename(path, tmp_path / "audit.old.jsonl")
    for _ in range(3):
        audit.emit("rotation_started", service="web")
    fresh = verify_sealed(path, *load_verification_key(tmp_path / "second.key"))
    assert fresh.ok and fresh.records == 3 and fresh.before_sealing == 0, fresh
    assert not fresh.has_start and fresh.first_epoch == 0
    said = cli("audit", "verify", "--key", str(tmp_path / "second.key"), str(path))
    assert said.returncode == 0 and "not at the start of sealing" in said.stdout, said


def test_concurrent_sealed_writers_keep_one_sealed_chain(tmp_path: Path) -> None:
    """Four processes appending to one sealed log at once (the flock covers the key too) leave
    one chain whose every seal verifies."""
    path, vkey, host, _ = sealed_log(tmp_path, emits=0)
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from rotatord.clock import SystemClock\nfrom rotatord.observe.audit import AuditLog\n"
        "audit = AuditLog(Path(sys.argv[1]), SystemClock(), echo=False,"
        " seal_key=Path(sys.argv[2]), epoch_records=7)\n"
        "for i in range(50):\n    audit.emit('control_request', verb='ping', n=i)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(host)]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    result = verify_sealed(path, *load_verification_key(vkey))
    assert result.ok, result
    assert sum(rec(line)["event"] == "control_request" for line in lines_of(path)) == 200
    assert result.epochs >= 200 // 7


def test_init_seal_cli(short_tmp: Path) -> None:
    """``rotatord audit init-seal --out FILE`` writes a 0600 verification key, the host key
    and the start record; it refuses a second run and an existing FILE; ``audit verify --key``
    (file from the config) then passes."""
    state = short_tmp / "state"
    cfg = short_tmp / "r.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{state}"\naudit_log = "{short_tmp}/audit.jsonl"\n'
        f'control_socket = "{short_tmp}/ctl.sock"\n'
        '[acme.ca]\ndirectory = "https://127.0.0.1:9/dir"\n'
    )
    out = short_tmp / "verify.key"
    first = cli("-c", str(cfg), "audit", "init-seal", "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "Move it off this host" in first.stderr
    assert os.lstat(out).st_mode & 0o777 == 0o600
    assert os.lstat(host_key_path(state)).st_mode & 0o777 == 0o600
    key_hex = json.loads(out.read_text())["key"]
    assert key_hex not in first.stdout + first.stderr
    assert key_hex not in (short_tmp / "audit.jsonl").read_text()
    again = cli("-c", str(cfg), "audit", "init-seal", "--out", str(short_tmp / "v2.key"))
    assert again.returncode == 1 and "already started" in again.stderr
    assert not (short_tmp / "v2.key").exists()
    verified = cli("-c", str(cfg), "audit", "verify", "--key", str(out))
    assert verified.returncode == 0, verified.stderr
    assert "no epoch is sealed yet" in verified.stdout


def test_init_seal_to_stdout(short_tmp: Path) -> None:
    """``init-seal --out -`` prints the verification key and nothing else on stdout (so it can
    be piped off the host), and that key verifies the log."""
    cfg = short_tmp / "r.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{short_tmp}/state"\naudit_log = "{short_tmp}/audit.jsonl"\n'
        f'control_socket = "{short_tmp}/ctl.sock"\n'
        '[acme.ca]\ndirectory = "https://127.0.0.1:9/dir"\n'
    )
    result = cli("-c", str(cfg), "audit", "init-seal", "--out", "-")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "rotatord-audit-verification-key"
    key = short_tmp / "k.json"
    key.write_text(result.stdout)
    assert doc["key"] not in result.stderr
    assert cli("-c", str(cfg), "audit", "verify", "--key", str(key)).returncode == 0


@pytest.mark.pebble
def test_daemon_seals_what_it_writes(pebble_server: PebbleServer, short_tmp: Path) -> None:
    """A real daemon with sealing started: a rotation over the control socket and a control
    request with key-like text are recorded, the stop closes the epoch, and ``audit verify
    --key`` proves every record, with nothing left in an open epoch."""
    state = short_tmp / "state"
    cfg = write_config(
        short_tmp / "r.toml", pebble_server, state, service("web", pebble_server.http_port)
    )
    out = short_tmp / "verify.key"
    assert run_cli(cfg, "audit", "init-seal", "--out", str(out)).returncode == 0
    daemon = DaemonProcess(cfg, short_tmp)
    daemon.start()
    try:
        rotated = run_cli(cfg, "rotate", "web", "--force")
        assert rotated.returncode == 0, rotated.stderr
        reply = control.request(state / "ctl.sock", {"verb": "status", "service": PEM}, 30)
        assert reply["ok"], reply
    finally:
        assert daemon.stop() == 0, daemon.log_tail()
    records = read_audit(state / "audit.jsonl")
    assert [r["event"] for r in records[-2:]] == ["daemon_stopped", "audit_sealed"]
    assert all("mac" in r for r in records)
    assert any(r["event"] == "control_request" and r.get("redacted") for r in records)
    assert "PRIVATE KEY" not in (state / "audit.jsonl").read_text()
    result = verify_sealed(state / "audit.jsonl", *load_verification_key(out))
    assert result.ok and result.open_records == 0 and result.sealed_through == len(records)


def test_root_starting_and_evolving_keeps_the_key_the_daemon_users(tmp_path: Path) -> None:
    """Root running init-seal (or a local rotation) for a daemon that runs as another user
    leaves the host key and its directory owned by the state dir's owner, so the daemon can
    still read it, and still 0600."""
    if os.geteuid() != 0:
        unavailable("needs root to hand the key to another user")
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    host = host_key_path(state)
    audit = AuditLog(tmp_path / "audit.jsonl", FakeClock(), echo=False, seal_key=host)
    audit.start_sealing(new_initial_key())
    audit.maybe_seal(force=True)  # evolve as root
    for f in (host, host.parent):
        st = os.lstat(f)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), f
    assert os.lstat(host).st_mode & 0o777 == 0o600
    assert json.loads(host.read_text())["epoch"] == 1


@pytest.mark.parametrize("kind", ["symlink", "group-readable", "hard-linked", "naive-time"])
def test_a_suspect_host_key_is_refused(tmp_path: Path, kind: str) -> None:
    """A host key that is a symlink, readable by group, hard-linked elsewhere or malformed is
    refused with an audit error naming it; nothing is appended with it."""
    path, _vkey, host, clock = sealed_log(tmp_path, emits=1)
    before = path.read_bytes()
    if kind == "symlink":
        real = tmp_path / "elsewhere.key"
        os.rename(host, real)
        host.symlink_to(real)
    elif kind == "group-readable":
        host.chmod(0o640)
    elif kind == "hard-linked":
        os.link(host, tmp_path / "copy.key")
    else:
        doc = json.loads(host.read_text())
        doc["opened"] = "2026-01-01T00:00:00"
        host.write_text(json.dumps(doc))
    audit = AuditLog(path, clock, echo=False, seal_key=host)
    with pytest.raises(AuditError, match=str(host)):
        audit.emit("rotation_started", service="web")
    assert path.read_bytes() == before
