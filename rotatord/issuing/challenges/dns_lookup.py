"""DNS lookups for DNS-01: the record's effective name, its zone, and propagation.

One job: answer three questions with plain DNS queries (dnspython, no system resolver cache):

* **effective name** — ``_acme-challenge.<domain>.`` after following CNAMEs (lego's default:
  ``_acme-challenge.example.com CNAME x.acme.example.net`` means the TXT record is written at
  ``x.acme.example.net`` in *that* zone; the CA follows the same CNAME when it validates);
* **zone** — the closest enclosing name that has an SOA record (the SOA walk: ask for the SOA
  of the name, then of each parent, until one answers with an SOA owned by that name);
* **visible** — every authoritative server of the zone (its NS names, resolved to addresses)
  answers the TXT query, asked directly and without recursion, with the value.

Every query goes to the configured resolvers (or ``/etc/resolv.conf``'s) with a timeout; the
functions raise ``IssuanceError`` with the configuration's ``where`` in the message. Time comes
from the injected clock; this module never reads the wall clock itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from rotatord.clock import Clock
from rotatord.core.dns01 import DnsLookup
from rotatord.core.errors import IssuanceError

MAX_CNAME_HOPS = 8

Server = tuple[str, int]


def system_resolvers() -> tuple[Server, ...]:
    """The nameservers of ``/etc/resolv.conf``, on port 53."""
    try:
        resolver = dns.resolver.Resolver(configure=True)
    except dns.exception.DNSException:
        return ()
    return tuple((str(ns), 53) for ns in resolver.nameservers)


class DnsLookups:
    """Queries for one ``DnsLookup`` configuration (``where`` names it in errors)."""

    def __init__(self, spec: DnsLookup, clock: Clock, where: str) -> None:
        self._spec = spec
        self._clock = clock
        self._where = where
        self._resolvers = spec.resolvers or system_resolvers()

    # -- primitives -------------------------------------------------------------------------

    def _ask(
        self,
        server: Server,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        *,
        recurse: bool,
        timeout: float | None = None,
    ) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        if not recurse:
            query.flags &= ~dns.flags.RD
        limit = self._spec.query_timeout_seconds if timeout is None else timeout
        response, _tcp = dns.query.udp_with_fallback(
            query, server[0], port=server[1], timeout=limit
        )
        return response

    def resolve(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        """Ask the resolvers in turn; the first answer that is NOERROR or NXDOMAIN wins."""
        if not self._resolvers:
            raise IssuanceError(
                f"{self._where}: no resolvers configured and none in /etc/resolv.conf",
                retryable=False,
            )
        problems: list[str] = []
        for server in self._resolvers:
            try:
                response = self._ask(server, name, rdtype, recurse=True)
            except (dns.exception.DNSException, OSError) as exc:
                problems.append(f"{server[0]}:{server[1]}: {type(exc).__name__}")
                continue
            if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                return response
            problems.append(f"{server[0]}:{server[1]}: {dns.rcode.to_text(response.rcode())}")
        raise IssuanceError(
            f"{self._where}: cannot look up {name} {dns.rdatatype.to_text(rdtype)}: "
            + "; ".join(problems),
            retryable=True,
        )

    # -- the three questions ----------------------------------------------------------------

    def effective_name(self, name: dns.name.Name) -> dns.name.Name:
        """``name`` after following CNAMEs (at most ``MAX_CNAME_HOPS``), or ``name`` itself."""
        if not self._spec.follow_cname:
            return name
        seen = {name}
        current = name
        for _ in range(MAX_CNAME_HOPS):
            response = self.resolve(current, dns.rdatatype.CNAME)
            target = _cname_of(response, current)
            if target is None:
                return current
            if target in seen:
                raise IssuanceError(
                    f"{self._where}: CNAME loop at {current} -> {target}", retryable=False
                )
            seen.add(target)
            current = target
        raise IssuanceError(
            f"{self._where}: more than {MAX_CNAME_HOPS} CNAMEs from {name}", retryable=False
        )

    def zone_of(self, name: dns.name.Name) -> dns.name.Name:
        """The closest enclosing zone of ``name`` (the SOA walk)."""
        current = name
        last = ""
        while True:
            try:
                response = self.resolve(current, dns.rdatatype.SOA)
            except IssuanceError as exc:
                # An authoritative-only server REFUSEs names outside its zones: keep walking.
                last = f"; last error: {exc}"
            else:
                for rrset in response.answer:
                    if rrset.rdtype == dns.rdatatype.SOA and rrset.name == current:
                        return current
            if len(current.labels) <= 2:
                break  # a TLD was the last candidate: the root is never the zone to update
            current = current.parent()
        raise IssuanceError(
            f"{self._where}: zone not found for {name}: no SOA record at it or any parent "
            f"(asked {_show(self._resolvers)}); check the resolvers, or set 'zone'{last}",
            retryable=False,
        )

    def authoritative_servers(self, zone: dns.name.Name) -> dict[str, list[Server]]:
        """The zone's NS names, each with its addresses (A and AAAA) on ``authoritative_port``.

        Grouped by name because a name server counts as serving the value when any one of its
        addresses does (an IPv6 address a v4-only host cannot reach must not block the check;
        lego dials the NS name the same way).
        """
        response = self.resolve(zone, dns.rdatatype.NS)
        ns_names = sorted(
            {
                rdata.target
                for rrset in response.answer
                if rrset.rdtype == dns.rdatatype.NS and rrset.name == zone
                for rdata in rrset
            }
        )
        if not ns_names:
            raise IssuanceError(f"{self._where}: zone {zone} has no NS records", retryable=True)
        servers: dict[str, list[Server]] = {}
        for ns in ns_names:
            addresses: set[Server] = set()
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                answer = self.resolve(ns, rdtype)
                for rrset in answer.answer:
                    if rrset.rdtype == rdtype:
                        addresses.update(
                            (rdata.address, self._spec.authoritative_port) for rdata in rrset
                        )
            if not addresses:
                raise IssuanceError(
                    f"{self._where}: name server {ns} of {zone} has no address", retryable=True
                )
            servers[ns.to_text()] = sorted(addresses)
        return servers

    def txt_values(
        self, server: Server, name: dns.name.Name, timeout: float | None = None
    ) -> set[str] | None:
        """The TXT strings ``server`` holds at ``name`` (asked without recursion), or None when
        it did not answer."""
        try:
            response = self._ask(server, name, dns.rdatatype.TXT, recurse=False, timeout=timeout)
        except (dns.exception.DNSException, OSError):
            return None
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        return {
            b"".join(rdata.strings).decode("ascii", "replace")
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.TXT and rrset.name == name
            for rdata in rrset
        }

    def wait_visible(
        self, zone: dns.name.Name, name: dns.name.Name, value: str, deadline: float
    ) -> None:
        """Poll every authoritative server of ``zone`` until each serves ``value`` at ``name``.

        Ends at the earlier of ``deadline`` and the configured propagation timeout.
        """
        servers = self.authoritative_servers(zone)
        start = self._clock.monotonic()
        end = min(deadline, start + self._spec.propagation_timeout_seconds)
        waiting = dict(servers)
        while True:
            for ns, addresses in list(waiting.items()):
                if any(self._serves(address, name, value, end) for address in addresses):
                    del waiting[ns]
            if not waiting:
                return
            now = self._clock.monotonic()
            if now >= end:
                raise IssuanceError(
                    f"{self._where}: TXT {name} not visible after {now - start:.0f}s on "
                    f"{', '.join(f'{ns} ({_show(a)})' for ns, a in waiting.items())} (of "
                    f"{len(servers)} authoritative servers of {zone})",
                    retryable=True,
                )
            self._clock.sleep(min(self._spec.polling_interval_seconds, end - now))

    def _serves(self, server: Server, name: dns.name.Name, value: str, end: float) -> bool:
        # A silent server may not hold the loop past the end: each query gets what is left.
        left = max(0.05, min(self._spec.query_timeout_seconds, end - self._clock.monotonic()))
        return value in (self.txt_values(server, name, left) or set())


def _cname_of(response: dns.message.Message, name: dns.name.Name) -> dns.name.Name | None:
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == name:
            for rdata in rrset:
                target: dns.name.Name = rdata.target
                return target
    return None


def _show(servers: Sequence[Server]) -> str:
    return ", ".join(f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in servers)
