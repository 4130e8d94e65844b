"""End to end: the real daemon against a real Pebble, observed by a real Prometheus, a webhook
receiver and a heartbeat receiver on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pebble import PebbleFactory
from rotatord.core.keys import generate_key
from rotatord.core.model import KeyType
from tests.certs import cert_to_pem, issue_leaf, key_to_pem, make_ca
from tests.daemon_harness import DaemonProcess, events, service, wait_for, write_config
from tests.observe_harness import Prometheus, Receiver, TlsEndpoint, binary, free_port, until

pytestmark = pytest.mark.pebble

RULES = Path(__file__).resolve().parent.parent / "config" / "alerts.rules.yml"


def start(config: Path, workdir: Path, daemons: list[DaemonProcess]) -> DaemonProcess:
    d = DaemonProcess(config, workdir)
    daemons.append(d)
    d.start()
    return d


def test_prometheus_scrapes_expiry_and_failures_and_promtool_is_clean(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A real Prometheus scraping the daemon answers PromQL with each service's expiry (equal to
    its certificate's notAfter) and failure count; promtool accepts the scrape and the rules."""
    pebble = pebble_factory()
    state = short_tmp / "state"
    port = free_port()
    names = ("web", "api")
    config = write_config(
        short_tmp / "r.toml",
        pebble,
        state,
        "".join(service(n, pebble.http_port) for n in names)
        + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    daemon = start(config, short_tmp, daemons)
    audit = state / "audit.jsonl"
    records = wait_for(
        audit,
        lambda rs: all(events(rs, "certificate_activated", n) for n in names),
        60,
        "both issued",
        daemon,
    )
    prom = Prometheus(short_tmp, [f"127.0.0.1:{port}"], rules=RULES).start()
    try:
        end = time.monotonic() + 30
        expiry: list[dict[str, object]] = []
        while time.monotonic() < end:
            expiry = prom.query("rotatord_certificate_expiration_timestamp_seconds")
            if len(expiry) == len(names):
                break
            time.sleep(0.2)  # Prometheus scrapes every second; wait for the first one
        by_name = {r["metric"]["name"]: float(r["value"][1]) for r in expiry}  # type: ignore[index]
        assert set(by_name) == set(names)
        for n in names:
            issued = events(records, "certificate_issued", n)[-1]
            assert by_name[n] == datetime.fromisoformat(issued["not_after"]).timestamp()
        failures = prom.query("rotatord_service_consecutive_failures")
        assert {r["metric"]["name"]: r["value"][1] for r in failures} == {n: "0" for n in names}
        ok = 'rotatord_http_acme_client_requests_total{status=~"2.."}'
        acme = prom.query(f"sum by (endpoint) ({ok})")
        endpoints = {r["metric"]["endpoint"] for r in acme}
        assert {"new_order", "finalize", "certificate"} <= endpoints
        rotated = prom.query('rotatord_rotations_total{outcome="rotated"}')
        assert {r["metric"]["name"] for r in rotated} == set(names)
    finally:
        prom.stop()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        scrape = r.read()
    check = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=scrape, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    rules = subprocess.run(
        [binary("promtool"), "check", "rules", str(RULES)], capture_output=True, timeout=30
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert daemon.stop() == 0


def alert_config(path: Path, pebble: object, state: Path, hook: Receiver, extra: str = "") -> Path:
    return write_config(
        path,
        pebble,  # type: ignore[arg-type]
        state,
        service("web", pebble.http_port)  # type: ignore[attr-defined]
        + f"""
[alerts]
evaluate_interval = "1s"
retry_initial = "1s"
retry_max = "2s"
[alerts.webhook.ops]
url = "{hook.url}"
timeout = 5
{extra}
""",
        'retry_ladder = ["5s"]',
    )


def test_ca_down_escalates_once_per_step_then_resolves(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """CA down while a 20-second certificate runs out: one webhook alert per step (⅓, 1/10,
    expired), none repeated, then one "resolved" once the CA is back and renewal succeeds."""
    pebble = pebble_factory(validity_seconds=20)
    hook = Receiver().start()
    try:
        state = short_tmp / "state"
        config = alert_config(short_tmp / "r.toml", pebble, state, hook)
        daemon = start(config, short_tmp, daemons)
        audit = state / "audit.jsonl"
        wait_for(audit, lambda rs: bool(events(rs, "certificate_activated", "web")), 60, "issued")
        pebble.pause()
        hook.wait(
            lambda rs: any(r.json().get("step") == "expired" for r in rs), 60, "expired alert"
        )
        pebble.resume()
        got = hook.wait(
            lambda rs: any(r.json().get("kind") == "resolved" for r in rs), 60, "resolved"
        )
        alerts = [r.json() for r in got]
        assert [(a["kind"], a["step"]) for a in alerts] == [
            ("at_risk", "third"),
            ("at_risk", "tenth"),
            ("at_risk", "expired"),
            ("resolved", "expired"),
        ]
        assert all(a["service"] == "web" and a["failures"] >= 1 for a in alerts[:3])
        assert alerts[3]["resolves"] == alerts[2]["id"]
        assert len({r.headers["X-Rotatord-Alert-Id"] for r in got}) == 4
        assert daemon.stop() == 0
    finally:
        hook.stop()


def test_webhook_down_loses_no_alert_across_a_restart(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """The webhook answers 503 while the first issuance fails (CA down): the alert waits in the
    queue on disk, survives a daemon restart without being raised twice, and is delivered once
    the webhook is back; the "resolved" follows it after the CA returns."""
    pebble = pebble_factory()
    hook = Receiver().start()
    hook.status = 503
    try:
        state = short_tmp / "state"
        config = alert_config(short_tmp / "r.toml", pebble, state, hook)
        pebble.pause()
        daemon = start(config, short_tmp, daemons)
        audit = state / "audit.jsonl"
        wait_for(audit, lambda rs: bool(events(rs, "rotation_failed", "web")), 60, "a failure")
        queue = state / "alerts" / "queue.json"

        def pending() -> list[dict[str, Any]]:
            return json.loads(queue.read_text())["pending"] if queue.exists() else []

        first = until(lambda: [p for p in pending() if p["attempts"] >= 1], 30, "a failed try")
        assert [p["alert"]["kind"] for p in first] == ["at_risk"]
        first_id = first[0]["id"]
        assert daemon.stop() == 0
        assert [p["id"] for p in pending()] == [first_id], "kept on disk"
        assert hook.requests == []

        daemon = start(config, short_tmp, daemons)
        wait_for(
            audit, lambda rs: len(events(rs, "rotation_failed", "web")) >= 2, 60, "2nd failure"
        )
        hook.status = 200
        got = hook.wait(lambda rs: len(rs) >= 1, 30, "the queued alert")
        pebble.resume()
        got = hook.wait(lambda rs: len(rs) >= 2, 60, "resolved")
        alerts = [r.json() for r in got]
        assert [(a["kind"], a["step"]) for a in alerts] == [
            ("at_risk", "expired"),
            ("resolved", "expired"),
        ], "raised once (not again after the restart), then resolved"
        assert got[0].headers["X-Rotatord-Alert-Id"] == first[0]["alert"]["id"]
        until(lambda: pending() == [], 10, "the queue to empty")
        assert daemon.stop() == 0
    finally:
        hook.stop()


def test_heartbeat_stops_while_the_daemon_is_stopped(
    pebble_server: object, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """The heartbeat URL is pinged every second; SIGSTOP silences it (the receiver's deadline
    passes without a ping) and SIGCONT brings it back."""
    hook = Receiver().start()
    try:
        state = short_tmp / "state"
        config = write_config(
            short_tmp / "r.toml",
            pebble_server,  # type: ignore[arg-type]
            state,
            f'\n[heartbeat]\nurl = "{hook.url}"\ninterval = "1s"\nfile = "{short_tmp}/beat"\n',
        )
        daemon = start(config, short_tmp, daemons)
        pings = hook.wait(lambda rs: len(rs) >= 3, 10, "three pings")
        assert all(p.method == "GET" and p.path == "/hook/secret-token" for p in pings)
        assert (short_tmp / "beat").exists()
        daemon.signal(signal.SIGSTOP)
        try:
            seen = len(hook.wait(lambda rs: True, 0, "a snapshot"))
            stopped_at = time.monotonic()
            with pytest.raises(AssertionError, match="timed out"):
                hook.wait(lambda rs: len(rs) > seen + 1, 3, "a ping while stopped")
            late = [p for p in hook.requests[seen:] if p.at > stopped_at + 1.5]
            assert late == [], "no ping well after SIGSTOP"
        finally:
            daemon.signal(signal.SIGCONT)
        hook.wait(lambda rs: len(rs) > seen + 1, 10, "pings after SIGCONT")
        assert daemon.stop() == 0
    finally:
        hook.stop()


def test_watched_endpoint_three_days_from_expiry_raises_an_alert(
    pebble_server: object, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A TLS endpoint rotatord does not manage serves a certificate 3 days from expiry: the
    daemon's webhook gets one ``expiring/soon`` alert for it and /metrics shows its expiry."""
    now = datetime.now(UTC).replace(microsecond=0)
    key = generate_key(KeyType.ECDSA_P256)
    cert = issue_leaf(
        make_ca(), key, ["legacy.example.test"], now - timedelta(days=87), now + timedelta(days=3)
    )
    ep = TlsEndpoint(short_tmp, cert_to_pem(cert), key_to_pem(key))
    hook = Receiver().start()
    port = free_port()
    try:
        config = write_config(
            short_tmp / "r.toml",
            pebble_server,  # type: ignore[arg-type]
            short_tmp / "state",
            f"""
[metrics]
listen = "127.0.0.1:{port}"
[alerts]
evaluate_interval = "1s"
[alerts.webhook.ops]
url = "{hook.url}"
[watch.legacy]
endpoint = "127.0.0.1:{ep.port}"
sni = "legacy.example.test"
""",
        )
        daemon = start(config, short_tmp, daemons)
        got = hook.wait(lambda rs: len(rs) >= 1, 20, "the expiring alert")
        alert = got[0].json()
        assert (alert["kind"], alert["service"], alert["step"]) == ("expiring", "legacy", "soon")
        assert alert["not_after"] == (now + timedelta(days=3)).isoformat()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        line = (
            'rotatord_certificate_expiration_timestamp_seconds{issuer_name="watch",name="legacy"}'
        )
        assert line in text
        assert daemon.stop() == 0
        assert [a["kind"] for a in hook.alerts()] == ["expiring"], "raised once"
    finally:
        hook.stop()
        ep.stop()
