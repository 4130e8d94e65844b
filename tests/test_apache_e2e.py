"""The README's Apache example, run: rotatord renews a certificate from real Pebble, runs
Apache's graceful restart as the service's reload action, and its probe sees Apache (Debian's
apache2 on a free loopback port) serve the new certificate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from pebble import PebbleServer
from tests.apache import Apache
from tests.daemon_harness import run_cli, write_config
from tests.servers import require_binary, served_serial

pytestmark = pytest.mark.pebble


@pytest.fixture
def apache_servers() -> Iterator[list[Apache]]:
    started: list[Apache] = []
    yield started
    for server in started:
        server.stop()


def leaf(state: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        (state / "services" / "web" / "current" / "cert.pem").read_bytes()
    )


def test_apache_graceful_reload_serves_the_new_certificate(
    pebble_server: PebbleServer, short_tmp: Path, apache_servers: list[Apache]
) -> None:
    """After `rotate web --force`, the `apache2 -k graceful` reload action ran and Apache serves
    the new certificate (the probe checked it; the test checks again); exit 0."""
    state = short_tmp / "state"
    config = short_tmp / "r.toml"
    service = f"""
[services.web]
domains = ["web.example.test"]
account = "pebble"
probe_deadline = 10
[services.web.challenge]
listen = "127.0.0.1:{pebble_server.http_port}"
"""
    write_config(config, pebble_server, state, service)
    first = run_cli(config, "rotate", "web")  # Apache cannot start before a certificate exists
    assert first.returncode == 0, first.stderr
    apache = Apache(
        require_binary("apache2"), short_tmp / "apache", "web.example.test",
        state / "services" / "web" / "current",
    )  # fmt: skip
    apache.start()
    apache_servers.append(apache)
    old = leaf(state).serial_number
    assert served_serial(apache.port, "web.example.test") == old
    example = f"""
[[services.web.reload]]
command = {json.dumps(apache.reload_argv())}
timeout = 10
[[services.web.probe]]
address = "127.0.0.1:{apache.port}"
sni = "web.example.test"
"""
    write_config(config, pebble_server, state, service + example)
    result = run_cli(config, "rotate", "web", "--force")
    assert result.returncode == 0, result.stderr + apache.log()
    new = leaf(state).serial_number
    assert new != old
    assert served_serial(apache.port, "web.example.test") == new
