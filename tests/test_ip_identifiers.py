"""IP identifiers (RFC 8738) through every place that used to assume a DNS name: spelling,
CSR, newOrder identifier, trust verification, stored-name comparison, probe SNI, config rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from rotatord import config
from rotatord.clock import FakeClock
from rotatord.core import identifiers, keys
from rotatord.core.errors import IssuanceError
from rotatord.core.model import AcmeSpec, KeyType
from rotatord.issuing.challenges import acme_types
from rotatord.issuing.trust import TrustAnchors
from tests.certs import default_ca, issue_leaf

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "canonical", "kind", "sni"),
    [
        ("127.0.0.1", "127.0.0.1", "ip", "1.0.0.127.in-addr.arpa"),
        ("0:0::1", "::1", "ip", "1." + "0." * 31 + "ip6.arpa"),
        ("2001:DB8::A", "2001:db8::a", "ip", None),
        ("Web.Example.TEST", "web.example.test", "dns", "web.example.test"),
        ("fe80::1%eth0", "fe80::1%eth0", "dns", None),  # scoped: never an address here
    ],
)
def test_identifiers_are_told_apart_and_spelled_canonically(
    raw: str, canonical: str, kind: str, sni: str | None
) -> None:
    """Addresses take ipaddress's spelling (what a certificate's iPAddress prints as) and the
    reverse-DNS name as TLS-ALPN-01 SNI; DNS names are lower-cased."""
    assert identifiers.normalise(raw) == canonical
    assert identifiers.identifier_type(raw) == kind
    if sni is not None:
        assert identifiers.tls_alpn_sni(raw) == sni


def test_a_csr_for_addresses_carries_ip_sans_and_no_address_in_the_cn() -> None:
    """make_csr: iPAddress SANs for addresses, dNSName for names; an address never becomes
    the CN (a DNS first name still does)."""
    key = keys.generate_key(KeyType.ECDSA_P256)
    csr = x509.load_pem_x509_csr(keys.make_csr(key, ["::1", "127.0.0.1", "a.test"]))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["::1", "127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["a.test"]
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    named = x509.load_pem_x509_csr(keys.make_csr(key, ["a.test", "::1"]))
    assert named.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.test"


def test_new_order_identifiers_are_typed_ip_or_dns() -> None:
    """RFC 8738 §3: {"type": "ip", "value": "::1"} for an address."""
    assert json.loads(acme_types.identifier("::1").json_dumps()) == {"type": "ip", "value": "::1"}
    assert json.loads(acme_types.identifier("a.test").json_dumps()) == {
        "type": "dns",
        "value": "a.test",
    }


def test_installed_names_include_addresses_so_the_stored_bundle_verifies(tmp_path: Path) -> None:
    """cert_names lists iPAddress SANs in canonical form, so verify_bundle (run at issue and
    at start-up recovery) accepts an IP certificate and still refuses a different address."""
    ca = default_ca()
    key = keys.generate_key(KeyType.ECDSA_P256)
    names = ["::1", "127.0.0.1", "a.test"]
    leaf = issue_leaf(ca, key, names, NOW - timedelta(days=1), NOW + timedelta(days=6))
    assert set(keys.cert_names(leaf)) == set(names)
    keys.verify_bundle(key, [leaf, ca.cert], names, NOW)
    with pytest.raises(Exception, match="differ"):
        keys.verify_bundle(key, [leaf, ca.cert], ["::2", "127.0.0.1", "a.test"], NOW)


def test_trust_verification_checks_an_ip_leaf_against_the_address(tmp_path: Path) -> None:
    """The issued chain is verified as a server certificate for the first identifier, an
    iPAddress when it is one: the right address passes, another is refused."""
    ca = default_ca()
    roots = tmp_path / "roots.pem"
    roots.write_bytes(ca.root_cert.public_bytes(Encoding.PEM))
    trust = TrustAnchors(
        AcmeSpec("ca", "https://ca.example/dir", trust_roots=roots), FakeClock(NOW)
    )
    key = keys.generate_key(KeyType.ECDSA_P256)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=6))
        .add_extension(x509.SubjectAlternativeName(keys.san_entries(["127.0.0.1"])), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    trust.verify([leaf, ca.cert], ["127.0.0.1"])
    with pytest.raises(IssuanceError, match="does not verify"):
        trust.verify([leaf, ca.cert], ["127.0.0.2"])


def test_probe_sni_defaults_to_a_dns_name_never_an_address() -> None:
    """A probe without ``sni`` names the first DNS name; only an all-address service falls
    back to the address, which Python's ssl then leaves out of the ClientHello."""
    assert identifiers.default_sni(["127.0.0.1", "a.test"]) == "a.test"
    assert identifiers.default_sni(["::1"]) == "::1"


@pytest.mark.parametrize(
    ("name", "kind", "problem"),
    [
        ("192.0.2.1", "dns-01", "dns-01 cannot validate"),
        ("2001:db8::1", "dns-01", "dns-01 cannot validate"),
        ("*.example.test", "http-01", "only dns-01 can validate"),
        ("*.example.test", "tls-alpn-01", "not tls-alpn-01"),
        ("192.0.2.1", "http-01", None),
        ("::1", "tls-alpn-01", None),
        ("*.example.test", "dns-01", None),
    ],
)
def test_which_challenge_may_validate_which_identifier(
    name: str, kind: str, problem: str | None
) -> None:
    """RFC 8738 §7: no address over dns-01; RFC 8555 §7.1.3: wildcards only over dns-01. (The
    dns-01 rows hold once that challenge type is configurable; config reports them at
    ``services.<name>.domains[i]``.)"""
    found = config._challenge_problem(name, kind)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
