"""TLS-ALPN-01 answered through an existing TLS server: nginx owns the port and routes by ALPN.

nginx's stream module reads the ClientHello with ``ssl_preread`` and sends connections offering
``acme-tls/1`` to rotatord's responder on another loopback port, everything else to the site's
own TLS server. Pebble dials nginx; the certificate is issued and ordinary clients keep getting
the site's certificate throughout. Needs nginx with ``libnginx-mod-stream`` (fails under
CI=true when missing) and Pebble (marker).
"""

from __future__ import annotations

import datetime
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pebble import PebbleServer
from rotatord.core.model import TlsAlpn01
from rotatord.issuing.challenges.solver import Solvers
from rotatord.issuing.challenges.tlsalpn01 import AlpnResponder
from tests.servers import free_port, require_binary, served_der
from tests.test_tlsalpn01 import client_context, handshake
from tests.test_tlsalpn_pebble import counting, issue, issuer_for, sans
from tests.unavailable import unavailable

pytestmark = pytest.mark.pebble

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def site_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed stand-in for the site's real certificate (CN "site.example.test")."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "site.pem", directory / "site.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def nginx_conf(prefix: Path, front: int, responder: int, site: int) -> str:
    """The documented routing block (notes/README), with test paths and ports."""
    cert, key = site_certificate(prefix)
    return f"""
load_module {STREAM_MODULE};
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
stream {{
    map $ssl_preread_alpn_protocols $tls_backend {{
        ~\\bacme-tls/1\\b  127.0.0.1:{responder};
        default          127.0.0.1:{site};
    }}
    server {{
        listen 127.0.0.1:{front};
        ssl_preread on;
        proxy_pass $tls_backend;
    }}
    server {{
        listen 127.0.0.1:{site} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        return "site\\n";
    }}
}}
"""


@pytest.fixture
def pebble_and_nginx(short_tmp: Path) -> Iterator[tuple[PebbleServer, int]]:
    """A Pebble whose tlsPort is nginx's front port, and the port of rotatord's responder."""
    binary = require_binary("nginx")
    if not STREAM_MODULE.exists():
        unavailable(
            f"nginx's stream module is not installed ({STREAM_MODULE}: libnginx-mod-stream)"
        )
    front, responder, site = free_port(), free_port(), free_port()
    conf = short_tmp / "nginx.conf"
    conf.write_text(nginx_conf(short_tmp, front, responder, site))
    with (short_tmp / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(
            [binary, "-p", str(short_tmp), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        ends = time.monotonic() + 10
        while served_der(front, "site.example.test") is None:  # bounded readiness polling
            assert proc.poll() is None, (short_tmp / "stderr.log").read_text()
            assert time.monotonic() < ends, "nginx did not start listening"
            time.sleep(0.02)
        with PebbleServer(tls_port=front) as pebble:
            yield pebble, responder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_tls_alpn_01_through_nginx_ssl_preread_leaves_the_site_served(
    pebble_and_nginx: tuple[PebbleServer, int], short_tmp: Path
) -> None:
    """Pebble validates through nginx (acme-tls/1 routed to rotatord's responder behind it),
    the certificate is issued, and a client without acme-tls/1 still gets the site's own
    certificate from the same port."""
    pebble, responder_port = pebble_and_nginx
    spec = TlsAlpn01("127.0.0.1", responder_port)
    solvers = Solvers()
    try:
        with counting(solvers.tlsalpn01_pool, spec) as (server,):
            assert isinstance(server, AlpnResponder)
            leaf = issue(issuer_for(pebble, short_tmp, solvers), ["proxied.example.test"], spec)
            assert server.handshakes >= 1, "Pebble reached the responder through nginx"
            der = served_der(pebble.tls_port, "proxied.example.test")
            assert der is not None
            subject = x509.load_der_x509_certificate(der).subject
            assert subject.rfc4514_string() == "CN=site.example.test"
        assert sans(leaf) == (["proxied.example.test"], [])
    finally:
        solvers.close()


def test_nginx_routes_by_alpn_only(pebble_and_nginx: tuple[PebbleServer, int]) -> None:
    """With no responder behind it, a caller offering acme-tls/1 gets no certificate at all
    (nginx's upstream is down), while one offering h2 gets the site's: the routing is by ALPN,
    so the issuance above went through nginx."""
    pebble, responder_port = pebble_and_nginx
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", responder_port)) != 0
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(pebble.tls_port, "proxied.example.test")
    cert, _ = handshake(pebble.tls_port, "proxied.example.test", client_context(("h2",)))
    assert cert.subject.rfc4514_string() == "CN=site.example.test"
