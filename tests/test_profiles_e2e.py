"""ACME profiles end to end: a front for Pebble advertises ``meta.profiles`` and gives
``shortlived`` orders 160-hour certificates; rotatord sends the configured profile, refuses one
the CA does not offer (naming the config key), and times renewal by the certificate it got."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from pebble import AriProxy, PebbleServer
from pebble.profiles import Profiles
from rotatord.core import policy
from tests.test_accounts_e2e import account_block, run, service_block, write_config

pytestmark = pytest.mark.pebble


def leaf(state: Path, service: str) -> x509.Certificate:
    pem = (state / "services" / service / "current" / "cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


def status(cfg: Path, service: str) -> dict[str, object]:
    res = run(cfg, "status", service, "--json")
    assert res.returncode == 0, res.stderr
    doc: dict[str, object] = json.loads(res.stdout)["services"][0]
    return doc


def test_profiles_requested_refused_and_timed(pebble_server: PebbleServer, short_tmp: Path) -> None:
    """``shortlived`` is sent and yields a 160 h certificate renewed at half its lifetime;
    ``classic`` keeps Pebble's long one (renewed at a third); ``nope`` is refused before any
    order with the file and key path; a CA without ``meta.profiles`` gets the order as is."""
    state = short_tmp / "state"
    port = pebble_server.http_port
    with AriProxy(pebble_server) as proxy:
        profiles = Profiles(proxy)
        cfg = write_config(
            short_tmp / "r.toml",
            state,
            account_block("front", proxy.directory_url, pebble_server)
            + account_block("bare", pebble_server.directory_url, pebble_server)
            + service_block("short", '"front"', port, 'profile = "shortlived"')
            + service_block("classic", '"front"', port, 'profile = "classic"')
            + service_block("nope", '"front"', port, 'profile = "nope"')
            + service_block("bare", '"bare"', port, 'profile = "shortlived"'),
        )
        res = run(cfg, "rotate", "short", "--force")
        assert res.returncode == 0, res.stderr
        assert set(profiles.seen) == {"shortlived"}
        cert = leaf(state, "short")
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime == timedelta(hours=160, seconds=-1)
        due = datetime.fromisoformat(str(status(cfg, "short")["renewal_due_at"]))
        half = cert.not_valid_after_utc - lifetime / 2
        assert half - lifetime / 2 * policy.JITTER_FRACTION <= due <= half

        res = run(cfg, "rotate", "classic", "--force")
        assert res.returncode == 0, res.stderr
        assert profiles.seen[-1] == "classic"
        cert = leaf(state, "classic")
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime > timedelta(days=365)
        due = datetime.fromisoformat(str(status(cfg, "classic")["renewal_due_at"]))
        third = cert.not_valid_after_utc - lifetime / 3
        assert third - lifetime / 3 * policy.JITTER_FRACTION <= due <= third

        orders = len(profiles.seen)
        res = run(cfg, "rotate", "nope", "--force")
        assert res.returncode == 1
        assert f"{cfg}: services.nope.profile: " in res.stderr
        assert "offers no profile 'nope'" in res.stderr and "'shortlived'" in res.stderr
        assert len(profiles.seen) == orders, "no order was sent for a profile not offered"
        assert not (state / "services" / "nope" / "current").exists()

    res = run(cfg, "rotate", "bare", "--force")  # Pebble 2.4 has no meta.profiles
    assert res.returncode == 0, res.stderr
