"""The DNS-01 challenge as configured: which provider writes the TXT record, how to check it.

Pure data (frozen dataclasses), no I/O. ``Dns01`` is one member of ``model.Challenge``; the
issuing adapter (``issuing/challenges/dns01.py``) turns it into a solver. A provider is either
an RFC 2136 dynamic update signed with TSIG (``Rfc2136``) or a program following lego's
``exec`` provider contract (``ExecHook``). ``DnsLookup`` says which resolvers find the zone and
follow CNAMEs, and how long to wait until every authoritative server of the zone answers with
the value.

Nothing here holds secret material: the TSIG key stays in its file (read only by the adapter);
an exec hook's ``env`` may carry API tokens and must never be logged or put in a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True)
class DnsLookup:
    """How the solver finds the zone and checks propagation.

    ``resolvers`` answer the SOA walk, the CNAME chase and the NS/address lookups (empty: the
    system's ``/etc/resolv.conf``); every authoritative server of the zone is then queried
    directly on ``authoritative_port`` until the value is visible or
    ``propagation_timeout_seconds`` have passed.
    """

    resolvers: tuple[tuple[str, int], ...] = ()
    authoritative_port: int = 53
    propagation_timeout_seconds: float = 120.0
    polling_interval_seconds: float = 2.0
    query_timeout_seconds: float = 5.0
    follow_cname: bool = True


@dataclass(frozen=True)
class Rfc2136:
    """Send RFC 2136 UPDATEs to ``server`` signed with the TSIG key in ``tsig_key_file``
    (BIND's ``tsig-keygen`` format). ``zone`` skips the SOA walk when set."""

    server: tuple[str, int]
    tsig_key_file: Path
    zone: str | None = None
    ttl: int = 60
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class ExecHook:
    """Run ``argv + [present|cleanup, FQDN., value]`` (lego's ``exec`` contract), or with
    ``raw``: ``argv + [present|cleanup, --, domain, token, key_authorization]``."""

    argv: tuple[str, ...]
    raw: bool = False
    # repr=False: API tokens live here, and a spec's repr can end up in a log or traceback.
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    timeout_seconds: float = 60.0


DnsProvider = Rfc2136 | ExecHook


@dataclass(frozen=True)
class Dns01:
    """DNS-01 through the ``[dns.<provider_name>]`` section; ``where`` names it in messages
    (``"/etc/rotatord.toml: dns.bind"``)."""

    provider_name: str
    provider: DnsProvider
    lookup: DnsLookup = field(default_factory=DnsLookup)
    where: str = ""
