"""ACME profiles (draft-ietf-acme-profiles) in front of Pebble 2.4, which has none; tests only.

:class:`Profiles` installs itself on an :class:`~pebble.ari_proxy.AriProxy`: the directory
advertises ``meta.profiles``; the profile of every newOrder is recorded; the certificate of an
order that asked for a *short* profile (``shortlived``: 160 hours, Let's Encrypt's 6 days) is
re-issued by the front with that lifetime — same subject, names, key and serial, signed with
Pebble's own intermediate key (from its management port), so it chains to Pebble's root like
any other. Pebble itself accepts and ignores the ``profile`` field.

For tests only: it trusts the unverified JWS payload it reads and holds Pebble's CA key.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pebble.ari_proxy import AriProxy

#: Let's Encrypt's profiles as of 2026 (lifetimes in hours; None: Pebble's own validity).
DEFAULT_PROFILES: Final[dict[str, int | None]] = {
    "classic": None,
    "tlsserver": None,
    "shortlived": 160,
}


def _payload(body: bytes) -> dict[str, Any]:
    try:
        jws = json.loads(body)
        text = jws["payload"]
        doc = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError, KeyError, binascii.Error):
        return {}
    return doc if isinstance(doc, dict) else {}


class Profiles:
    """Advertise ``profiles`` on ``proxy`` and give orders of short profiles short certificates.

    :attr:`seen` holds the ``profile`` of every newOrder POST (``None`` when absent).
    """

    def __init__(self, proxy: AriProxy, profiles: dict[str, int | None] | None = None) -> None:
        self.proxy = proxy
        self.lifetimes = dict(DEFAULT_PROFILES if profiles is None else profiles)
        self.seen: list[str | None] = []
        self._lock = threading.Lock()
        self._by_finalize: dict[str, str] = {}  # finalize path -> profile
        self._by_cert: dict[str, str] = {}  # certificate path -> profile
        proxy.profiles = {name: f"https://example.test/docs/{name}" for name in self.lifetimes}
        proxy.after_forward = self._after

    def _after(
        self,
        method: str,
        path: str,
        body: bytes,
        status: int,
        headers: list[tuple[str, str]],
        data: bytes,
    ) -> bytes:
        if method != "POST":
            return data
        profile = None
        if path == self.proxy.new_order_path:
            profile = _payload(body).get("profile")
            profile = profile if isinstance(profile, str) else None
            with self._lock:
                self.seen.append(profile)
        with self._lock:
            cert_profile = self._by_cert.get(path)
        if cert_profile is not None and status == 200:
            return self._reissue(data, cert_profile)
        self._track(path, data, profile)
        return data

    def _track(self, path: str, data: bytes, profile: str | None) -> None:
        try:
            order = json.loads(data)
        except ValueError:
            return
        if not isinstance(order, dict) or not isinstance(order.get("finalize"), str):
            return
        finalize = urlsplit(order["finalize"]).path
        with self._lock:
            if profile is not None:
                self._by_finalize[finalize] = profile
            known = self._by_finalize.get(finalize)
            if known is not None and isinstance(order.get("certificate"), str):
                self._by_cert[urlsplit(order["certificate"]).path] = known

    def _reissue(self, chain_pem: bytes, profile: str) -> bytes:
        hours = self.lifetimes.get(profile)
        if hours is None:
            return chain_pem
        certs = x509.load_pem_x509_certificates(chain_pem)
        leaf = certs[0]
        key = serialization.load_pem_private_key(
            self.proxy.pebble._management_get("/intermediate-keys/0"), password=None
        )
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(leaf.subject)
            .issuer_name(leaf.issuer)
            .public_key(leaf.public_key())
            .serial_number(leaf.serial_number)
            .not_valid_before(leaf.not_valid_before_utc)
            .not_valid_after(leaf.not_valid_before_utc + timedelta(hours=hours, seconds=-1))
        )
        for ext in leaf.extensions:
            builder = builder.add_extension(ext.value, critical=ext.critical)
        short = builder.sign(key, hashes.SHA256())
        rest = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:])
        return short.public_bytes(serialization.Encoding.PEM) + rest
