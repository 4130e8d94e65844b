"""End to end: the daemon sees its certificate revoked in the CA's CRL (served by the test,
signed with Pebble's intermediate key, since Pebble 2.4 serves no CRL) and rotates at once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pebble import PebbleServer
from tests.daemon_harness import DaemonProcess, events, service, wait_for, write_config
from tests.observe_harness import until

pytestmark = pytest.mark.pebble


class CrlServer:
    """Serves ``body`` at /crl on 127.0.0.1 and counts the fetches."""

    def __init__(self) -> None:
        self.body = b""
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def crl(issuer: x509.Certificate, key: Any, serials: list[int]) -> bytes:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(seconds=5))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def current_cert(state: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((state / "services/web/current/cert.pem").read_bytes())


def test_certificate_revoked_in_the_crl_is_replaced_within_one_interval(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """An empty CRL and a forged one (wrong key) change nothing; once the CA's CRL lists the
    serial, the next check (1 s interval) audits it, rotates to a new key and destroys the
    revoked one."""
    intermediate = x509.load_pem_x509_certificate(pebble_server.intermediate_pem())
    ca_key = serialization.load_pem_private_key(pebble_server.intermediate_key_pem(), None)
    server = CrlServer()
    server.body = crl(intermediate, ca_key, [])
    try:
        state = short_tmp / "state"
        config = write_config(
            short_tmp / "r.toml",
            pebble_server,
            state,
            service("web", pebble_server.http_port)
            + f'\n[revocation]\ninterval = "1s"\ncrl_urls = ["http://127.0.0.1:{server.port}/crl"]\n',
        )
        daemon = DaemonProcess(config, short_tmp)
        daemons.append(daemon)
        daemon.start()
        audit = state / "audit.jsonl"
        wait_for(audit, lambda rs: bool(events(rs, "rotation_finished", "web")), 60, "issued")
        old = current_cert(state)
        seen = server.fetches
        until(lambda: server.fetches >= seen + 2, 10, "two checks of the empty CRL")
        forged = ec.generate_private_key(ec.SECP256R1())
        server.body = crl(intermediate, forged, [old.serial_number])
        seen = server.fetches
        until(lambda: server.fetches >= seen + 2, 10, "two checks of a forged CRL")
        assert events(wait_for(audit, lambda rs: True, 1, "-"), "revocation_detected") == []

        server.body = crl(intermediate, ca_key, [old.serial_number])
        listed = time.monotonic()
        records = wait_for(
            audit,
            lambda rs: (
                bool(events(rs, "key_destroyed", "web"))
                and any(
                    r.get("trigger") == "revoked" and r.get("outcome") == "rotated"
                    for r in events(rs, "rotation_finished", "web")
                )
            ),
            30,
            "the rotation after revocation and the old key destroyed",
            daemon,
        )
        assert time.monotonic() - listed < 1 + 15, "within one interval (+ the rotation)"
        detected = events(records, "revocation_detected", "web")
        assert len(detected) == 1
        assert int(detected[0]["serial"], 16) == old.serial_number
        assert detected[0]["reason"] == "key_compromise"
        new = current_cert(state)
        assert new.serial_number != old.serial_number
        assert new.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != old.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ), "a fresh key"
        destroyed = events(records, "key_destroyed", "web")
        assert [d["why"] for d in destroyed] == ["revoked"]
        assert not (state / "services/web/versions" / detected[0]["version"]).exists()
        # The new certificate is not listed: no second rotation in the next checks.
        seen = server.fetches
        until(lambda: server.fetches >= seen + 2, 10, "two more checks")
        records = wait_for(audit, lambda rs: True, 1, "-")
        assert len(events(records, "revocation_detected", "web")) == 1
        assert daemon.stop() == 0
    finally:
        server.stop()
