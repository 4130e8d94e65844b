"""CRLs (RFC 5280 §5): is one of our certificates revoked at its CA?

``crl_urls(cert)`` reads the CRL distribution points (Let's Encrypt's certificates carry one
since OCSP was retired); ``fetch`` downloads one CRL (http/https, no redirects, bounded size,
DER or PEM); ``revocation`` checks a certificate against it — only after the CRL's signature
verifies with the certificate's issuer's key and its issuer name matches, so whoever can
answer on the CRL's (usually plain http) URL cannot make us rotate by forging one.

Rules: pure checks take ``now``; a stale CRL (past its nextUpdate) is still used for "revoked"
(revocation is permanent) and reported as stale.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

from rotatord.core.errors import RotatordError

MAX_CRL_BYTES = 32 << 20
_CHUNK = 64 << 10


class CrlError(RotatordError):
    pass


@dataclass(frozen=True)
class Revocation:
    serial: int
    revoked_at: datetime
    reason: str | None


def crl_urls(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
    except x509.ExtensionNotFound:
        return []
    assert isinstance(ext, x509.CRLDistributionPoints)
    out = []
    for point in ext:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(
                ("http://", "https://")
            ):
                out.append(name.value)
    return out


def fetch(url: str, timeout: float) -> x509.CertificateRevocationList:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    where = f"CRL {parts.scheme}://{parts.netloc}{parts.path[:80]}"
    try:
        conn.request("GET", target, headers={"Accept": "application/pkix-crl"})
        response = conn.getresponse()
        if response.status != 200:
            raise CrlError(f"{where}: HTTP {response.status}")
        chunks, total = [], 0
        while chunk := response.read(_CHUNK):
            total += len(chunk)
            if total > MAX_CRL_BYTES:
                raise CrlError(f"{where}: larger than {MAX_CRL_BYTES >> 20} MiB")
            chunks.append(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise CrlError(f"{where}: {exc}") from exc
    finally:
        conn.close()
    data = b"".join(chunks)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CrlError(f"{where}: not a CRL") from exc


def revocation(
    crl: x509.CertificateRevocationList, cert: x509.Certificate, issuer: x509.Certificate
) -> Revocation | None:
    """The certificate's entry in ``crl`` if it is listed; raises CrlError when the CRL is not
    the issuer's (wrong name or a signature that does not verify)."""
    if crl.issuer != cert.issuer or issuer.subject != cert.issuer:
        raise CrlError("the CRL's issuer is not the certificate's issuer")
    try:
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (InvalidSignature, TypeError, ValueError):
        valid = False
    if not valid:
        raise CrlError("the CRL's signature does not verify with the issuer's key")
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return None
    reason = None
    try:
        ext = entry.extensions.get_extension_for_class(x509.CRLReason)
        reason = ext.value.reason.name
    except x509.ExtensionNotFound:
        pass
    return Revocation(cert.serial_number, entry.revocation_date_utc, reason)


def stale(crl: x509.CertificateRevocationList, now: datetime) -> bool:
    nxt = crl.next_update_utc
    return nxt is not None and now > nxt
