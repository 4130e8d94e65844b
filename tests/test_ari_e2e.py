"""End to end: the daemon follows ARI (RFC 9773) through the ARI test front over real Pebble."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from pebble import AriProxy, PebbleServer, cert_id
from rotatord.core.text import serial_text
from tests.daemon_harness import (
    DaemonProcess,
    Record,
    events,
    read_audit,
    run_cli,
    service,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.pebble


@pytest.fixture
def proxy(pebble_server: PebbleServer) -> Iterator[AriProxy]:
    with AriProxy(pebble_server) as p:
        yield p


def setup_issued(
    proxy: AriProxy, pebble: PebbleServer, tmp: Path
) -> tuple[Path, Path, x509.Certificate]:
    """A config through the ARI front and a first certificate issued by the CLI."""
    state = tmp / "state"
    config = write_config(
        tmp / "r.toml",
        proxy.directory_url,
        state,
        service("web", pebble.http_port),
        ca_bundle=proxy.ca_bundle,
    )
    result = run_cli(config, "rotate", "web")
    assert result.returncode == 0, result.stderr
    leaf = x509.load_pem_x509_certificate(
        (state / "services" / "web" / "current" / "cert.pem").read_bytes()
    )
    return config, state, leaf


def rotated(records: list[Record]) -> list[Record]:
    return [r for r in events(records, "rotation_finished", "web") if r["outcome"] == "rotated"]


def test_window_in_the_past_renews_at_once_with_replaces(
    proxy: AriProxy, pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A window already open renews at start-up; the order carries the old cert's ARI id, and
    the replaced certificate is never queried again."""
    config, state, leaf = setup_issued(proxy, pebble_server, short_tmp)
    old_id = cert_id(leaf)
    now = datetime.now(UTC)
    proxy.set_window(
        old_id,
        now - timedelta(hours=2),
        now - timedelta(hours=1),
        explanation_url="https://ca.example/incident-42",
    )
    proxy.replaces_seen.clear()
    daemon = DaemonProcess(config, short_tmp)
    daemons.append(daemon)
    daemon.start()
    audit = state / "audit.jsonl"
    records = wait_for(audit, lambda rs: len(rotated(rs)) >= 2, 60, "ARI renewal", daemon)
    renewal = rotated(records)[-1]
    assert renewal["reason"] == "ari_window"
    assert renewal["old_serial"] == serial_text(leaf.serial_number)
    assert proxy.replaces_seen[-1] == old_id
    info = events(records, "renewal_info", "web")
    assert info and info[0]["explanation_url"] == "https://ca.example/incident-42"

    new_leaf = x509.load_pem_x509_certificate(
        (state / "services" / "web" / "current" / "cert.pem").read_bytes()
    )
    seen = len(proxy.ari_queries)
    # The daemon plans the new certificate next: wait for its ARI query, then check the
    # replaced one was not asked about again.
    new_id = cert_id(new_leaf)
    wait_for(audit, lambda _rs: new_id in proxy.ari_queries, 30, "ARI query of the new cert")
    assert old_id not in proxy.ari_queries[seen:]
    assert daemon.stop() == 0


def test_window_in_the_future_renews_inside_it(
    proxy: AriProxy, pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A window a few seconds ahead is waited for, and the renewal starts inside it."""
    config, state, leaf = setup_issued(proxy, pebble_server, short_tmp)
    now = datetime.now(UTC)
    start, end = now + timedelta(seconds=8), now + timedelta(seconds=14)
    proxy.set_window(cert_id(leaf), start, end, retry_after=3600)
    daemon = DaemonProcess(config, short_tmp)
    daemons.append(daemon)
    daemon.start()
    audit = state / "audit.jsonl"
    records = wait_for(audit, lambda rs: len(rotated(rs)) >= 2, 60, "ARI renewal", daemon)
    renewal_id = rotated(records)[-1]["rotation_id"]
    started = next(
        r for r in events(records, "rotation_started", "web") if r["rotation_id"] == renewal_id
    )
    at = datetime.fromisoformat(started["ts"])
    assert start <= at <= end + timedelta(seconds=2), (start, at, end)
    assert started["trigger"] == "ari"
    chosen = datetime.fromisoformat(events(records, "renewal_info", "web")[0]["chosen"])
    assert start <= chosen <= end
    assert daemon.stop() == 0


def test_refused_replaces_falls_back_to_a_plain_order(
    proxy: AriProxy, pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """When the CA answers alreadyReplaced, the order is retried once without `replaces`."""
    config, state, leaf = setup_issued(proxy, pebble_server, short_tmp)
    proxy.replaces_mode = "already_replaced"
    proxy.replaces_seen.clear()
    result = run_cli(config, "rotate", "web", "--force")
    assert result.returncode == 0, result.stderr
    distinct = [
        v for i, v in enumerate(proxy.replaces_seen) if i == 0 or v != proxy.replaces_seen[i - 1]
    ]
    assert distinct == [cert_id(leaf), None]
    issued = events(read_audit(state / "audit.jsonl"), "certificate_issued", "web")[-1]
    assert issued["replaces"] is None
