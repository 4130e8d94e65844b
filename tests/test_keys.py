"""Tests of key generation, CSRs and bundle verification (``rotatord.core.keys``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from rotatord.core import keys
from rotatord.core.errors import VerificationError
from rotatord.core.model import KeyType
from tests.certs import T0, cert_to_pem, default_ca, issue_leaf, key_to_pem, make_ca

NAMES = ("example.test", "www.example.test", "api.example.test")
NOT_AFTER = T0 + timedelta(days=90)
NOW = T0 + timedelta(days=1)


@pytest.fixture(scope="module")
def ec_key() -> keys.PrivateKey:
    """One P-256 key shared by the verification tests."""
    return keys.generate_key(KeyType.ECDSA_P256)


@pytest.fixture(scope="module")
def leaf(ec_key: keys.PrivateKey) -> x509.Certificate:
    """A leaf for ``ec_key`` and NAMES, valid T0 .. T0 + 90 d, from the default CA."""
    return issue_leaf(default_ca(), ec_key, NAMES, T0, NOT_AFTER)


# RSA-4096 generation takes ~0.3 s (up to a few seconds on a slow machine); worth it for the type.
@pytest.mark.parametrize(
    ("key_type", "cls", "size"),
    [
        (KeyType.ECDSA_P256, ec.EllipticCurvePrivateKey, 256),
        (KeyType.ECDSA_P384, ec.EllipticCurvePrivateKey, 384),
        (KeyType.RSA_2048, rsa.RSAPrivateKey, 2048),
        (KeyType.RSA_3072, rsa.RSAPrivateKey, 3072),
        (KeyType.RSA_4096, rsa.RSAPrivateKey, 4096),
    ],
)
def test_generate_key_type_and_size(key_type: KeyType, cls: type, size: int) -> None:
    """Each KeyType yields a key of that algorithm and size, recognised by key_type_of, also
    through its PEM and through a certificate for it."""
    key = keys.generate_key(key_type)
    assert isinstance(key, cls)
    assert key.key_size == size
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.public_key().public_numbers().e == 65537
    assert keys.key_type_of(key) is key_type
    reloaded = keys.load_private_key(keys.private_key_pem(key))
    assert keys.key_type_of(reloaded) is key_type
    assert keys.public_key_fingerprint(reloaded) == keys.public_key_fingerprint(key)
    cert = issue_leaf(default_ca(), key, ["example.test"], T0, NOT_AFTER)
    assert keys.key_type_of(cert) is key_type
    assert keys.cert_info(cert).key_type is key_type


def test_key_type_of_unknown_sizes_is_none() -> None:
    """Keys rotatord does not generate (P-521, RSA-1024) have no KeyType."""
    assert keys.key_type_of(ec.generate_private_key(ec.SECP521R1())) is None
    assert keys.key_type_of(rsa.generate_private_key(65537, 1024)) is None  # noqa: S505 - a size we never make


def test_load_private_key_rejects_garbage_and_unsupported() -> None:
    """Unreadable PEM and unsupported algorithms (Ed25519) raise VerificationError."""
    with pytest.raises(VerificationError):
        keys.load_private_key(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(VerificationError, match="unsupported"):
        keys.load_private_key(key_to_pem_any(ed25519.Ed25519PrivateKey.generate()))


def key_to_pem_any(key: ed25519.Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a key type outside ``keys.PrivateKey``."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_csr_carries_every_name(ec_key: keys.PrivateKey) -> None:
    """The CSR is self-signed by the key, lists every name as a dNSName SAN, CN = first name."""
    csr = x509.load_pem_x509_csr(keys.make_csr(ec_key, NAMES))
    assert csr.is_signature_valid
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert csr.public_key().public_bytes(der, spki) == ec_key.public_key().public_bytes(der, spki)
    san = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == list(NAMES)
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == [NAMES[0]]


def test_csr_long_first_name_has_no_cn(ec_key: keys.PrivateKey) -> None:
    """A first name longer than 64 characters (the CN limit) goes only into the SAN."""
    long_name = "a" * 60 + ".example.test"
    csr = x509.load_pem_x509_csr(keys.make_csr(ec_key, [long_name, "b.test"]))
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    san = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == [long_name, "b.test"]


def test_verify_bundle_accepts_good_bundle(ec_key: keys.PrivateKey, leaf: x509.Certificate) -> None:
    """A matching key, a leaf signed by the chain, the right names and a valid time pass."""
    chain = [leaf, default_ca().cert, default_ca().root_cert]
    keys.verify_bundle(ec_key, chain, NAMES, NOW)
    keys.verify_bundle(ec_key, chain[:2], list(reversed(NAMES)), NOW)  # order is irrelevant
    keys.verify_bundle(ec_key, chain[:2], [n.upper() for n in NAMES], NOW)  # so is case
    keys.verify_bundle(ec_key, chain[:2], NAMES, T0)  # validity bounds are inclusive
    keys.verify_bundle(ec_key, chain[:2], NAMES, NOT_AFTER)


def test_verify_bundle_rejects_wrong_key(leaf: x509.Certificate) -> None:
    """A key that is not the leaf's is rejected."""
    other = keys.generate_key(KeyType.ECDSA_P256)
    with pytest.raises(VerificationError, match="does not match"):
        keys.verify_bundle(other, [leaf, default_ca().cert], NAMES, NOW)


def test_verify_bundle_rejects_broken_chain(ec_key: keys.PrivateKey) -> None:
    """A leaf signed by another CA does not verify against this chain."""
    stranger = issue_leaf(make_ca("stranger"), ec_key, NAMES, T0, NOT_AFTER)
    with pytest.raises(VerificationError, match="not issued by"):
        keys.verify_bundle(ec_key, [stranger, default_ca().cert], NAMES, NOW)


def test_verify_bundle_rejects_broken_upper_chain(
    ec_key: keys.PrivateKey, leaf: x509.Certificate
) -> None:
    """An intermediate followed by the wrong root is rejected too (every link is checked)."""
    with pytest.raises(VerificationError, match="not issued by"):
        keys.verify_bundle(
            ec_key, [leaf, default_ca().cert, make_ca("other").root_cert], NAMES, NOW
        )


@pytest.mark.parametrize(
    "expected",
    [
        NAMES[:2],  # the cert has an extra name
        (*NAMES, "extra.example.test"),  # the cert lacks one
        ("other.test",),
    ],
)
def test_verify_bundle_rejects_name_mismatch(
    ec_key: keys.PrivateKey, leaf: x509.Certificate, expected: tuple[str, ...]
) -> None:
    """The leaf's SAN set must equal the expected names exactly."""
    with pytest.raises(VerificationError, match="names"):
        keys.verify_bundle(ec_key, [leaf, default_ca().cert], expected, NOW)


@pytest.mark.parametrize(
    "now",
    [T0 - timedelta(seconds=1), NOT_AFTER + timedelta(seconds=1), NOT_AFTER + timedelta(days=365)],
    ids=["not-yet-valid", "just-expired", "long-expired"],
)
def test_verify_bundle_rejects_outside_validity(
    ec_key: keys.PrivateKey, leaf: x509.Certificate, now: datetime
) -> None:
    """A leaf that is not yet valid or already expired at ``now`` is rejected."""
    with pytest.raises(VerificationError, match="not valid now"):
        keys.verify_bundle(ec_key, [leaf, default_ca().cert], NAMES, now)


def test_verify_bundle_rejects_empty_chain(ec_key: keys.PrivateKey) -> None:
    """An empty chain is rejected, not an IndexError."""
    with pytest.raises(VerificationError, match="empty"):
        keys.verify_bundle(ec_key, [], NAMES, NOW)


def test_fingerprint_equal_for_key_and_cert(
    ec_key: keys.PrivateKey, leaf: x509.Certificate
) -> None:
    """The public-key fingerprint of a key equals its certificate's, and differs from another's."""
    assert keys.public_key_fingerprint(ec_key) == keys.public_key_fingerprint(leaf)
    assert keys.same_public_key(ec_key, leaf)
    other = keys.generate_key(KeyType.ECDSA_P256)
    assert keys.public_key_fingerprint(other) != keys.public_key_fingerprint(leaf)
    assert len(keys.public_key_fingerprint(ec_key)) == 64
    assert keys.public_key_fingerprint(ec_key) not in key_to_pem(ec_key).decode()


def test_cert_info_and_chain_split(ec_key: keys.PrivateKey) -> None:
    """cert_info reports serial, lowercased SAN names, aware UTC validity and key type; a PEM
    fullchain splits back into its certificates."""
    cert = issue_leaf(
        default_ca(), ec_key, ["Example.TEST", "b.test"], T0, NOT_AFTER, serial=0x1234
    )
    info = keys.cert_info(cert)
    assert info.serial == 0x1234
    assert info.serial_hex == "1234"
    # openssl's form: even-length upper-case hex, the leading zero kept
    assert keys.cert_info(
        issue_leaf(default_ca(), ec_key, ["a.test"], T0, NOT_AFTER, serial=0xABC)
    ).serial_hex == "0ABC"
    assert info.names == ("example.test", "b.test")
    assert info.not_before == T0
    assert info.not_after == NOT_AFTER
    assert info.not_after.tzinfo == UTC
    assert info.lifetime == timedelta(days=90)
    assert info.key_type is KeyType.ECDSA_P256
    fullchain = cert_to_pem(cert) + cert_to_pem(default_ca().cert)
    assert keys.split_pem_chain(fullchain) == [cert, default_ca().cert]
    assert keys.cert_fingerprint(cert) == keys.cert_fingerprint(keys.split_pem_chain(fullchain)[0])


def test_split_pem_chain_rejects_garbage() -> None:
    """Bytes without a PEM certificate raise VerificationError."""
    with pytest.raises(VerificationError):
        keys.split_pem_chain(b"not a pem")


def test_cert_names_without_san_is_empty() -> None:
    """A certificate without a SAN extension has no names (a CN alone does not count)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cn-only.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2026, 2, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    assert keys.cert_names(cert) == ()
