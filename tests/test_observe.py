"""Unit tests for rotatord.observe's metrics, alerts, queue, sinks and heartbeat, and their
config: the clock is a FakeClock, the webhook a real HTTP receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rotatord.clock import FakeClock
from rotatord.config import parse_config
from rotatord.core.errors import ConfigError
from rotatord.core.keys import generate_key
from rotatord.core.model import KeyType
from rotatord.core.observing import (
    AlertsSpec,
    CommandSink,
    HeartbeatSpec,
    ObserveSpec,
    WatchSpec,
    WebhookSink,
)
from rotatord.observe.alert_queue import AlertQueue
from rotatord.observe.alert_sinks import AlertDeliveryError, run_command, signature
from rotatord.observe.alerts import AlertEngine, risk_step
from rotatord.observe.heartbeat import beat
from rotatord.observe.metrics import Metrics, acme_endpoint, cause_of
from rotatord.observe.metrics_http import MetricsServer
from rotatord.observe.runner import ObserverThreads
from rotatord.observe.watch import Watcher, check, covers
from tests.certs import cert_to_pem, issue_leaf, key_to_pem, make_ca
from tests.observe_harness import Receiver, TlsEndpoint, binary, free_port, until

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


# --------------------------------------------------------------------------- escalation steps


@pytest.mark.parametrize(
    ("lifetime", "left", "step"),
    [
        (90 * DAY, 31 * DAY, None),
        (90 * DAY, 30 * DAY, "third"),
        (90 * DAY, 9 * DAY, "tenth"),
        (90 * DAY, DAY, "day"),
        (90 * DAY, timedelta(0), "expired"),
        (90 * DAY, -DAY, "expired"),
        # A 20-second certificate: "one day left" would come before a third; it is left out.
        (timedelta(seconds=20), timedelta(seconds=7), None),
        (timedelta(seconds=20), timedelta(seconds=6), "third"),
        (timedelta(seconds=20), timedelta(seconds=2), "tenth"),
        # A 6-day certificate: its one-day mark comes before its tenth (0.6 days).
        (6 * DAY, DAY, "day"),
        (6 * DAY, timedelta(hours=14), "tenth"),
    ],
)
def test_risk_step_by_remaining_lifetime(
    lifetime: timedelta, left: timedelta, step: str | None
) -> None:
    """Each step is reached at its fraction of the certificate's lifetime, or at expiry."""
    not_after = T0 + lifetime
    got = risk_step(T0, not_after, not_after - left)
    assert (got[0] if got else None) == step


def test_risk_ranks_rise_through_a_six_day_certificate() -> None:
    """Ranks order the steps of one certificate as time passes, whichever mark comes first."""
    not_after = T0 + 6 * DAY
    ranks = [risk_step(T0, not_after, not_after - left) for left in (2 * DAY, DAY, DAY / 2)]
    assert [r[0] for r in ranks if r] == ["third", "day", "tenth"]
    assert [r[1] for r in ranks if r] == [1, 2, 3]
    assert risk_step(None, None, T0) == ("expired", 99)


# --------------------------------------------------------------------------- the engine


def status(
    failures: int, not_after: datetime | None, lifetime: timedelta = 90 * DAY
) -> dict[str, Any]:
    return {
        "service": "web",
        "account": "le",
        "failures": failures,
        "not_before": (not_after - lifetime).isoformat() if not_after else None,
        "not_after": not_after.isoformat() if not_after else None,
        "last_error": "cannot reach the CA",
        "next_action": {"at": T0.isoformat(), "why": "retry"},
    }


def engine(tmp_path: Path, **spec: Any) -> AlertEngine:
    alerts = AlertsSpec(webhooks=(WebhookSink("ops", "http://127.0.0.1:9/x"),), **spec)
    return AlertEngine(lambda: alerts, AlertQueue(tmp_path, alerts.queue_max))


def queued(e: AlertEngine) -> list[tuple[str, str | None]]:
    return [(d.alert["kind"], d.alert.get("step")) for d in e.queue.pending]


def test_failing_service_escalates_once_per_step_then_resolves(tmp_path: Path) -> None:
    """Evaluated every day of a failing 90-day certificate's last month: one alert at ⅓, 1/10,
    one day and expiry each; then one "resolved" after a success, and nothing more."""
    e = engine(tmp_path)
    not_after = T0 + 31 * DAY
    for day in range(33):
        e.evaluate([status(day + 1, not_after)], T0 + day * DAY)
    assert queued(e) == [
        ("at_risk", "third"),
        ("at_risk", "tenth"),
        ("at_risk", "day"),
        ("at_risk", "expired"),
    ]
    renewed = T0 + 120 * DAY
    e.evaluate([status(0, renewed)], T0 + 33 * DAY)
    e.evaluate([status(0, renewed)], T0 + 34 * DAY)
    assert queued(e)[-1] == ("resolved", "expired")
    assert len(e.queue.pending) == 5
    assert e.queue.pending[-1].alert["resolves"] == e.queue.pending[-2].alert["id"]
    assert e.queue.open == {}


def test_a_restart_neither_repeats_nor_forgets_an_open_alert(tmp_path: Path) -> None:
    """The open step is on disk: a new engine on the same state dir raises the next step only."""
    not_after = T0 + 31 * DAY
    first = engine(tmp_path)
    first.evaluate([status(1, not_after)], T0 + DAY)
    again = engine(tmp_path)
    again.evaluate([status(2, not_after)], T0 + 2 * DAY)
    assert queued(again) == [("at_risk", "third")]
    again.evaluate([status(3, not_after)], T0 + 23 * DAY)
    assert queued(again) == [("at_risk", "third"), ("at_risk", "tenth")]


def test_no_alert_while_succeeding_or_before_a_third_is_left(tmp_path: Path) -> None:
    """Failures with more than ⅓ left, and near expiry without failures, raise nothing."""
    e = engine(tmp_path)
    e.evaluate([status(3, T0 + 40 * DAY)], T0)
    e.evaluate([status(0, T0 + DAY)], T0)
    assert queued(e) == []


def test_event_alerts_are_deduplicated_within_the_window(tmp_path: Path) -> None:
    """The same alarm twice within dedup_window is sent once; after the window, again."""
    e = engine(tmp_path, dedup_seconds=3600)
    fields = {"service": "web", "problem": "rollback did not restore service"}
    e.on_event("alarm", fields, T0)
    e.on_event("alarm", fields, T0 + timedelta(minutes=30))
    e.on_event("rolled_back", {"service": "web", "cause": "probe failed", "ok": True}, T0)
    e.on_event("rotation_finished", {"service": "web"}, T0)
    e.on_event("revocation_detected", {"service": "web", "serial": "ab12"}, T0)
    e.on_event("alarm", fields, T0 + timedelta(minutes=61))
    assert queued(e) == [
        ("alarm", None),
        ("rolled_back", None),
        ("revocation_detected", None),
        ("alarm", None),
    ]
    assert e.queue.pending[1].alert["severity"] == "warning"
    assert e.queue.pending[2].alert["severity"] == "critical"
    assert "ab12 is revoked" in e.queue.pending[2].alert["summary"]


def test_queue_is_bounded_dropping_the_oldest(tmp_path: Path) -> None:
    """Past queue_max the oldest deliveries go (counted); the file stays 0600."""
    e = engine(tmp_path, queue_max=10)
    for i in range(15):
        e.on_event("alarm", {"service": f"s{i}", "problem": "x"}, T0)
    assert [d.alert["service"] for d in e.queue.pending] == [f"s{i}" for i in range(5, 15)]
    assert e.queue.dropped == 5
    path = tmp_path / "alerts" / "queue.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(json.loads(path.read_text())["pending"]) == 10


# --------------------------------------------------------------------------- delivery


def threads(tmp_path: Path, clock: FakeClock, alerts: AlertsSpec) -> ObserverThreads:
    spec = ObserveSpec(alerts=alerts)
    return ObserverThreads(
        lambda: spec, lambda: [], clock, AlertQueue(tmp_path, alerts.queue_max), Metrics("t")
    )


def test_webhook_retries_with_backoff_until_it_answers_and_signs(tmp_path: Path) -> None:
    """A 503 webhook is retried after 1 s, 2 s, 2 s (capped); once it answers, the alert
    arrives once, signed with HMAC-SHA256 over timestamp and body, and the queue is empty."""
    secret = tmp_path / "hook.key"
    secret.write_text("s3cret\n")
    hook = Receiver().start()
    try:
        sink = WebhookSink("ops", hook.url, 5.0, hmac_secret_file=secret)
        clock = FakeClock(T0)
        t = threads(
            tmp_path,
            clock,
            AlertsSpec(webhooks=(sink,), retry_initial_seconds=1, retry_max_seconds=2),
        )
        t.engine.on_event("alarm", {"service": "web", "problem": "p"}, clock.now())
        hook.status = 503
        waits = []
        for _ in range(3):
            waits.append(t.send_once())
            clock.advance(waits[-1])
        assert waits == [1.0, 2.0, 2.0]
        assert t.queue.pending[0].attempts == 3
        hook.status = 200
        assert t.send_once() == 60.0  # nothing left: the sender idles until woken
        got = hook.wait(lambda rs: len(rs) == 1, 5, "the alert")[0]
        assert t.queue.pending == []
        stamp = got.headers["X-Rotatord-Timestamp"]
        expected = hmac.new(b"s3cret", stamp.encode() + b"." + got.body, hashlib.sha256)
        assert got.headers["X-Rotatord-Signature"] == "sha256=" + expected.hexdigest()
        assert signature(b"s3cret", stamp, got.body) == got.headers["X-Rotatord-Signature"]
        assert b"s3cret" not in got.body
        assert b"s3cret" not in (tmp_path / "alerts" / "queue.json").read_bytes()
        assert got.json()["kind"] == "alarm"
    finally:
        hook.stop()


def test_rate_limit_holds_deliveries_in_the_queue(tmp_path: Path) -> None:
    """With max_per_minute = 2, a third alert waits for the minute to pass, then goes."""
    hook = Receiver().start()
    try:
        clock = FakeClock(T0)
        sink = WebhookSink("ops", hook.url)
        t = threads(tmp_path, clock, AlertsSpec(webhooks=(sink,), max_per_minute=2))
        for i in range(3):
            t.engine.on_event("alarm", {"service": f"s{i}", "problem": "p"}, clock.now())
        assert t.send_once() == 0.0
        assert t.send_once() == 0.0
        assert t.send_once() == 60.0
        assert len(t.queue.pending) == 1
        clock.advance(60)
        t.send_once()
        got = hook.wait(lambda rs: len(rs) == 3, 5, "three alerts")
        assert [r.json()["service"] for r in got] == ["s0", "s1", "s2"], "order kept"
    finally:
        hook.stop()


def test_command_sink_gets_the_alert_in_its_environment(tmp_path: Path) -> None:
    """The command runs without a shell with the alert as JSON in ROTATORD_ALERT plus its own
    env; a failing command is a delivery error (retried), never an exception elsewhere."""
    out = tmp_path / "alert.json"
    script = (
        "import os,sys; open(sys.argv[1],'w').write(os.environ['ROTATORD_ALERT']+os.environ['X'])"
    )
    ok = CommandSink("page", (sys.executable, "-c", script, str(out)), 10.0, {"X": "!"})
    run_command(ok, {"id": "a1", "kind": "alarm", "service": "web"})
    text = out.read_text()
    assert text.endswith("!") and json.loads(text[:-1])["id"] == "a1"
    bad = CommandSink("page", (sys.executable, "-c", "raise SystemExit(3)"), 10.0)
    with pytest.raises(AlertDeliveryError, match="status 3"):
        run_command(bad, {"id": "a2"})


def test_heartbeat_touches_the_file_and_refuses_a_symlink(tmp_path: Path) -> None:
    """The file is written with the cycle's time; a symlink planted in its place is refused."""
    beat_file = tmp_path / "beat"
    assert beat(HeartbeatSpec(file=beat_file), T0)
    assert beat_file.read_text().strip() == T0.isoformat()
    assert beat_file.stat().st_mtime == T0.timestamp()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert not beat(HeartbeatSpec(file=link), T0)
    assert not (tmp_path / "elsewhere").exists()


def test_heartbeat_only_after_a_successful_cycle(tmp_path: Path) -> None:
    """A check cycle whose status read fails sends no heartbeat; the next good one does."""
    clock = FakeClock(T0)
    beat_file = tmp_path / "beat"
    spec = ObserveSpec(heartbeat=HeartbeatSpec(file=beat_file, interval_seconds=1))
    fail = [True]

    def read() -> list[dict[str, Any]]:
        if fail[0]:
            raise OSError("status unreadable")
        return []

    t = ObserverThreads(lambda: spec, read, clock, AlertQueue(tmp_path, 10), Metrics("t"))
    assert not t.check_once()
    assert not beat_file.exists()
    fail[0] = False
    assert t.check_once()
    assert beat_file.exists()


# --------------------------------------------------------------------------- metrics


def test_metrics_collector_reads_status_and_serves_only_its_address() -> None:
    """The listener binds exactly 127.0.0.1:<port>; /metrics carries each service's expiry,
    failures and ready condition from the status callable; other paths are 404."""
    now = T0
    docs = [
        status(2, T0 + 10 * DAY) | {"budget": {"orders_remaining": 7, "certificates_remaining": 4}}
    ]
    m = Metrics("1.2.3")
    m.watch_status(lambda: docs, lambda: now)
    m.on_event(
        "rotation_finished", {"service": "web", "outcome": "failed", "error_type": "IssuanceError"}
    )
    m.acme_exchange("POST", "https://ca.test/acme/new-order", 201, 0.05)
    port = free_port()
    server = MetricsServer(("127.0.0.1", port), m.registry, 2)
    server.start()
    try:
        assert server._server is not None
        assert server._server.socket.getsockname() == ("127.0.0.1", port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert info.value.code == 404
        info.value.close()
    finally:
        server.stop()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    key = (("issuer_name", "le"), ("name", "web"))
    expiry = samples[("rotatord_certificate_expiration_timestamp_seconds", key)]
    assert expiry == (T0 + 10 * DAY).timestamp()
    assert 'rotatord_service_consecutive_failures{issuer_name="le",name="web"} 2.0' in text
    assert (
        'rotatord_certificate_ready_status{condition="False",issuer_name="le",name="web"} 1.0'
        in text
    )
    assert 'rotatord_budget_orders_remaining{issuer_name="le"} 7.0' in text
    assert 'rotatord_rotation_failures_total{cause="IssuanceError",name="web"} 1.0' in text
    assert 'endpoint="new_order"' in text
    assert "rotatord_build_info{python=" in text and 'version="1.2.3"' in text


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://127.0.0.1:14000/dir", "directory"),
        ("https://127.0.0.1:14000/nonce-plz", "new_nonce"),
        ("https://127.0.0.1:14000/sign-me-up", "new_account"),
        ("https://127.0.0.1:14000/order-plz", "new_order"),
        ("https://127.0.0.1:14000/my-order/abc", "order"),
        ("https://127.0.0.1:14000/authZ/abc", "authorization"),
        ("https://127.0.0.1:14000/chalZ/abc", "challenge"),
        ("https://127.0.0.1:14000/finalize-order/abc", "finalize"),
        ("https://127.0.0.1:14000/certZ/abc", "certificate"),
        ("https://acme-v02.api.letsencrypt.org/acme/new-order", "new_order"),
        ("https://acme-v02.api.letsencrypt.org/acme/revoke-cert", "revoke_cert"),
        ("https://acme-v02.api.letsencrypt.org/acme/renewal-info/x.y", "renewal_info"),
        ("https://example.test/whatever", "other"),
    ],
)
def test_acme_endpoint_labels_are_a_fixed_set(url: str, endpoint: str) -> None:
    """Pebble's and Let's Encrypt's URLs map onto RFC 8555 resource names, or "other"."""
    assert acme_endpoint(url)[1] == endpoint


def test_failure_cause_is_a_bounded_label() -> None:
    """An ACME problem code wins over the exception class; free text never becomes a label."""
    assert cause_of({"problem_type": "urn:ietf:params:acme:error:rateLimited"}) == "rateLimited"
    assert cause_of({"error_type": "ReloadError"}) == "ReloadError"
    assert cause_of({"error_type": "two words", "problem_type": "about:blank"}) == "other"


# --------------------------------------------------------------------------- config


def base(**sections: Any) -> dict[str, Any]:
    return {
        "daemon": {"state_dir": "state", "control_socket": "/tmp/rotatord-test.sock"},
        "acme": {"ca": {"directory": "https://127.0.0.1:14000/dir"}},
        **sections,
    }


def test_observe_sections_parse(tmp_path: Path) -> None:
    """[metrics], [alerts] with both sinks and [heartbeat] become the frozen settings."""
    secret = tmp_path / "hook.key"
    secret.write_text("k")
    cfg = parse_config(
        base(
            metrics={"listen": "127.0.0.1:9817"},
            alerts={
                "evaluate_interval": "30s",
                "dedup_window": "2h",
                "webhook": {
                    "ops": {
                        "url": "https://hooks.test/x",
                        "timeout": 3,
                        "hmac_secret_file": "hook.key",
                    }
                },
                "command": {
                    "page": {"argv": ["/usr/bin/logger", "-t", "rotatord"], "env": {"A": "b"}}
                },
            },
            heartbeat={"url": "https://hc.test/ping/uuid", "interval": "5m"},
        ),
        tmp_path / "r.toml",
    )
    o = cfg.observe
    assert o.metrics.listen == ("127.0.0.1", 9817)
    assert o.alerts.evaluate_seconds == 30 and o.alerts.dedup_seconds == 7200
    assert o.alerts.webhooks == (WebhookSink("ops", "https://hooks.test/x", 3.0, secret),)
    assert o.alerts.commands[0].argv == ("/usr/bin/logger", "-t", "rotatord")
    assert o.heartbeat.interval_seconds == 300 and o.heartbeat.enabled
    assert parse_config(base(), tmp_path / "r.toml").observe == ObserveSpec()


@pytest.mark.parametrize(
    ("sections", "path", "words"),
    [
        ({"metrics": {"listen": "9817"}}, "metrics.listen", "host:port"),
        ({"metrics": {"lisen": "127.0.0.1:1"}}, "metrics.lisen", "did you mean 'listen'"),
        ({"alerts": {"webhook": {"ops": {"url": "ftp://x/y"}}}}, "alerts.webhook.ops.url", "http"),
        ({"alerts": {"webhook": {"ops": {}}}}, "alerts.webhook.ops.url", "missing required"),
        (
            {"alerts": {"webhook": {"ops": {"url": "https://x/", "hmac_secret_file": "nope"}}}},
            "alerts.webhook.ops.hmac_secret_file",
            "does not exist",
        ),
        ({"alerts": {"command": {"p": {"argv": "logger x"}}}}, "alerts.command.p.argv", "shell"),
        ({"alerts": {"evaluate_interval": "2d"}}, "alerts.evaluate_interval", "at most 1d"),
        ({"alerts": {"queue_max": 1}}, "alerts.queue_max", "from 10"),
        ({"heartbeat": {"interval": "1m"}}, "heartbeat", "'url' to ping"),
    ],
)
def test_observe_config_errors_name_file_and_key(
    tmp_path: Path, sections: dict[str, Any], path: str, words: str
) -> None:
    """Each mistake is reported with the file, its dotted key path and what is wrong."""
    with pytest.raises(ConfigError) as info:
        parse_config(base(**sections), tmp_path / "r.toml")
    found = [p for p in info.value.problems if p.path == path]
    assert found, [str(p) for p in info.value.problems]
    assert words in found[0].message
    assert found[0].file == str(tmp_path / "r.toml")
    assert "secret-token" not in str(info.value)


def test_example_alert_rules_fire_on_expiry_failures_and_a_stale_daemon() -> None:
    """promtool's rule unit test: the example rules fire on a certificate 3 days from expiry,
    on three consecutive failures and on a check cycle that stopped — and not before."""
    rules_dir = Path(__file__).resolve().parent.parent / "config"
    result = subprocess.run(
        [binary("promtool"), "test", "rules", "alerts.rules.test.yml"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_metrics_listener_is_bounded_at_accept() -> None:
    """With max_connections = 2, two idle connections hold both slots: a third is closed at
    once without an answer; once they go, scrapes are answered again."""
    m = Metrics("t")
    port = free_port()
    server = MetricsServer(("127.0.0.1", port), m.registry, 2)
    server.start()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            try:
                third.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                answer = third.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""  # closed before or while we sent: refused all the same
            assert answer == b""
    finally:
        for s in idle:
            s.close()

    def scrape() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return bool(r.status == 200)
        except (ConnectionError, urllib.error.URLError):
            return False

    try:
        until(scrape, 10, "a scrape answered after the idle connections closed")
    finally:
        server.stop()


# --------------------------------------------------------------------------- watched certificates


def leaf_pem(
    names: list[str], not_after: datetime, not_before: datetime | None = None
) -> tuple[bytes, bytes]:
    ca = make_ca()
    key = generate_key(KeyType.ECDSA_P256)
    cert = issue_leaf(ca, key, names, not_before or not_after - 90 * DAY, not_after)
    return cert_to_pem(cert), key_to_pem(key)


def test_watched_endpoint_three_days_from_expiry_and_wrong_names_alert(tmp_path: Path) -> None:
    """A TLS endpoint serving a certificate 3 days from expiry for other names: one
    ``expiring/soon`` and one ``mismatch`` alert; an unreachable one ``watch_failed``; each
    resolved once fixed (here: a check that succeeds with a good certificate)."""
    now = datetime.now(UTC).replace(microsecond=0)
    cert, key = leaf_pem(["other.example.test"], now + 3 * DAY)
    ep = TlsEndpoint(tmp_path, cert, key)
    try:
        clock = FakeClock(now)
        spec = WatchSpec(
            "legacy",
            host="127.0.0.1",
            port=ep.port,
            sni="legacy.example.test",
            names=("legacy.example.test",),
            interval_seconds=60,
        )
        gone = WatchSpec("gone", host="127.0.0.1", port=free_port(), timeout_seconds=2)
        alerts = AlertsSpec(webhooks=(WebhookSink("ops", "http://127.0.0.1:9/x"),))
        observe = ObserveSpec(alerts=alerts, watches=(spec, gone))
        watcher = Watcher(lambda: observe.watches, clock)
        t = ObserverThreads(
            lambda: observe, lambda: [], clock, AlertQueue(tmp_path, 100), Metrics("t"), watcher
        )
        assert watcher.check_due() == 60
        until(lambda: ep.handshakes == 1, 5, "the server to count the handshake")
        r = watcher.results["legacy"]
        assert r.not_after == now + 3 * DAY and r.missing == ("legacy.example.test",)
        assert watcher.results["gone"].error
        t.check_once()
        t.check_once()  # deduplicated: nothing new
        got = sorted(
            (d.alert["kind"], d.alert["service"], d.alert["step"]) for d in t.queue.pending
        )
        assert got == [
            ("expiring", "legacy", "soon"),
            ("mismatch", "legacy", "names"),
            ("watch_failed", "gone", "unreachable"),
        ]
        clock.advance(2 * DAY + timedelta(hours=1))  # under a day left: escalates
        t.check_once()
        assert [d.alert["step"] for d in t.queue.pending][-1] == "day"
    finally:
        ep.stop()
    docs = {d["service"]: d for d in watcher.docs()}
    assert docs["legacy"]["account"] == "watch" and docs["gone"]["failures"] == 1


def test_watched_file_is_read_without_following_symlinks(tmp_path: Path) -> None:
    """A PEM file is parsed for its first certificate; a symlink in its place is a failure."""
    now = T0
    cert, _ = leaf_pem(["*.example.test"], now + 100 * DAY)
    pem = tmp_path / "c.pem"
    pem.write_bytes(cert)
    ok = check(WatchSpec("f", file=pem, names=("www.example.test",)), now)
    assert ok.error is None and ok.missing == () and ok.not_after == now + 100 * DAY
    link = tmp_path / "l.pem"
    link.symlink_to(pem)
    assert check(WatchSpec("l", file=link), now).error is not None
    assert covers(("*.example.test",), "a.example.test")
    assert not covers(("*.example.test",), "a.b.example.test")


@pytest.mark.parametrize(
    ("watch", "path", "words"),
    [
        ({"x": {}}, "watch.x", "exactly one of"),
        ({"x": {"endpoint": "nohost"}}, "watch.x.endpoint", "host:port"),
        ({"x": {"file": "a.pem", "warn_before": "soon"}}, "watch.x.warn_before", "duration"),
        ({"web": {"file": "a.pem"}}, "watch.web", "a service is also named"),
    ],
)
def test_watch_config_errors(tmp_path: Path, watch: dict[str, Any], path: str, words: str) -> None:
    """[watch.<name>] mistakes name their key path."""
    data = base(watch=watch)
    data["services"] = {
        "web": {"domains": ["web.example.test"], "challenge": {"listen": "127.0.0.1:5002"}}
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "r.toml")
    found = [p for p in info.value.problems if p.path == path]
    assert found and words in found[0].message, [str(p) for p in info.value.problems]
