"""Throwaway PKI for tests: a root + intermediate CA, leaf certificates and store bundles.

Everything is built with ``cryptography`` in memory; nothing touches the network or the clock
(every validity instant is an argument). CA keys are ECDSA P-256 because they are cheap to make;
leaf keys are whatever the test asks for.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rotatord.core import keys
from rotatord.core.model import IssuedMeta, KeyType
from rotatord.store import Bundle

# A fixed, recognisable instant so tests never depend on when they run.
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_LIFETIME = timedelta(days=90)
ACCOUNT = "test-account"
DIRECTORY = "https://acme.test/directory"

# Validity of the throwaway CA: wide enough for every instant a test uses.
_CA_NOT_BEFORE = datetime(2000, 1, 1, tzinfo=UTC)
_CA_NOT_AFTER = datetime(2099, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class CertificateAuthority:
    """A root CA and the intermediate that signs leaves (``chain.pem`` holds the intermediate)."""

    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def chain_pem(self) -> bytes:
        """What an ACME CA returns after the leaf: the intermediate, PEM."""
        return cert_to_pem(self.cert)


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """One certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key: keys.PrivateKey) -> bytes:
    """An unencrypted PKCS#8 PEM private key (what the store writes to ``privkey.pem``)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_cert(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: str,
    signing_key: ec.EllipticCurvePrivateKey,
    path_length: int,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_CA_NOT_BEFORE)
        .not_valid_after(_CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(signing_key, hashes.SHA256())
    )


def make_ca(name: str = "rotatord test") -> CertificateAuthority:
    """A fresh root CA and an intermediate signed by it."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_cert = _ca_cert(f"{name} root", root_key.public_key(), f"{name} root", root_key, 1)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter_cert = _ca_cert(
        f"{name} intermediate", inter_key.public_key(), f"{name} root", root_key, 0
    )
    return CertificateAuthority(
        root_key=root_key, root_cert=root_cert, key=inter_key, cert=inter_cert
    )


@functools.cache
def default_ca() -> CertificateAuthority:
    """One CA shared by every test that does not care which CA signs (saves key generation)."""
    return make_ca()


def issue_leaf(
    ca: CertificateAuthority,
    key: keys.PrivateKey,
    names: Sequence[str],
    not_before: datetime,
    not_after: datetime,
    *,
    serial: int | None = None,
) -> x509.Certificate:
    """A TLS server leaf for ``key`` with ``names`` as SANs (dNSName, or iPAddress for an
    address), signed by the intermediate."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(keys.san_entries(names)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def make_bundle(
    names: Sequence[str] = ("example.test",),
    key_type: KeyType = KeyType.ECDSA_P256,
    not_before: datetime = T0,
    not_after: datetime | None = None,
    *,
    ca: CertificateAuthority | None = None,
    key: keys.PrivateKey | None = None,
    serial: int | None = None,
    issued_at: datetime | None = None,
    account: str = ACCOUNT,
    directory: str = DIRECTORY,
) -> Bundle:
    """A complete, matching store Bundle: a fresh key (or ``key``), its leaf and the chain.

    ``issued_at`` (default ``not_before``) and the low 32 bits of ``serial`` name the version
    directory, so tests that need a known order or name pass them explicitly.
    """
    if not_after is None:
        not_after = not_before + DEFAULT_LIFETIME
    ca = ca if ca is not None else default_ca()
    key = key if key is not None else keys.generate_key(key_type)
    leaf = issue_leaf(ca, key, names, not_before, not_after, serial=serial)
    meta = IssuedMeta(
        names=tuple(names),
        key_type=key_type,
        account=account,
        directory=directory,
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        issued_at=issued_at if issued_at is not None else not_before,
    )
    return Bundle(
        key_pem=key_to_pem(key), cert_pem=cert_to_pem(leaf), chain_pem=ca.chain_pem, meta=meta
    )
