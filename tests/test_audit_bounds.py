"""Every audit record is bounded and written, whatever it is given: huge values are truncated
with a visible marker, key-like values are replaced by their fingerprint (never dropped), and an
oversized record already in the file (an older rotatord's) does not stop later appends.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotatord.clock import FakeClock
from rotatord.config import load_config
from rotatord.daemon import Planner, build_rotator
from rotatord.daemon.loop import ServiceLoop
from rotatord.daemon.verbs import Verbs
from rotatord.observe.audit import GENESIS, AuditLog, verify_chain
from rotatord.observe.sanitize import MAX_RECORD, MAX_STRING, fingerprint
from rotatord.runtime import control
from rotatord.runtime.control import ControlServer

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg" + "A" * 40 + "\n"
    "-----END PRIVATE KEY-----\n"
)
JWK = '{"kty":"EC","crv":"P-256","d":"' + "B" * 43 + '"}'
EIGHT_MIB = 8 << 20


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def legacy_line(record: dict[str, Any]) -> bytes:
    """A record as the previous rotatord wrote it (no size cap): JSON plus its SHA-256."""
    body = json.dumps(record, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    return (body[:-1] + f',"hash":"{digest}"}}\n').encode()


def test_huge_string_is_truncated_with_a_marker(tmp_path: Path) -> None:
    """An 8 MiB error string (a hostile CA's URL) becomes a record under MAX_RECORD whose value
    keeps its start and says how many bytes were cut; the chain verifies."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, FakeClock(), echo=False)
    audit.emit(
        "rotation_failed", service="web", error="x" * EIGHT_MIB, problems=["y" * 10**6] * 500
    )
    line = path.read_bytes()
    assert len(line) < MAX_RECORD
    (rec,) = records(path)
    assert rec["error"].startswith("x" * MAX_STRING)
    assert rec["error"].endswith(f"…[truncated {EIGHT_MIB - MAX_STRING} bytes]")
    assert rec["problems"][-1] == "…[400 more items]"
    assert verify_chain(path).ok


def test_deep_and_odd_values_are_bounded(tmp_path: Path) -> None:
    """Nesting, huge integers, non-finite floats and arbitrary objects are made JSON-native and
    bounded, so the record is written and re-verifies byte for byte."""
    path = tmp_path / "audit.jsonl"
    deep: Any = "leaf"
    for _ in range(20_000):
        deep = [deep]
    audit = AuditLog(path, FakeClock(), echo=False)
    audit.emit(
        "alarm", deep=deep, big=10**5000, nan=float("nan"), obj=object(), ts="forged", prev="x"
    )
    (rec,) = records(path)
    assert "nested too deep" in json.dumps(rec["deep"])
    assert rec["big"] == "…[integer too large]" and rec["nan"] == "nan"
    assert rec["ts_field"] == "forged" and rec["prev_field"] == "x" and rec["prev"] == GENESIS
    assert verify_chain(path).ok


@pytest.mark.parametrize("secret", [PEM, JWK], ids=["pem", "jwk"])
def test_key_like_values_are_fingerprinted_not_dropped(tmp_path: Path, secret: str) -> None:
    """A field, a nested value, a mapping key or bytes that look like key material are replaced
    by ``sha256:<hex16>`` of the whole value and listed in ``redacted``; the record is there and
    the file holds no key text."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, FakeClock(), echo=False)
    audit.emit(
        "key_generated",
        service=secret,
        nested={"list": ["ok", secret]},
        weird={secret: 1},
        raw=b"\x01\x02",
    )
    (rec,) = records(path)
    fp = fingerprint(secret)
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 16
    assert rec["service"] == fp
    assert rec["nested"] == {"list": ["ok", fp]}
    assert rec["weird"] == {fp: 1}
    assert rec["raw"] == fingerprint(b"\x01\x02")
    assert rec["redacted"] == ["service", "nested.list[1]", "weird.<key>", "raw"]
    text = path.read_text()
    assert "PRIVATE KEY" not in text and "B" * 43 not in text
    assert verify_chain(path).ok


def test_an_8mib_record_already_in_the_log_does_not_stop_appends(tmp_path: Path) -> None:
    """An older rotatord's 8 MiB record as the last line: the next append reads the whole tail
    (not a 1 MiB window), chains onto it, and the log verifies."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, FakeClock(), echo=False)
    audit.emit("daemon_started", pid=1)
    prev = records(path)[-1]["hash"]
    huge = {"ts": "2026-01-01T00:00:01+00:00", "event": "rotation_failed", "error": "u" * EIGHT_MIB}
    with open(path, "ab") as fh:
        fh.write(legacy_line({**huge, "prev": prev}))
    audit.emit("rotation_started", service="web")
    audit.emit("rotation_finished", service="web")
    got = records(path)
    assert [r["event"] for r in got] == [
        "daemon_started",
        "rotation_failed",
        "rotation_started",
        "rotation_finished",
    ]
    result = verify_chain(path)
    assert result.ok and result.records == 4, result


def test_a_torn_8mib_tail_is_cut_back(tmp_path: Path) -> None:
    """A torn last line longer than any window is still cut back to the last whole record, with
    an alarm naming the dropped bytes."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, FakeClock(), echo=False)
    audit.emit("daemon_started", pid=1)
    torn = b'{"event":"rotation_failed","error":"' + b"t" * EIGHT_MIB
    with open(path, "ab") as fh:
        fh.write(torn)
    audit.emit("rotation_started", service="web")
    got = records(path)
    assert [r["event"] for r in got] == ["daemon_started", "alarm", "rotation_started"]
    assert got[1]["dropped_bytes"] == len(torn)
    assert got[1]["dropped_sha256"] == hashlib.sha256(torn).hexdigest()
    assert verify_chain(path).ok


# --------------------------------------------------------------------------- control requests

CONFIG = """
[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
control_socket = "{tmp}/ctl.sock"
control_allowed_uids = [{uid}]

[acme.pebble]
directory = "https://127.0.0.1:9/dir"

[services.web]
domains = ["web.example.test"]
account = "pebble"
[services.web.challenge]
listen = "127.0.0.1:5002"
"""

REQUESTS: dict[str, dict[str, Any]] = {
    "service": {"verb": "status", "service": PEM},
    "verb": {"verb": PEM},
    "services": {"verb": "rotate", "services": ["web", JWK]},
    "reason": {"verb": "revoke", "service": "nope", "reason": PEM},
    "unknown-field": {"verb": "ping", "extra": {"deep": [PEM]}},
    "field-name": {"verb": "ping", PEM: True},
}


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed", "refused"])
@pytest.mark.parametrize("which", list(REQUESTS))
def test_control_request_with_key_like_text_is_recorded(
    short_tmp: Path, which: str, allowed: bool
) -> None:
    """A control request with key-like text in any field, from an allowed or a refused uid,
    sent over a real socket, leaves exactly one control_request record (the text replaced by
    its fingerprint) and no key text in the log."""
    state = short_tmp / "state"
    cfg = short_tmp / "r.toml"
    uid = os.getuid() if allowed else 54321
    cfg.write_text(CONFIG.format(state=state, tmp=short_tmp, uid=uid))
    config = load_config(cfg)
    clock = FakeClock()
    audit = AuditLog(state / "audit.jsonl", clock, echo=False)
    rotator = build_rotator(config, clock, audit=audit)
    loop = ServiceLoop(
        rotator, Planner(rotator, clock), clock, audit, lambda *_: None, lambda *_: None
    )
    server = ControlServer(
        short_tmp / "ctl.sock", Verbs(lambda: config, loop, lambda _u: {}).handle
    )
    server.start()
    try:
        reply = control.request(short_tmp / "ctl.sock", REQUESTS[which], 10)
    finally:
        server.stop()
        rotator.close()
    assert "ok" in reply
    got = [r for r in records(state / "audit.jsonl") if r["event"] == "control_request"]
    assert len(got) == 1, got
    assert got[0]["allowed"] is allowed and got[0]["uid"] == os.getuid()
    assert got[0]["redacted"], got[0]
    text = (state / "audit.jsonl").read_text()
    assert "PRIVATE KEY" not in text and "B" * 43 not in text
    assert verify_chain(state / "audit.jsonl").ok


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=50)
    | st.integers(5000, 10**6).map(lambda n: "z" * n)  # long without costing entropy
    | st.integers(0, 3000).map(lambda n: ["w" * 200] * n)  # wide
    | st.binary(max_size=20)
    | st.sampled_from([PEM, JWK])
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=40,
)


@settings(max_examples=60, deadline=None, database=None)
@given(fields=st.dictionaries(st.text(max_size=30), _VALUES, max_size=12))
def test_any_fields_make_one_bounded_verifiable_record(fields: dict[str, Any]) -> None:
    """Whatever fields a caller passes, emit writes exactly one record, under MAX_RECORD, that
    re-verifies byte for byte and holds no key text."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        AuditLog(path, FakeClock(), echo=False).emit("alarm", **fields)
        data = path.read_bytes()
        assert data.count(b"\n") == 1 and len(data) < MAX_RECORD
        assert b"PRIVATE KEY" not in data and b"B" * 43 not in data
        assert verify_chain(path).ok
