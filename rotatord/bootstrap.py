"""A self-signed placeholder pair for a service, so a TLS server whose config names rotatord's
output files can start before the first certificate is issued (nginx refuses to start with a
missing ``ssl_certificate``). rotatord replaces it at its first issuance like any other file.

Rules: never stored as a version (rotatord never rolls back to it); short-lived; its subject
says what it is, so nobody mistakes it for an issued certificate.
"""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from rotatord.clock import Clock, SystemClock
from rotatord.core import keys
from rotatord.core.model import IssuedMeta, ServiceSpec
from rotatord.store import Bundle

LIFETIME = timedelta(days=7)
SUBJECT = "rotatord bootstrap placeholder (not issued by a CA)"


def placeholder_bundle(spec: ServiceSpec, clock: Clock | None = None) -> Bundle:
    """A fresh key of the service's type and a self-signed certificate for its names."""
    now = (clock or SystemClock()).now()
    key = keys.generate_key(spec.key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT[:64])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in spec.domains]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    cert = builder.sign(key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    meta = IssuedMeta(
        names=spec.domains,
        key_type=spec.key_type,
        account="",
        directory="",
        serial=cert.serial_number,
        not_before=now - timedelta(minutes=5),
        not_after=now + LIFETIME,
        issued_at=now,
    )
    return Bundle(key_pem=keys.private_key_pem(key), cert_pem=cert_pem, chain_pem=b"", meta=meta)
