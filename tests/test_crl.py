"""Unit tests for rotatord.issuing.crl: distribution points, and a CRL counts only when its
issuer and signature are the certificate's issuer's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from rotatord.config import parse_config
from rotatord.core.errors import ConfigError
from rotatord.core.keys import generate_key
from rotatord.core.model import KeyType
from rotatord.issuing.crl import CrlError, crl_urls, revocation, stale
from tests.certs import issue_leaf, make_ca

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _crl(
    issuer: x509.Name, key: ec.EllipticCurvePrivateKey, serials: list[int]
) -> x509.CertificateRevocationList:
    b = x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(NOW)
    b = b.next_update(NOW + timedelta(days=1))
    for s in serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(NOW).build()
        )
    return b.sign(key, hashes.SHA256())


def test_listed_unlisted_forged_and_foreign_crls() -> None:
    """Listed → the entry; unlisted → None; signed by another key or naming another issuer →
    CrlError (never a rotation); past nextUpdate → stale."""
    ca, other = make_ca(), make_ca("other")
    leaf = issue_leaf(
        ca, generate_key(KeyType.ECDSA_P256), ["a.test"], NOW, NOW + timedelta(days=90)
    )
    listed = _crl(ca.cert.subject, ca.key, [leaf.serial_number])
    entry = revocation(listed, leaf, ca.cert)
    assert entry is not None and entry.serial == leaf.serial_number and entry.revoked_at == NOW
    assert revocation(_crl(ca.cert.subject, ca.key, [1]), leaf, ca.cert) is None
    with pytest.raises(CrlError, match="signature"):
        revocation(_crl(ca.cert.subject, other.key, [leaf.serial_number]), leaf, ca.cert)
    with pytest.raises(CrlError, match="issuer"):
        revocation(_crl(other.cert.subject, other.key, [leaf.serial_number]), leaf, other.cert)
    assert not stale(listed, NOW) and stale(listed, NOW + timedelta(days=2))


def test_crl_distribution_points_are_read_from_the_certificate() -> None:
    """http(s) URIs of the CRLDP extension, in order; a certificate without one has none."""
    ca = make_ca()
    key = generate_key(KeyType.ECDSA_P256)
    plain = issue_leaf(ca, key, ["a.test"], NOW, NOW + timedelta(days=1))
    assert crl_urls(plain) == []
    dp = x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                [
                    x509.UniformResourceIdentifier("http://c.test/1.crl"),
                    x509.UniformResourceIdentifier("ldap://c.test/x"),
                ],
                None,
                None,
                None,
            )
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(plain.subject)
        .issuer_name(plain.issuer)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(dp, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    assert crl_urls(cert) == ["http://c.test/1.crl"]


def test_revocation_config(tmp_path: Path) -> None:
    """[revocation] parses; a bad URL names its index."""
    base = {
        "daemon": {"state_dir": "state", "control_socket": "/tmp/rotatord-test.sock"},
        "acme": {"ca": {"directory": "https://127.0.0.1:14000/dir"}},
    }
    cfg = parse_config(
        {**base, "revocation": {"interval": "1h", "crl_urls": ["http://c.test/a"]}},
        tmp_path / "r.toml",
    )
    assert cfg.observe.revocation.interval_seconds == 3600
    assert cfg.observe.revocation.crl_urls == ("http://c.test/a",)
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "revocation": {"crl_urls": ["file:///x"]}}, tmp_path / "r.toml")
    assert [p.path for p in info.value.problems] == ["revocation.crl_urls[0]"]
