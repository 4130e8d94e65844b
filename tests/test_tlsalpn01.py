"""The TLS-ALPN-01 responder with real TLS clients on loopback: what it serves, what it refuses,
and its bounds (connections, deadlines, hello size); plus the ClientHello reader and the pool.

Waits are on real events (a handshake, a refused connect) or the responder's own deadlines,
never a sleep.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from structlog.testing import capture_logs

from rotatord.core.model import TlsAlpn01
from rotatord.issuing.challenges import tlshello
from rotatord.issuing.challenges.solver import ChallengeTask
from rotatord.issuing.challenges.tlsalpn01 import (
    ID_PE_ACME_IDENTIFIER,
    TLSALPN01_LIMITS,
    AlpnResponder,
    TlsAlpn01Solver,
    TlsAlpnPool,
)
from rotatord.listener import Limits

KEYAUTH = "tok3n.thumbPrint"


@pytest.fixture
def responder() -> Iterator[AlpnResponder]:
    server = AlpnResponder("127.0.0.1", 0)
    server.tokens.update({"alpn.example.test": KEYAUTH, "127.0.0.1": KEYAUTH + "4"})
    yield server
    server.close()


def client_context(
    alpn: tuple[str, ...] = ("acme-tls/1",), *, tls12: bool = False
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a validator checks the extension, not a chain
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def handshake(
    port: int, sni: str | None, ctx: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> tuple[x509.Certificate, str | None]:
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        (ctx or client_context()).wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def refusal(port: int, sni: str | None, ctx: ssl.SSLContext | None = None) -> str:
    with pytest.raises(ssl.SSLError) as info:
        handshake(port, sni, ctx)
    return str(info.value).upper().replace(" ", "_")


def eventually(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll ``condition`` under a deadline: the client returns from its handshake once it has
    sent Finished, a moment before the responder has read it."""
    ends = time.monotonic() + within
    while not condition():
        assert time.monotonic() < ends, f"not within {within}s: {what}"
        time.sleep(0.005)


def acme_identifier(cert: x509.Certificate) -> tuple[bool, bytes]:
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    return ext.critical, ext.value.value


def test_serves_the_validation_certificate_for_a_dns_name(responder: AlpnResponder) -> None:
    """ALPN acme-tls/1 and a registered SNI get a certificate for exactly that name with the
    critical acmeIdentifier extension holding SHA-256 of the key authorization, as DER."""
    cert, alpn = handshake(responder.address[1], "ALPN.example.test")
    assert alpn == "acme-tls/1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alpn.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == []
    digest = hashlib.sha256(KEYAUTH.encode()).digest()
    assert acme_identifier(cert) == (True, b"\x04\x20" + digest)
    eventually(lambda: responder.handshakes == 1, "the handshake counted")


def test_an_ip_identifier_is_asked_for_by_its_reverse_name_and_gets_an_ip_san(
    responder: AlpnResponder,
) -> None:
    """RFC 8738 §6: SNI 1.0.0.127.in-addr.arpa (with or without the root dot) selects the
    certificate for 127.0.0.1, whose only SAN is that iPAddress."""
    for sni in ("1.0.0.127.in-addr.arpa", "1.0.0.127.in-addr.arpa."):
        cert, _ = handshake(responder.address[1], sni)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert san.get_values_for_type(x509.DNSName) == []
        digest = hashlib.sha256((KEYAUTH + "4").encode()).digest()
        assert acme_identifier(cert)[1] == b"\x04\x20" + digest


def test_tls_1_2_validators_are_answered_too(responder: AlpnResponder) -> None:
    """RFC 8737 allows TLS 1.2: a 1.2-only client completes the two-round-trip handshake."""
    cert, alpn = handshake(responder.address[1], "alpn.example.test", client_context(tls12=True))
    assert alpn == "acme-tls/1"
    assert acme_identifier(cert)[0] is True


@pytest.mark.parametrize("alpn", [(), ("h2", "http/1.1")])
def test_a_caller_without_acme_tls_1_gets_an_alert_and_no_certificate(
    responder: AlpnResponder, alpn: tuple[str, ...]
) -> None:
    """No ALPN, or only other protocols: the no_application_protocol alert before any
    certificate, and the responder counts a refusal, not a handshake."""
    port = responder.address[1]
    assert "NO_APPLICATION_PROTOCOL" in refusal(port, "alpn.example.test", client_context(alpn))
    assert (responder.refused, responder.handshakes) == (1, 0)
    handshake(port, "alpn.example.test")  # the next validator is still served
    eventually(lambda: responder.handshakes == 1, "the next handshake counted")


@pytest.mark.parametrize("sni", ["other.example.test", "2.0.0.127.in-addr.arpa", None])
def test_an_unknown_or_missing_server_name_gets_unrecognized_name(
    responder: AlpnResponder, sni: str | None
) -> None:
    """A name nobody is validating (or no SNI at all) gets unrecognized_name, never a
    certificate for another name."""
    assert "UNRECOGNIZED_NAME" in refusal(responder.address[1], sni)
    assert (responder.refused, responder.handshakes) == (1, 0)


def test_a_name_unregistered_mid_life_is_no_longer_served(responder: AlpnResponder) -> None:
    """Once cleanup removed a name, asking for it is refused (no cached certificate leaks)."""
    handshake(responder.address[1], "alpn.example.test")
    with responder.tokens_lock:
        del responder.tokens["alpn.example.test"]
    assert "UNRECOGNIZED_NAME" in refusal(responder.address[1], "alpn.example.test")


def test_garbage_and_oversized_hellos_are_refused_and_the_loop_keeps_serving(
    responder: AlpnResponder,
) -> None:
    """An HTTP request on the TLS port and a hello record claiming more than MAX_HELLO get a
    decode_error alert and a closed connection; a real validator is served next."""
    port = responder.address[1]
    huge = bytes([22, 3, 1]) + (tlshello.MAX_HELLO + 1).to_bytes(2, "big")
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", huge):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
            assert sock.recv(64) == bytes([21, 3, 3, 0, 2, 2, 50])
            assert sock.recv(64) == b""
    assert responder.refused == 2
    handshake(port, "alpn.example.test")


def test_at_the_cap_idle_connections_are_evicted_for_a_real_validator() -> None:
    """With the cap held by connections that never sent a byte, a validator still completes
    its handshake (the oldest idle one is dropped for it)."""
    server = AlpnResponder("127.0.0.1", 0, Limits(4, 10.0, 10.0, tlshello.MAX_HELLO))
    server.tokens["alpn.example.test"] = KEYAUTH
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(4)]
    try:
        _, alpn = handshake(server.address[1], "alpn.example.test")
        assert alpn == "acme-tls/1"
        assert server.evicted >= 1
        assert server.open_connections <= 4
    finally:
        for sock in idle:
            sock.close()
        server.close()


def test_slow_senders_are_cut_at_the_deadline_and_hold_no_slot_past_it() -> None:
    """Connections that trickle a partial hello are not evictable; they are closed at the
    handshake deadline however they send, and the validator waiting behind them is then
    served."""
    deadline = 0.5
    server = AlpnResponder("127.0.0.1", 0, Limits(2, deadline, deadline, tlshello.MAX_HELLO))
    server.tokens["alpn.example.test"] = KEYAUTH
    slow: list[socket.socket] = []
    try:
        with capture_logs() as logs:
            slow += [socket.create_connection(server.address, timeout=5) for _ in range(2)]
            for sock in slow:
                sock.sendall(bytes([22, 3, 1, 0, 200, 1]))  # a record that never completes
            start = time.monotonic()
            handshake(server.address[1], "alpn.example.test")
        assert time.monotonic() - start >= deadline * 0.8, "the validator waited for a slot"
        assert server.timed_out == 2
        caps = [e for e in logs if e["event"] == "listener_connection_cap_reached"]
        assert len(caps) == 1, "the cap is logged once, not per connection"
        assert caps[0]["max_connections"] == 2
        for sock in slow:
            assert sock.recv(64) == b"", "closed by the responder"
    finally:
        for sock in slow:
            sock.close()
        server.close()


def test_the_default_limits_match_the_http_01_listener() -> None:
    """256 connections and 10 s per handshake, hello bounded to one TLS record."""
    assert (TLSALPN01_LIMITS.max_connections, TLSALPN01_LIMITS.request_deadline) == (256, 10.0)
    assert TLSALPN01_LIMITS.max_request == tlshello.MAX_HELLO == 16 * 1024


def task(identifier: str, token: str) -> ChallengeTask:
    return ChallengeTask(identifier, "dns", False, "tls-alpn-01", token, f"{token}.thumb")


def test_the_pool_shares_one_port_between_rotations_and_closes_it_after_the_last() -> None:
    """Two solvers on one address share one responder; one's cleanup leaves the other's name
    served; after the last cleanup the port is closed (linger 0)."""
    pool = TlsAlpnPool(linger=0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = TlsAlpn01("127.0.0.1", port)
    a, b = TlsAlpn01Solver(pool, spec), TlsAlpn01Solver(pool, spec)
    ta, tb = task("a.example.test", "ta"), task("b.example.test", "tb")
    try:
        a.present(ta)
        b.present(tb)
        first = pool.server_for(spec)
        handshake(port, "a.example.test")
        a.cleanup(ta)
        assert pool.server_for(spec) is first
        assert "UNRECOGNIZED_NAME" in refusal(port, "a.example.test")
        cert, _ = handshake(port, "b.example.test")
        digest = hashlib.sha256(b"tb.thumb").digest()
        assert acme_identifier(cert)[1] == b"\x04\x20" + digest
        b.cleanup(tb)
        b.cleanup(tb)  # idempotent
        assert pool.server_for(spec) is None
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        pool.close()


def test_the_hello_reader_finds_sni_and_alpn_across_records() -> None:
    """A ClientHello split over two records parses the same as in one; incomplete input asks
    for more; a non-handshake record is an error."""
    ctx = client_context(("acme-tls/1", "h2"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="Split.Example.TEST")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    record = outgoing.read()
    body = record[5:]
    half = len(body) // 2
    split = (
        record[:3] + half.to_bytes(2, "big") + body[:half]
        + record[:3] + (len(body) - half).to_bytes(2, "big") + body[half:]
    )  # fmt: skip
    expected = tlshello.ClientHello("split.example.test", (b"acme-tls/1", b"h2"))
    assert tlshello.parse(record) == expected
    assert tlshello.parse(split) == expected
    assert tlshello.parse(split[: len(split) - 1]) is None
    with pytest.raises(tlshello.HelloError):
        tlshello.parse(b"\x17\x03\x03\x00\x05hello")
