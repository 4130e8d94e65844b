"""`rotatord revoke SERVICE --reason R` revokes the current certificate at the CA, rotates to a new
key at once, and audits both; checked against Pebble's own record of the certificate
(``/cert-status-by-serial/``), with and without a running daemon."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pebble import PebbleServer
from rotatord.core.text import serial_text
from rotatord.rotation import REVOCATION_REASONS
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

#: Pebble's ``Status`` for a revoked certificate, and for one that is not.
REVOKED: Final = "Revoked"
VALID: Final = "Valid"


@dataclass(frozen=True)
class Pair:
    """The pair ``current`` points to: version, serial (hex as the audit writes it), and the
    SHA-256 of its public key."""

    version: str
    serial_hex: str
    public_key: str


def current_pair(state: Path, name: str = "web") -> Pair:
    service_dir = state / "services" / name
    version = os.readlink(service_dir / "current").removeprefix("versions/")
    leaf = x509.load_pem_x509_certificate((service_dir / "current" / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key(
        (service_dir / "current" / "privkey.pem").read_bytes(), None
    )
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    public = key.public_key().public_bytes(der, spki)
    assert public == leaf.public_key().public_bytes(der, spki), "current key and cert differ"
    return Pair(version, serial_text(leaf.serial_number), hashlib.sha256(public).hexdigest())


def assert_revoked_and_replaced(
    pebble: PebbleServer, state: Path, old: Pair, reason: str, uid: int
) -> None:
    """Pebble says the old serial is revoked for ``reason``; a new key and serial are current;
    the audit shows certificate_revoked, then the rotation, then the old key destroyed."""
    status = pebble.cert_status(old.serial_hex)
    assert status["Status"] == REVOKED, status
    assert status["Reason"] == REVOCATION_REASONS[reason], status
    assert status["RevokedAt"], status

    new = current_pair(state)
    assert new.serial_hex != old.serial_hex
    assert new.public_key != old.public_key, "revocation must rotate to a fresh key"
    assert new.version != old.version
    assert pebble.cert_status(new.serial_hex)["Status"] == VALID
    assert not (state / "services" / "web" / "versions" / old.version).exists()

    records = read_audit(state / "audit.jsonl")
    [revoked] = events(records, "certificate_revoked", "web")
    assert revoked["serial"] == old.serial_hex
    assert revoked["version"] == old.version
    assert revoked["reason"] == reason
    assert revoked["reason_code"] == REVOCATION_REASONS[reason]
    assert revoked["uid"] == uid
    position = records.index(revoked)
    after = records[position + 1 :]
    [finished] = [r for r in events(after, "rotation_finished", "web")]
    assert finished["outcome"] == "rotated"
    assert finished["old_serial"] == old.serial_hex
    assert finished["new_serial"] == new.serial_hex
    assert finished["version"] == new.version
    [destroyed] = [r for r in events(after, "key_destroyed", "web") if r["why"] == "revoked"]
    assert destroyed["version"] == old.version
    assert records.index(destroyed) > records.index(finished), "destroyed before the new pair"


def issued(pebble: PebbleServer, tmp: Path, extra: str = "") -> tuple[Path, Path, Pair]:
    """A config for service ``web`` and its first pair, issued by the CLI without a daemon."""
    state = tmp / "state"
    config = write_config(tmp / "r.toml", pebble, state, service("web", pebble.http_port, extra))
    first = run_cli(config, "rotate", "web")
    assert first.returncode == 0, first.stderr
    return config, state, current_pair(state)


@pytest.mark.parametrize("reason", ["keyCompromise", "superseded", "cessationOfOperation"])
def test_cli_revoke_without_daemon(
    pebble_server: PebbleServer, short_tmp: Path, reason: str
) -> None:
    """Without a daemon, `revoke web --reason R` revokes at the CA with reason R, puts a new key
    and certificate in place at once, and audits the revocation, the rotation and the destroyed
    key."""
    config, state, old = issued(pebble_server, short_tmp)

    result = run_cli(config, "revoke", "web", "--reason", reason)

    assert result.returncode == 0, result.stderr
    assert f"revoked {old.serial_hex} ({reason})" in result.stdout
    assert_revoked_and_replaced(pebble_server, state, old, reason, os.getuid())


def test_revoke_default_reason_is_unspecified(pebble_server: PebbleServer, short_tmp: Path) -> None:
    """`revoke web` without --reason revokes with reason unspecified (0)."""
    config, state, old = issued(pebble_server, short_tmp)

    result = run_cli(config, "revoke", "web")

    assert result.returncode == 0, result.stderr
    assert_revoked_and_replaced(pebble_server, state, old, "unspecified", os.getuid())


def test_revoke_for_key_compromise_never_reuses_the_key(
    pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """A service configured with reuse_key = true still gets a fresh key when its certificate is
    revoked: reusing a compromised key would defeat the revocation."""
    config, state, old = issued(pebble_server, short_tmp, "reuse_key = true")
    again = run_cli(config, "rotate", "web", "--force")
    assert again.returncode == 0, again.stderr
    reused = current_pair(state)
    assert reused.public_key == old.public_key, "precondition: the service reuses its key"

    result = run_cli(config, "revoke", "web", "--reason", "keyCompromise")

    assert result.returncode == 0, result.stderr
    assert pebble_server.cert_status(reused.serial_hex)["Status"] == REVOKED
    assert current_pair(state).public_key != reused.public_key, "the compromised key is reused"


def test_revoke_through_running_daemon(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """With the daemon running, `revoke` is carried out by the daemon (over its control socket,
    caller's uid audited) with the same effect: revoked at the CA, new key current, audited."""
    state = short_tmp / "state"
    config = write_config(
        short_tmp / "r.toml", pebble_server, state, service("web", pebble_server.http_port)
    )
    daemon = DaemonProcess(config, short_tmp)
    daemons.append(daemon)
    daemon.start()
    wait_for(
        state / "audit.jsonl",
        lambda rs: any(r["outcome"] == "rotated" for r in events(rs, "rotation_finished", "web")),
        60,
        "the start-up issuance",
        daemon,
    )
    old = current_pair(state)

    result = run_cli(config, "revoke", "web", "--reason", "affiliationChanged")

    assert result.returncode == 0, result.stderr
    assert "no daemon" not in result.stderr
    records: list[Record] = read_audit(state / "audit.jsonl")
    requests = [r for r in events(records, "control_request") if r["verb"] == "revoke"]
    assert [r["uid"] for r in requests] == [os.getuid()]
    assert_revoked_and_replaced(pebble_server, state, old, "affiliationChanged", os.getuid())
    # The daemon goes on serving: its status shows the new pair and no failure.
    status = run_cli(config, "status", "web", "--json")
    assert status.returncode == 0, status.stderr
    assert current_pair(state).serial_hex in status.stdout
    assert daemon.stop() == 0


def test_unknown_reason_is_a_usage_error(pebble_server: PebbleServer, short_tmp: Path) -> None:
    """`revoke web --reason bogus` exits 2 (argparse) and touches nothing: the certificate stays
    valid at the CA and current on disk."""
    config, state, old = issued(pebble_server, short_tmp)

    result = run_cli(config, "revoke", "web", "--reason", "bogus")

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "invalid choice" in result.stderr
    assert pebble_server.cert_status(old.serial_hex)["Status"] == VALID
    assert current_pair(state) == old
    assert not events(read_audit(state / "audit.jsonl"), "certificate_revoked")


def test_revoke_without_a_certificate_fails_cleanly(
    pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """`revoke` of a service that has no certificate yet exits 1 with a message, revokes
    nothing and issues nothing."""
    state = short_tmp / "state"
    config = write_config(
        short_tmp / "r.toml", pebble_server, state, service("web", pebble_server.http_port)
    )

    result = run_cli(config, "revoke", "web", "--reason", "superseded")

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "no certificate to revoke" in result.stderr
    records = read_audit(state / "audit.jsonl")
    assert not events(records, "certificate_revoked")
    assert not events(records, "certificate_issued")
