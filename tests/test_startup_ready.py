"""READY means ready: every service recovered, planned and scheduled before READY=1 and before
the control socket answers; the start-up batch (due services, the CA's renewal information)
runs after, and nothing before READY waits on the CA."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from rotatord.core.model import IssuedMeta, KeyType, Trigger
from rotatord.runtime.control import request
from rotatord.store import Bundle, ServiceStatus, ServiceStore
from tests.certs import cert_to_pem, default_ca, key_to_pem
from tests.daemon_harness import DaemonProcess
from tests.fakes import _leaf
from tests.world import EventLoop, make_loop, make_world, service

DIRECTORY_PATH = "/dir"


def _install(state: Path, name: str, directory: str, now: datetime) -> str:
    """A current, valid, not-yet-due certificate with an AKI (so ARI applies), as a finished
    rotation leaves it: version, ``current``, status naming it."""
    ca = default_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    names = (f"{name}.example.test",)
    not_before, not_after = now - timedelta(days=1), now + timedelta(days=89)
    leaf = _leaf(ca, key.public_key(), names, not_before, not_after, x509.random_serial_number())
    meta = IssuedMeta(
        names=names,
        key_type=KeyType.ECDSA_P256,
        account="pebble",
        directory=directory,
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        issued_at=not_before,
    )
    store = ServiceStore(state, name)
    version = store.stage(Bundle(key_to_pem(key), cert_to_pem(leaf), ca.chain_pem, meta))
    store.activate(version)
    store.write_status(
        ServiceStatus(
            last_result="rotated",
            current_version=version.name,
            last_success=not_before,
            last_issued_at=not_before,
            issued_lifetime_s=(not_after - not_before).total_seconds(),
        ).to_doc()
    )
    return version.name


def test_ready_and_status_come_once_every_service_is_planned_without_the_ca(
    tmp_path: Path,
) -> None:
    """With a CA that accepts connections but never answers, READY=1 still comes, and at that
    moment the daemon's status shows a plan for every service (the start-up batch, which asks
    the CA for renewal information, is still stuck behind it)."""
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(64)  # connections complete in the backlog; nothing is ever read or sent
    port = stalled.getsockname()[1]
    directory = f"https://127.0.0.1:{port}{DIRECTORY_PATH}"
    state = tmp_path / "state"
    now = datetime.now(UTC).replace(microsecond=0)
    names = [f"svc{i:02d}" for i in range(12)]
    for name in names:
        _install(state, name, directory, now)
    services = "".join(
        f"""
[services.{name}]
domains = ["{name}.example.test"]
[services.{name}.challenge]
listen = "127.0.0.1:1"
"""
        for name in names
    )
    config = tmp_path / "rotatord.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
control_socket = "{state}/ctl.sock"
log_format = "json"

[acme.pebble]
directory = "{directory}"
timeout = 20
{services}"""
    )
    daemon = DaemonProcess(config, tmp_path)
    try:
        daemon.start(timeout=60)
        reply = request(state / "ctl.sock", {"verb": "status"}, timeout=30)
        assert reply["ok"], reply
        docs = {d["service"]: d for d in reply["services"]}
        assert sorted(docs) == names
        for name, doc in docs.items():
            # The planner's plan (capped at a day ahead), not the bare renewal decision.
            assert doc["planned"] is True, name
            assert doc["next_action"]["why"] == "recheck", (name, doc["next_action"])
            at = datetime.fromisoformat(doc["next_action"]["at"])
            assert now < at <= datetime.now(UTC) + timedelta(hours=24)
        # The start-up batch runs after READY and does ask the CA (it is stuck there now).
        stalled.settimeout(30)
        conn, _ = stalled.accept()
        conn.close()
        assert any("READY=1" in m.split("\n") for m in daemon.notify_messages)
        assert any("12 services planned" in m for m in daemon.notify_messages)
    finally:
        stalled.close()  # pending connections are reset: the batch's wait ends at once
        rc = daemon.stop(timeout=60)
        daemon.kill()
    assert rc == 0, daemon.log_tail()


def test_start_recovers_plans_and_schedules_every_service_without_asking_the_ca(
    tmp_path: Path,
) -> None:
    """``ServiceLoop.start``: one pass that recovers and plans each service from local state
    only; due ones are left to the start-up batch (planned, not scheduled), the rest are
    scheduled at their plan; the batch then does not recover them again, asks the CA for
    renewal information and rotates what is due."""
    w = make_world(tmp_path, [service("a"), service("b"), service("c")])
    w.ca.ari = True
    w.rotator.rotate_batch(["a", "b"], trigger=Trigger.MANUAL)
    stray = w.rotator.plain_store("a").versions_dir / ".tmp-stray"
    stray.mkdir()
    orders, queries = w.ca.order_count, len(w.ca.ari_queries)
    w.restart()
    events = EventLoop(w.clock)
    loop = make_loop(w, events)

    take = loop.start(["a", "b", "c"])

    assert take == ["c"]  # no certificate yet: due at once
    assert w.ca.order_count == orders and len(w.ca.ari_queries) == queries  # CA not asked
    assert not stray.exists()
    assert len(w.audit.events("store_recovered", "a")) == 1
    now = w.clock.now()
    plans = {n: loop.planner.planned_for(n)[0] for n in "abc"}
    assert all(p is not None for p in plans.values()), plans
    assert plans["c"] is not None and plans["c"].at <= now
    assert all(p is not None and p.at > now for n, p in plans.items() if n != "c")
    assert set(events._pending) == {"a", "b"}  # c waits for the batch, not for a job

    loop.batch(["a", "b", "c"], Trigger.STARTUP)

    assert w.ca.order_count == orders + 1  # c issued
    assert len(w.ca.ari_queries) > queries  # the batch asked about a and b
    assert len(w.audit.events("store_recovered", "a")) == 1  # not recovered twice
    assert set(events._pending) == {"a", "b", "c"}
