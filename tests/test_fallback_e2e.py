"""CA fallback end to end with two real Pebbles: a service listing two accounts gets its
certificate from the second CA within ``fallback_after`` attempts when the first is down (at
once when the first refuses in a way another CA may not), the switch audited with its reason,
and the installed certificate's renewal timed by the CA that issued it."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pebble import PebbleFactory, PebbleServer
from tests.test_accounts_e2e import account_block, audit, run, service_block, write_config

pytestmark = pytest.mark.pebble


def status_json(state: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((state / "services" / "web" / "status.json").read_text())
    return doc


def issued_by(state: Path, pebble: PebbleServer) -> bool:
    pem = (state / "services" / "web" / "current" / "fullchain.pem").read_bytes()
    chain = x509.load_pem_x509_certificates(pem)
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    intermediate = chain[1]
    return intermediate.issuer == root.subject and chain[0].issuer == intermediate.subject


def two_cas(
    short_tmp: Path, first: PebbleServer, second: PebbleServer, extra: str = ""
) -> tuple[Path, Path]:
    state = short_tmp / "state"
    cfg = write_config(
        short_tmp / "r.toml",
        state,
        account_block("a", first.directory_url, first)
        + account_block("b", second.directory_url, second)
        + service_block("web", '["a", "b"]', second.http_port, extra),
    )
    return cfg, state


def test_first_ca_down_second_issues_within_attempts(
    pebble_factory: PebbleFactory, short_tmp: Path
) -> None:
    """First CA stopped, ``fallback_after = 2``: attempts 1 and 2 fail on it, the switch to
    the second is audited after the second failure, attempt 3 is issued by the second CA, and
    that certificate is current (not due, no config drift) though it is not the first account's."""
    second = pebble_factory()
    first = pebble_factory(http_port=second.http_port, workdir=short_tmp / "first")
    cfg, state = two_cas(short_tmp, first, second, "fallback_after = 2")
    first.stop()

    for attempt in (1, 2):
        res = run(cfg, "rotate", "web", "--force")
        assert res.returncode == 1, res.stdout
        assert "cannot reach the CA" in res.stderr, res.stderr
        st = status_json(state)
        assert st["failures"] == attempt, "the retry ladder counts every failure, switch or not"
        assert (st["account"], st["account_failures"]) == (("a", 1) if attempt == 1 else ("b", 0))
    switches = [r for r in audit(state) if r["event"] == "account_switched"]
    assert [(r["from_account"], r["to_account"], r["reason"]) for r in switches] == [
        ("a", "b", "2 consecutive failures")
    ]
    assert status_json(state)["account"] == "b"

    res = run(cfg, "rotate", "web", "--force")
    assert res.returncode == 0, res.stderr
    assert issued_by(state, second)
    issued = [r for r in audit(state) if r["event"] == "certificate_issued"]
    assert [r["account"] for r in issued] == ["b"]
    st = status_json(state)
    assert st["failures"] == 0 and st["account"] is None, "the next renewal prefers 'a' again"

    shown = json.loads(run(cfg, "status", "web", "--json").stdout)["services"][0]
    assert shown["issued_by"] == "b" and shown["issuer_directory"] == second.directory_url
    assert shown["due_now"] is False, "a certificate from a listed fallback CA is current"
    res = run(cfg, "rotate", "web")
    assert res.returncode == 0 and "not due" in res.stdout


def test_refusal_another_ca_may_not_share_switches_at_once(
    pebble_factory: PebbleFactory, short_tmp: Path
) -> None:
    """The first CA answers externalAccountRequired (it wants EAB this account lacks): the
    next attempt goes to the second CA at once, although fallback_after is 3."""
    hmac = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    second = pebble_factory()
    first = pebble_factory(http_port=second.http_port, eab_keys={"k": hmac})
    cfg, state = two_cas(short_tmp, first, second)

    res = run(cfg, "rotate", "web", "--force")
    assert res.returncode == 1 and "externalAccountRequired" in res.stderr
    switches = [r for r in audit(state) if r["event"] == "account_switched"]
    assert [(r["from_account"], r["to_account"]) for r in switches] == [("a", "b")]
    assert switches[0]["reason"] == "externalAccountRequired (switch at once)"
    res = run(cfg, "rotate", "web", "--force")
    assert res.returncode == 0, res.stderr
    assert issued_by(state, second)
