"""Tests of ``pebble.ari_proxy``: the ARI (RFC 9773) test front in front of Pebble 2.4.0."""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from acme import challenges, messages
from acme.client import ClientNetwork, ClientV2
from acme.jws import JWS
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.b64 import b64decode
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from pebble import PebbleFactory, PebbleServer
from pebble.ari_proxy import AriProxy, ReplacesMode, cert_id
from rotatord.issuing.acme_net import NewOrderWithReplaces

T = TypeVar("T")

BAD_NONCE_RETRIES = 10
POLL_TIMEOUT = 20.0
#: RFC 9773 §4.1's example: keyIdentifier 69:88:5B:..:D4 and serial 00:87:65:43:21.
RFC_AKI = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
RFC_SERIAL = 0x87654321
RFC_CERT_ID = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
PROBLEM = "urn:ietf:params:acme:error:"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _session() -> requests.Session:
    """A session that ignores REQUESTS_CA_BUNDLE and proxy variables."""
    session = requests.Session()
    session.trust_env = False
    return session


def _cert(serial: int, aki: x509.AuthorityKeyIdentifier | None) -> x509.Certificate:
    """A self-signed throwaway certificate with the given serial and Authority Key Identifier."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cert-id.example.test")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if aki is not None:
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(key, hashes.SHA256())


def _der_length(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a DER length at ``pos``; return (length, position of the content)."""
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def _der_serial_octets(tbs: bytes) -> bytes:
    """The content octets of the serialNumber INTEGER, read straight from the TBSCertificate."""
    assert tbs[0] == 0x30  # SEQUENCE
    _, pos = _der_length(tbs, 1)
    if tbs[pos] == 0xA0:  # [0] EXPLICIT version
        length, content = _der_length(tbs, pos + 1)
        pos = content + length
    assert tbs[pos] == 0x02  # INTEGER
    length, content = _der_length(tbs, pos + 1)
    return tbs[content : content + length]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _poll(fetch: Callable[[], T], done: Callable[[T], bool]) -> T:
    """Call ``fetch`` until ``done`` holds (tight, bounded polling)."""
    deadline = time.monotonic() + POLL_TIMEOUT
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still not done: {value!r}"
        time.sleep(0.02)


class _RetryingNetwork(ClientNetwork):
    """acme retries badNonce once; Pebble rejects 5 % of good nonces, so retry harder."""

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for _ in range(BAD_NONCE_RETRIES):
            try:
                return super().post(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
        return super().post(*args, **kwargs)


@contextlib.contextmanager
def _account(directory_url: str, ca_bundle: Path) -> Iterator[tuple[ClientV2, ClientNetwork]]:
    """An acme client with a fresh registered account; its HTTP session is closed afterwards."""
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    # acme types verify_ssl as bool, but passes it on as requests' verify=, which takes a CA file.
    net = _RetryingNetwork(key, alg=ES256, verify_ssl=str(ca_bundle))  # type: ignore[arg-type]
    net.session.trust_env = False
    try:
        client = ClientV2(ClientV2.get_directory(directory_url, net), net)
        client.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
        yield client, net
    finally:
        net.session.close()


def _post_as_get(client: ClientV2, url: str) -> requests.Response:
    return client.net.post(url, None, new_nonce_url=client.directory["newNonce"])


def _authorization(client: ClientV2, url: str) -> messages.Authorization:
    authz: messages.Authorization = messages.Authorization.from_json(
        _post_as_get(client, url).json()
    )
    return authz


def _issue(
    client: ClientV2, tokens: dict[str, str], names: list[str], replaces: str | None = None
) -> tuple[x509.Certificate, str]:
    """Order (maybe with ``replaces``), answer HTTP-01, finalize, download: (leaf, order URL)."""
    net = client.net
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in names]
    resp = net.post(
        client.directory["newOrder"],
        NewOrderWithReplaces(identifiers=identifiers, replaces=replaces),
        new_nonce_url=client.directory["newNonce"],
    )
    order_url: str = resp.headers["Location"]
    order = messages.Order.from_json(resp.json())

    for authz_url in order.authorizations:
        authz = messages.Authorization.from_json(_post_as_get(client, authz_url).json())
        if authz.status == messages.STATUS_VALID:
            continue
        challb = next(c for c in authz.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = challb.response_and_validation(net.key)
        tokens[challb.chall.encode("token")] = validation
        client.answer_challenge(challb, response)
        authz = _poll(
            functools.partial(_authorization, client, authz_url),
            lambda a: a.status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING),
        )
        assert authz.status == messages.STATUS_VALID, authz.to_json()

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    net.post(
        order.finalize,
        messages.CertificateRequest(csr=csr),
        new_nonce_url=client.directory["newNonce"],
    )
    order = _poll(
        lambda: messages.Order.from_json(_post_as_get(client, order_url).json()),
        lambda o: o.status in (messages.STATUS_VALID, messages.STATUS_INVALID),
    )
    assert order.status == messages.STATUS_VALID and order.certificate, order.to_json()
    chain = _post_as_get(client, order.certificate).text.encode()
    return x509.load_pem_x509_certificates(chain)[0], order_url


def _signed_post(
    session: requests.Session,
    net: ClientNetwork,
    url: str,
    payload: dict[str, Any],
    nonce: str,
    ca_bundle: Path,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST a JWS (signed with the account of ``net``) by hand; (status, headers, JSON body)."""
    assert net.account is not None
    body = JWS.sign(
        json.dumps(payload).encode(),
        key=net.key,
        alg=ES256,
        nonce=b64decode(nonce),
        url=url,
        kid=net.account.uri,
    ).json_dumps()
    with session.post(
        url,
        data=body,
        headers={"Content-Type": "application/jose+json"},
        verify=str(ca_bundle),
        timeout=10,
    ) as resp:
        doc = resp.json()
        assert isinstance(doc, dict)
        return resp.status_code, dict(resp.headers), doc


def _fresh_nonce(session: requests.Session, url: str, ca_bundle: Path) -> str:
    with session.head(url, verify=str(ca_bundle), timeout=10) as resp:
        nonce: str = resp.headers["Replay-Nonce"]
        return nonce


def _listening_addresses(port: int) -> set[str]:
    """Addresses (hex, as in /proc/net/tcp*) with a TCP socket listening on ``port``."""
    found = set()
    for proto in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                found.add(address)
    return found


class _Http01Server(ThreadingHTTPServer):
    """Answers ``/.well-known/acme-challenge/<token>`` from ``tokens`` on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.tokens: dict[str, str] = {}
        super().__init__(("127.0.0.1", port), _Http01Handler)


class _Http01Handler(BaseHTTPRequestHandler):
    server: _Http01Server

    def do_GET(self) -> None:
        token = self.path.removeprefix("/.well-known/acme-challenge/")
        answer = self.server.tokens.get(token)
        body = (answer or "unknown token").encode()
        self.send_response(200 if answer is not None else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def proxy(pebble_server: PebbleServer) -> Iterator[AriProxy]:
    """A fresh AriProxy in front of the session's Pebble."""
    with AriProxy(pebble_server) as ari:
        yield ari


@pytest.fixture
def http01_tokens(pebble_server: PebbleServer) -> Iterator[dict[str, str]]:
    """``{token: key authorization}`` served where Pebble's VA dials for HTTP-01."""
    server = _Http01Server(pebble_server.http_port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.tokens
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------------------------
# cert_id
# --------------------------------------------------------------------------------------------


def test_cert_id_matches_rfc9773_example() -> None:
    """cert_id() of a certificate with RFC 9773's example AKI and serial gives the RFC's certID."""
    aki = x509.AuthorityKeyIdentifier(RFC_AKI, None, None)

    assert cert_id(_cert(RFC_SERIAL, aki)) == RFC_CERT_ID


@pytest.mark.parametrize(
    ("serial", "serial_octets"),
    [(1, b"\x01"), (0x7F, b"\x7f"), (0x80, b"\x00\x80"), (0xFF00, b"\x00\xff\x00")],
)
def test_cert_id_serial_is_minimal_twos_complement(serial: int, serial_octets: bytes) -> None:
    """The serial part is the minimal two's-complement DER content, with 0x00 before a high bit."""
    aki = x509.AuthorityKeyIdentifier(b"\x01\x02\x03", None, None)

    assert cert_id(_cert(serial, aki)) == f"AQID.{_b64url(serial_octets)}"


def test_cert_id_requires_authority_key_identifier() -> None:
    """A certificate without an Authority Key Identifier has no certID."""
    with pytest.raises(ValueError, match="Authority Key Identifier"):
        cert_id(_cert(5, None))


# --------------------------------------------------------------------------------------------
# directory and issuance through the proxy
# --------------------------------------------------------------------------------------------


@pytest.mark.pebble
def test_directory_adds_renewal_info(pebble_server: PebbleServer, proxy: AriProxy) -> None:
    """The proxied directory has Pebble's keys (as proxy URLs) plus renewalInfo."""
    with _session() as session:
        with session.get(pebble_server.directory_url, verify=str(pebble_server.ca_bundle)) as r:
            pebble_dir = r.json()
        with session.get(proxy.directory_url, verify=str(proxy.ca_bundle)) as r:
            assert r.status_code == 200
            proxy_dir = r.json()

    base = f"https://127.0.0.1:{proxy.port}"
    assert proxy.directory_url == f"{base}/dir"
    assert proxy.ca_bundle == pebble_server.ca_bundle
    assert proxy_dir["renewalInfo"] == f"{base}/renewal-info"
    assert set(proxy_dir) == set(pebble_dir) | {"renewalInfo"}
    assert proxy_dir["meta"] == pebble_dir["meta"]
    for key in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
        assert proxy_dir[key].startswith(base + "/")
    assert "renewalInfo" not in pebble_dir


@pytest.mark.pebble
def test_issuance_through_proxy_records_replaces(
    proxy: AriProxy, http01_tokens: dict[str, str]
) -> None:
    """Two full acme issuances work through the proxy and replaces_seen has None, then the ID."""
    with _account(proxy.directory_url, proxy.ca_bundle) as (client, _net):
        first, order_url = _issue(client, http01_tokens, ["ari-proxy.example.test"])
        old_id = cert_id(first)
        second, _ = _issue(client, http01_tokens, ["ari-proxy.example.test"], replaces=old_id)

    assert order_url.startswith(f"https://127.0.0.1:{proxy.port}/")  # Host preserved
    # Every newOrder POST is recorded, so a badNonce retry repeats a value: compare runs.
    assert [value for value, _run in itertools.groupby(proxy.replaces_seen)] == [None, old_id]
    assert cert_id(second) != old_id
    san = second.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ari-proxy.example.test"]
    # Independent certID: issuer's keyIdentifier from the AKI bytes, serial from the raw TBS DER.
    aki = first.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    expected = (
        f"{_b64url(aki.key_identifier)}.{_b64url(_der_serial_octets(first.tbs_certificate_bytes))}"
    )
    assert old_id == expected


# --------------------------------------------------------------------------------------------
# renewalInfo
# --------------------------------------------------------------------------------------------


@pytest.mark.pebble
def test_set_window_is_served_with_retry_after(proxy: AriProxy) -> None:
    """A window set by the test comes back as RFC 9773 JSON with Retry-After and explanationURL."""
    start = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    end = start + timedelta(hours=6)
    proxy.set_window(
        RFC_CERT_ID, start, end, explanation_url="https://example.test/why", retry_after=3600
    )
    proxy.set_window("AQID.AQ", start, end)

    with _session() as session:
        with session.get(
            f"{proxy.renewal_info_url}/{RFC_CERT_ID}", verify=str(proxy.ca_bundle)
        ) as resp:
            status, headers, doc = resp.status_code, resp.headers, resp.json()
        with session.get(f"{proxy.renewal_info_url}/AQID.AQ", verify=str(proxy.ca_bundle)) as r:
            default_retry, plain_doc = r.headers["Retry-After"], r.json()

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Retry-After"] == "3600"
    assert doc == {
        "suggestedWindow": {"start": "2030-01-02T03:04:05Z", "end": "2030-01-02T09:04:05Z"},
        "explanationURL": "https://example.test/why",
    }
    assert default_retry == "21600"
    assert "explanationURL" not in plain_doc
    assert proxy.ari_queries == [RFC_CERT_ID, "AQID.AQ"]


@pytest.mark.pebble
def test_default_window_answers_ids_without_a_window(proxy: AriProxy) -> None:
    """set_default_window() answers ids with no explicit window; its None means 404."""
    start = datetime(2031, 5, 6, tzinfo=UTC)
    proxy.set_default_window(
        lambda cid: (start, start + timedelta(days=1)) if cid == "AA.AQ" else None
    )

    with _session() as session:
        with session.get(f"{proxy.renewal_info_url}/AA.AQ", verify=str(proxy.ca_bundle)) as r:
            found_status, found = r.status_code, r.json()
        with session.get(f"{proxy.renewal_info_url}/AA.Ag", verify=str(proxy.ca_bundle)) as r:
            missing_status = r.status_code
        proxy.set_default_window(None)
        with session.get(f"{proxy.renewal_info_url}/AA.AQ", verify=str(proxy.ca_bundle)) as r:
            removed_status = r.status_code

    assert found_status == 200
    assert found["suggestedWindow"] == {
        "start": "2031-05-06T00:00:00Z",
        "end": "2031-05-07T00:00:00Z",
    }
    assert (missing_status, removed_status) == (404, 404)
    assert proxy.ari_queries == ["AA.AQ", "AA.Ag", "AA.AQ"]


@pytest.mark.pebble
def test_unknown_cert_id_is_404_problem(proxy: AriProxy) -> None:
    """An id without a window gets 404 with an ACME problem document, and is still recorded."""
    with (
        _session() as session,
        session.get(f"{proxy.renewal_info_url}/{RFC_CERT_ID}", verify=str(proxy.ca_bundle)) as r,
    ):
        status, content_type, problem = r.status_code, r.headers["Content-Type"], r.json()

    assert status == 404
    assert content_type == "application/problem+json"
    assert problem["type"] == PROBLEM + "malformed"
    assert RFC_CERT_ID in problem["detail"]
    assert proxy.ari_queries == [RFC_CERT_ID]


def test_set_window_rejects_naive_datetimes(pebble_server: PebbleServer) -> None:
    """set_window() needs timezone-aware datetimes (RFC 3339 output is UTC)."""
    ari = AriProxy(pebble_server)  # never started: set_window works on the object alone
    naive = datetime(2030, 1, 1)  # noqa: DTZ001 - the point of the test

    with pytest.raises(ValueError, match="timezone-aware"):
        ari.set_window(RFC_CERT_ID, naive, naive)


# --------------------------------------------------------------------------------------------
# replaces modes
# --------------------------------------------------------------------------------------------


@pytest.mark.pebble
@pytest.mark.parametrize(
    ("mode", "status", "problem"),
    [("already_replaced", 409, "alreadyReplaced"), ("reject", 400, "malformed")],
)
def test_replaces_mode_refuses_only_orders_with_replaces(
    pebble_factory: PebbleFactory, mode: ReplacesMode, status: int, problem: str
) -> None:
    """The mode refuses an order with replaces (usable fresh nonce) and passes one without."""
    pebble = pebble_factory(nonce_reject=0)  # so the nonce check below is deterministic
    identifiers = [{"type": "dns", "value": "modes.example.test"}]
    with (
        AriProxy(pebble) as proxy,
        _account(proxy.directory_url, proxy.ca_bundle) as (client, net),
        _session() as session,
    ):
        proxy.replaces_mode = mode
        base = f"https://127.0.0.1:{proxy.port}/"
        new_order = client.directory["newOrder"]
        nonce = _fresh_nonce(session, client.directory["newNonce"], proxy.ca_bundle)

        refused_status, refused_headers, refused = _signed_post(
            session,
            net,
            new_order,
            {"identifiers": identifiers, "replaces": RFC_CERT_ID},
            nonce,
            proxy.ca_bundle,
        )
        # The nonce the refusal carries must be one Pebble accepts.
        passed_status, passed_headers, _ = _signed_post(
            session,
            net,
            new_order,
            {"identifiers": identifiers},
            refused_headers["Replay-Nonce"],
            proxy.ca_bundle,
        )

    assert refused_status == status
    assert refused_headers["Content-Type"] == "application/problem+json"
    assert refused["type"] == PROBLEM + problem
    assert "replace" in refused["detail"]
    assert passed_status == 201
    assert passed_headers["Location"].startswith(base)
    assert proxy.replaces_seen == [RFC_CERT_ID, None]


def test_replaces_mode_must_be_known(pebble_server: PebbleServer) -> None:
    """An unknown replaces_mode is refused instead of silently accepting orders."""
    ari = AriProxy(pebble_server)

    with pytest.raises(ValueError, match="replaces_mode"):
        ari.replaces_mode = "ignore"  # type: ignore[assignment]
    assert ari.replaces_mode == "accept"


# --------------------------------------------------------------------------------------------
# lifecycle
# --------------------------------------------------------------------------------------------


@pytest.mark.pebble
def test_stop_closes_idle_connections_and_listens_on_loopback_only(
    pebble_server: PebbleServer,
) -> None:
    """The proxy listens on 127.0.0.1 only; stop() returns promptly despite a kept-alive client."""
    proxy = AriProxy(pebble_server)
    proxy.start()
    port = proxy.port
    threads_before = threading.active_count()
    try:
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 in /proc byte order
        with _session() as session:
            with session.get(proxy.directory_url, verify=str(proxy.ca_bundle)) as resp:
                assert resp.status_code == 200
            # The session keeps the connection (and a handler thread) open while we stop.
            started = time.monotonic()
            proxy.stop()
            assert time.monotonic() - started < 5
    finally:
        proxy.stop()

    assert not proxy.running
    assert _listening_addresses(port) == set()
    assert threading.active_count() < threads_before
    proxy.stop()  # idempotent
