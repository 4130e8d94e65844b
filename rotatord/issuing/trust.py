"""Trust anchors of one ACME account, and the check that an issued chain verifies to one.

A CA (or whoever answers in its name) could hand back a leaf for our key and names signed by
anyone; the key and name checks in ``core.keys.verify_bundle`` cannot see that. So every issued
chain must verify, with cryptography's RFC 5280 / CA/B Forum path builder, to an anchor from:

1. ``trust_roots``: a PEM file the operator configures (read at most 1 MiB);
2. ``trust_roots_url``: PEM roots served at an https URL the operator configures, fetched with
   the account's ``ca_bundle``, bounded in size and time, and fetched again once when a chain
   fails against the cached roots (a test CA such as Pebble regenerates its root at every
   start; at most one extra bounded GET per failed order);
3. neither: the system trust store (the distribution's CA bundle), which holds every public
   ACME CA's roots. A private CA needs 1 or 2.

A URL from the CA's directory is never a source of anchors: the CA cannot vouch for itself.

Rules: no josepy/acme object leaves; never logs key material (certificates are public).
"""

from __future__ import annotations

import ssl
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import requests
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from rotatord.clock import Clock
from rotatord.core.errors import IssuanceError
from rotatord.core.identifiers import ip_of
from rotatord.core.model import AcmeSpec
from rotatord.core.text import quote
from rotatord.issuing.acme_net import exchange_deadline, read_bounded, watch
from rotatord.observe.logging import get_logger

log = get_logger("rotatord.issuing")

MAX_ROOTS_BYTES: Final = 1 << 20
#: The system bundle is larger (Debian's ~220 KiB); still bounded.
MAX_SYSTEM_BUNDLE_BYTES: Final = 16 << 20
SYSTEM_BUNDLES: Final = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, some BSDs
)
_END: Final = b"-----END CERTIFICATE-----"


def parse_chain(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a downloaded chain, or IssuanceError when it is not a PEM chain."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise IssuanceError(
            f"the CA's certificate download is not a PEM certificate chain ({len(pem)} bytes, "
            f"starting {quote(pem[:60].decode('ascii', 'replace'), 60)})",
            retryable=True,
        ) from exc
    return certs


def _read_capped(path: Path, cap: int) -> bytes:
    with path.open("rb") as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"larger than {cap} bytes")
    return data


def _tolerant_load(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a bundle that parses (a system bundle may hold one cryptography
    refuses; that one root is skipped rather than the whole store)."""
    out = []
    for block in pem.split(_END):
        if b"-----BEGIN CERTIFICATE-----" in block:
            try:
                with warnings.catch_warnings():
                    # A root with a non-positive serial still loads, with a deprecation
                    # warning that a strict warnings filter would turn into an exception.
                    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                    out.append(x509.load_pem_x509_certificate(block + _END))
            except ValueError:
                continue
    return out


def system_roots() -> list[x509.Certificate]:
    """The distribution's CA bundle (not ``$SSL_CERT_FILE``: the environment does not pick
    what rotatord trusts)."""
    candidates = [ssl.get_default_verify_paths().openssl_cafile, *SYSTEM_BUNDLES]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            try:
                return _tolerant_load(_read_capped(path, MAX_SYSTEM_BUNDLE_BYTES))
            except (OSError, ValueError):
                continue
    return []


class TrustAnchors:
    """The anchors of one account (see the module docstring); thread-safe."""

    def __init__(self, spec: AcmeSpec, clock: Clock) -> None:
        self._spec = spec
        self._clock = clock
        self._lock = threading.Lock()
        self._roots: list[x509.Certificate] | None = None

    def where(self) -> str:
        parts = []
        if self._spec.trust_roots is not None:
            parts.append(f"trust_roots {self._spec.trust_roots}")
        if self._spec.trust_roots_url is not None:
            parts.append(f"trust_roots_url {self._spec.trust_roots_url}")
        return " and ".join(parts) or "the system trust store"

    def verify(self, chain: Sequence[x509.Certificate], names: Sequence[str]) -> None:
        """Raise IssuanceError unless ``chain[0]`` verifies, through ``chain[1:]``, to an anchor
        as a server certificate for ``names[0]``."""
        if not chain:
            raise IssuanceError("the CA returned an empty certificate chain", retryable=True)
        problem = self._check(self._anchors(refresh=False), chain, names)
        if problem is not None and self._may_refetch():
            problem = self._check(self._anchors(refresh=True), chain, names)
        if problem is not None:
            raise IssuanceError(
                f"the issued certificate does not verify to a trust anchor of account "
                f"{self._spec.name!r} ({self.where()}): {problem}; refused",
                retryable=True,
            )

    def _check(
        self, roots: list[x509.Certificate], chain: Sequence[x509.Certificate], names: Sequence[str]
    ) -> str | None:
        if not roots:
            return "there are no trust anchors (set trust_roots or trust_roots_url)"
        name = names[0] if names else ""
        if name.startswith("*."):
            name = "wildcard" + name[1:]  # any name the wildcard covers
        ip = ip_of(name)
        subject: x509.DNSName | x509.IPAddress = (
            x509.IPAddress(ip) if ip is not None else x509.DNSName(name)
        )
        verifier = (
            PolicyBuilder()
            .store(Store(roots))
            .time(self._clock.now())
            .max_chain_depth(8)
            .build_server_verifier(subject)
        )
        try:
            verifier.verify(chain[0], list(chain[1:]))
        except VerificationError as exc:
            return str(exc)
        return None

    def _may_refetch(self) -> bool:
        return self._spec.trust_roots_url is not None

    def _anchors(self, *, refresh: bool) -> list[x509.Certificate]:
        with self._lock:
            if self._roots is not None and not refresh:
                return self._roots
        roots: list[x509.Certificate] = []
        spec = self._spec
        if spec.trust_roots is not None:
            try:
                roots += x509.load_pem_x509_certificates(
                    _read_capped(spec.trust_roots, MAX_ROOTS_BYTES)
                )
            except (OSError, ValueError) as exc:
                raise IssuanceError(
                    f"cannot read trust_roots {spec.trust_roots}: {exc}", retryable=False
                ) from exc
        if spec.trust_roots_url is not None:
            roots += self._fetch(spec.trust_roots_url)
        if spec.trust_roots is None and spec.trust_roots_url is None:
            roots = system_roots()
        with self._lock:
            self._roots = roots
        return roots

    def _fetch(self, url: str) -> list[x509.Certificate]:
        verify: bool | str = str(self._spec.ca_bundle) if self._spec.ca_bundle else True
        ends = self._clock.monotonic() + self._spec.timeout_seconds
        what = f"fetching trust roots from {quote(url, 120)}"
        try:
            with requests.Session() as session:
                watch(session)  # headers, too, must arrive by the deadline
                with (
                    exchange_deadline(ends, self._clock),
                    session.get(
                        url,
                        verify=verify,
                        timeout=self._spec.timeout_seconds,
                        stream=True,
                        allow_redirects=False,
                        headers={"Accept-Encoding": "identity"},
                    ) as response,
                ):
                    body = read_bounded(response, what, ends, self._clock, MAX_ROOTS_BYTES)
                    if response.status_code != 200:
                        raise IssuanceError(f"{what}: HTTP {response.status_code}", retryable=True)
            roots = x509.load_pem_x509_certificates(body)
        except requests.RequestException as exc:
            raise IssuanceError(f"{what}: {exc}", retryable=True) from exc
        except ValueError as exc:
            raise IssuanceError(f"{what}: not PEM certificates", retryable=True) from exc
        log.info("trust_roots_fetched", account=self._spec.name, url=url, roots=len(roots))
        return roots
