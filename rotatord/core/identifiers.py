"""ACME identifiers: DNS names and IP addresses (RFC 8738), told apart and normalised.

A service's ``domains`` may hold IP addresses. They are kept in one canonical spelling
(``ipaddress``'s: dotted quad, RFC 5952 compressed lower-case IPv6), which is also how
``cryptography`` prints an iPAddress SAN, so names from config, CSR, order and certificate compare
as plain strings.

Rules: pure (no I/O); DNS names pass through unchanged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_of(name: str) -> IpAddress | None:
    """The address ``name`` spells, or None for a DNS name. Scoped IPv6 (``fe80::1%eth0``) is
    not an address a CA can validate, so it is not one here either."""
    if "%" in name:
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_ip(name: str) -> bool:
    return ip_of(name) is not None


def identifier_type(name: str) -> str:
    """The ACME identifier type of ``name``: ``"ip"`` or ``"dns"``."""
    return "ip" if is_ip(name) else "dns"


def normalise(name: str) -> str:
    """The canonical spelling: compressed IP address, or the lower-cased DNS name."""
    ip = ip_of(name)
    return str(ip) if ip is not None else name.lower()


def tls_alpn_sni(name: str) -> str:
    """The SNI a TLS-ALPN-01 validator sends for ``name`` (RFC 8737 §3, RFC 8738 §6): the DNS
    name itself, or for an address its reverse-DNS name (``1.0.0.127.in-addr.arpa``,
    ``…ip6.arpa``), lower-case and without a trailing dot."""
    ip = ip_of(name)
    return ip.reverse_pointer if ip is not None else name.lower().rstrip(".")


def default_sni(names: Sequence[str]) -> str:
    """What a probe names when its config gives no ``sni``: the first DNS name (a server that
    picks its certificate by SNI then picks ours), or the first address when there is none. An
    address is never sent as SNI (RFC 6066 §3); Python's ``ssl`` leaves the extension out."""
    return next((n for n in names if not is_ip(n)), names[0])
