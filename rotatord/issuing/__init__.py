"""Issuing adapter: everything that speaks ACME. ``acme``, ``josepy`` and ``requests`` are
imported here and nowhere else; no josepy object leaves this package."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from rotatord.core.model import Challenge

#: problem_type of an order refused before it was sent: the CA does not offer the profile.
PROFILE_NOT_OFFERED = "rotatord:profileNotOffered"


@dataclass(frozen=True)
class IssuedCertificate:
    """What the CA returned: the leaf and the chain that follows it, as PEM."""

    cert_pem: bytes
    chain_pem: bytes
    order_url: str | None = None
    replaces: str | None = None  # the ARI id the order carried, if the CA accepted it


@dataclass(frozen=True)
class RenewalInfo:
    """A CA's suggested renewal window (RFC 9773), aware UTC."""

    start: datetime
    end: datetime
    retry_after: datetime | None = None
    explanation_url: str | None = None


class Issuer(Protocol):
    """Obtains certificates from one CA account.

    Contract:
    - ``issue`` returns a certificate for exactly the CSR's names, or raises ``IssuanceError``
      (never a library exception) with ``retryable``, ``problem_type`` and ``retry_after`` filled
      in as far as the CA said.
    - challenge resources (listeners, webroot files) are removed on every path, success or not.
    - it is safe to call from several threads at once.
    - it never logs the account key, EAB secret or any private key.

    - ``replaces`` (an RFC 9773 certificate id) is sent on the new order; if the CA refuses it
      (alreadyReplaced, or a rejection of the field) the order is retried once without it.
    - ``profile`` (draft-ietf-acme-profiles) goes on the new order; a CA whose directory lists
      ``meta.profiles`` without it refuses before any order (``IssuanceError``, not retryable,
      problem_type ``rotatord:profileNotOffered``).
    - ``renewal_info`` returns None when the CA does not advertise ARI, the window otherwise, and
      raises ``IssuanceError`` when the CA advertises ARI but the query failed.
    """

    directory_url: str

    def issue(
        self,
        csr_pem: bytes,
        names: Sequence[str],
        challenge: Challenge,
        *,
        replaces: str | None = None,
        profile: str | None = None,
    ) -> IssuedCertificate: ...

    def ari_supported(self) -> bool: ...

    def renewal_info(self, cert_id: str) -> RenewalInfo | None: ...

    def revoke(self, cert_pem: bytes, reason: int) -> None: ...
