"""Private keys, CSRs and bundle verification.

Pure: no file or network I/O and no clock reads (``now`` is a parameter). Secrets leave this module
only as PEM bytes for the store; what may be logged is the public-key fingerprint, never the key.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from rotatord.core import identifiers
from rotatord.core.errors import VerificationError
from rotatord.core.model import CertInfo, KeyType
from rotatord.core.text import serial_text

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}
_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.ECDSA_P256: ec.SECP256R1(),
    KeyType.ECDSA_P384: ec.SECP384R1(),
}


def generate_key(key_type: KeyType) -> PrivateKey:
    """A fresh private key of ``key_type`` from the OS RNG."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def key_type_of(key: PrivateKey | x509.Certificate) -> KeyType | None:
    """The KeyType of a private key or of a certificate's public key, or None if not one of ours."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        for kt, curve in _CURVES.items():
            if public.curve.name == curve.name:
                return kt
        return None
    if isinstance(public, rsa.RSAPublicKey):
        for kt, bits in _RSA_BITS.items():
            if public.key_size == bits:
                return kt
    return None


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise VerificationError("private key is not a readable unencrypted PEM key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise VerificationError(f"unsupported private key type {type(key).__name__}")
    return key


def public_key_fingerprint(key: PrivateKey | x509.Certificate) -> str:
    """SHA-256 of the SubjectPublicKeyInfo, hex: identifies a key, reveals nothing, safe to log."""
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def cert_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def make_csr(key: PrivateKey, names: Sequence[str]) -> bytes:
    """A PEM CSR carrying every name as a SAN: dNSName, or iPAddress for an IP address
    (RFC 8738 §3). The CN, when it fits, is the first name."""
    # CN is limited to 64 characters; a longer first name gets an empty subject (the SAN is
    # what counts, and cryptography refuses a CSR without any subject). An address never goes
    # in the CN: CAs issuing IP certificates leave it out, and the SAN carries it.
    first = names[0]
    fits = len(first) <= 64 and not identifiers.is_ip(first)
    cn = [x509.NameAttribute(NameOID.COMMON_NAME, first)] if fits else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(cn))
    builder = builder.add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for ``names``: an iPAddress for an address, a dNSName otherwise."""
    out: list[x509.GeneralName] = []
    for name in names:
        ip = identifiers.ip_of(name)
        out.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(name))
    return out


def split_pem_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise VerificationError("certificate chain is not valid PEM") from exc
    return certs


def cert_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return ()
    assert isinstance(san, x509.SubjectAlternativeName)
    dns = tuple(str(n).lower() for n in san.get_values_for_type(x509.DNSName))
    # str() of an address is its canonical spelling, the one config normalises to.
    return dns + tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))


def cert_info(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        serial=cert.serial_number,
        names=cert_names(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type_of(cert),
        ari_id=ari_cert_id(cert),
    )


def same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    return public_key_fingerprint(key) == public_key_fingerprint(cert)


def verify_bundle(
    key: PrivateKey,
    chain: Sequence[x509.Certificate],
    expected_names: Sequence[str],
    now: datetime,
) -> None:
    """Raise VerificationError unless ``chain[0]`` is a usable leaf for ``key`` and the names.

    Checks: the leaf's public key is the key's; every certificate is signed by the next one; the
    leaf's SAN set equals ``expected_names``; ``now`` lies within the leaf's validity.
    """
    if not chain:
        raise VerificationError("empty certificate chain")
    leaf = chain[0]
    if not same_public_key(key, leaf):
        raise VerificationError("certificate public key does not match the private key")
    for child, issuer in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise VerificationError(
                f"certificate {serial_text(child.serial_number)} is not issued by the next one "
                "in the chain"
            ) from exc
    got = set(cert_names(leaf))
    want = {n.lower() for n in expected_names}
    if got != want:
        raise VerificationError(f"certificate names {sorted(got)} differ from {sorted(want)}")
    if not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc):
        raise VerificationError(
            f"certificate is not valid now ({leaf.not_valid_before_utc.isoformat()} .. "
            f"{leaf.not_valid_after_utc.isoformat()})"
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def ari_cert_id(cert: x509.Certificate) -> str | None:
    """RFC 9773 §4.1 certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial
    DER content octets). None when the certificate has no AKI key identifier."""
    try:
        aki = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    except x509.ExtensionNotFound:
        return None
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    if aki.key_identifier is None:
        return None
    serial = cert.serial_number
    # DER INTEGER content: big-endian two's complement, minimal length (so a leading 0x00 when
    # the high bit is set).
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_bytes)}"
