"""TLS-ALPN-01 (RFC 8737) and IP identifiers (RFC 8738) issued by a real Pebble.

Pebble validates TLS-ALPN-01 by dialling ``tlsPort`` on the identifier's address (a DNS name
through challtestsrv, which answers 127.0.0.1) with SNI = the name, or for an address its
reverse-DNS name, and HTTP-01 on ``httpPort`` of the address. Both ports are chosen free on
127.0.0.1 and ::1, so IPv4 and IPv6 listeners can use the same numbers. Marked ``pebble``: these
fail (never skip) when CI=true and Pebble is missing.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from pebble import PebbleServer
from rotatord.clock import SystemClock
from rotatord.core import keys
from rotatord.core.errors import IssuanceError
from rotatord.core.model import AcmeSpec, Challenge, Http01Standalone, KeyType, TlsAlpn01
from rotatord.issuing.acme_issuer import AcmeIssuer
from rotatord.issuing.challenges.http01 import StandalonePool
from rotatord.issuing.challenges.solver import Solvers
from rotatord.issuing.challenges.tlsalpn01 import AlpnResponder, TlsAlpnPool
from tests.test_e2e_rotate import current_leaf, rotatord, write_config

pytestmark = pytest.mark.pebble


def dual_stack_port() -> int:
    """A TCP port free on both 127.0.0.1 and ::1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET) as v4:
            v4.bind(("127.0.0.1", 0))
            port: int = v4.getsockname()[1]
            with socket.socket(socket.AF_INET6) as v6:
                try:
                    v6.bind(("::1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free on both loopback addresses")


@pytest.fixture(scope="module")
def pebble() -> Iterator[PebbleServer]:
    with PebbleServer(http_port=dual_stack_port(), tls_port=dual_stack_port()) as server:
        yield server


@pytest.fixture
def solvers() -> Iterator[Solvers]:
    s = Solvers(StandalonePool(linger=0), TlsAlpnPool(linger=0))
    yield s
    s.close()


def issuer_for(pebble: PebbleServer, tmp: Path, solvers: Solvers) -> AcmeIssuer:
    spec = AcmeSpec(
        "pebble",
        pebble.directory_url,
        ca_bundle=pebble.ca_bundle,
        trust_roots_url=pebble.roots_url,
        order_deadline_seconds=30,
    )
    return AcmeIssuer(spec, tmp / "account", SystemClock(), solvers)


def issue(issuer: AcmeIssuer, names: list[str], challenge: Challenge) -> x509.Certificate:
    key = keys.generate_key(KeyType.ECDSA_P256)
    issued = issuer.issue(keys.make_csr(key, names), names, challenge)
    chain = keys.split_pem_chain(issued.cert_pem + issued.chain_pem)
    keys.verify_bundle(key, chain, names, SystemClock().now())  # what the rotation checks next
    return chain[0]


@contextlib.contextmanager
def counting(pool: TlsAlpnPool, spec: TlsAlpn01) -> Iterator[list[AlpnResponder]]:
    """Keep the responder up across the order (the pool lingers 0 s) to read its counters."""
    with pool.serving(spec, {}):
        server = pool.server_for(spec)
        assert isinstance(server, AlpnResponder)
        yield [server]
        assert server.tokens == {}, "every registered name is gone after the order"


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


def test_tls_alpn_01_issues_for_a_dns_name(
    pebble: PebbleServer, short_tmp: Path, solvers: Solvers
) -> None:
    """A DNS name validated by Pebble over TLS-ALPN-01: Pebble completed handshakes with our
    responder (it validates three times) and the certificate names exactly that name."""
    spec = TlsAlpn01("127.0.0.1", pebble.tls_port)
    issuer = issuer_for(pebble, short_tmp, solvers)
    with counting(solvers.tlsalpn01_pool, spec) as (server,):
        leaf = issue(issuer, ["alpn.example.test"], spec)
        assert server.handshakes >= 1
    assert sans(leaf) == (["alpn.example.test"], [])


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_tls_alpn_01_issues_for_an_ip_address(
    pebble: PebbleServer, short_tmp: Path, solvers: Solvers, address: str
) -> None:
    """An IP identifier (IPv4 and IPv6 loopback) validated over TLS-ALPN-01 with the
    reverse-DNS SNI: the certificate carries only the iPAddress SAN."""
    spec = TlsAlpn01(address, pebble.tls_port)
    issuer = issuer_for(pebble, short_tmp, solvers)
    with counting(solvers.tlsalpn01_pool, spec) as (server,):
        leaf = issue(issuer, [address], spec)
        assert server.handshakes >= 1
    assert sans(leaf) == ([], [address])


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_http_01_issues_for_an_ip_address(
    pebble: PebbleServer, short_tmp: Path, solvers: Solvers, address: str
) -> None:
    """An IP identifier validated over HTTP-01 on that address: only the iPAddress SAN."""
    leaf = issue(
        issuer_for(pebble, short_tmp, solvers),
        [address],
        Http01Standalone(address, pebble.http_port),
    )
    assert sans(leaf) == ([], [address])


def test_tls_alpn_01_for_ipv6_fails_when_the_responder_listens_on_ipv4_only(
    pebble: PebbleServer, short_tmp: Path, solvers: Solvers
) -> None:
    """Pebble dials [::1] for the ::1 identifier: a responder on 127.0.0.1 is never reached,
    the authorization is invalid, and the error carries Pebble's reason."""
    issuer = issuer_for(pebble, short_tmp, solvers)
    spec = TlsAlpn01("127.0.0.1", pebble.tls_port)
    with counting(solvers.tlsalpn01_pool, spec) as (server,), pytest.raises(IssuanceError) as info:
        issue(issuer, ["::1"], spec)
    assert server.handshakes == 0
    assert f"Failed to connect to [::1]:{pebble.tls_port}" in str(info.value)
    assert info.value.problem_type == "urn:ietf:params:acme:error:unauthorized"


def test_cli_rotates_an_ipv6_service_over_tls_alpn_01(
    pebble: PebbleServer, short_tmp: Path
) -> None:
    """Config to store for an IP service: `rotate --force` installs a cert for ::1, a second
    plain `rotate` finds it current (names compare equal after normalisation), and status shows
    the address."""
    state = short_tmp / "state"
    service = f"""
[services.ip6]
domains = ["0:0::1"]
account = "pebble"
[services.ip6.challenge]
type = "tls-alpn-01"
listen = "[::1]:{pebble.tls_port}"
"""
    config = write_config(short_tmp / "r.toml", pebble, state, service)
    first = rotatord(config, "rotate", "ip6", "--force")
    assert first.returncode == 0, first.stderr
    assert sans(current_leaf(state, "ip6")) == ([], ["::1"])
    version = (state / "services" / "ip6" / "current").readlink()

    again = rotatord(config, "rotate", "ip6")
    assert again.returncode == 0, again.stderr
    assert (state / "services" / "ip6" / "current").readlink() == version, "not re-issued"

    status = json.loads(rotatord(config, "status", "--json").stdout)["services"][0]
    assert "::1" in json.dumps(status)
