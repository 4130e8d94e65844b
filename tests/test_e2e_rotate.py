"""End to end: the ``rotatord`` CLI against a real Pebble, and a real nginx served the new pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from pebble import PebbleServer
from rotatord.core.text import serial_text
from rotatord.observe.audit import verify_chain
from tests.servers import Nginx, require_binary, served_serial, wait_for_serial

pytestmark = pytest.mark.pebble


def write_config(
    path: Path, pebble: PebbleServer, state: Path, services: str, extra_daemon: str = ""
) -> Path:
    path.write_text(
        f"""
[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
control_socket = "{state}/control.sock"
{extra_daemon}

[acme.pebble]
directory = "{pebble.directory_url}"
ca_bundle = "{pebble.ca_bundle}"
trust_roots_url = "{pebble.roots_url}"

[acme.pebble.budget]
orders = 1000000
certificates = 1000000

{services}
"""
    )
    return path


def web_service(pebble: PebbleServer, name: str = "web", reload: str = "") -> str:
    return f"""
[services.{name}]
domains = ["{name}.example.test", "www.{name}.example.test"]
account = "pebble"
[services.{name}.challenge]
listen = "127.0.0.1:{pebble.http_port}"
{reload}
"""


def rotatord(config: Path, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotatord", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        umask=umask,
        check=False,
    )


def audit_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def current_leaf(state: Path, service: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        (state / "services" / service / "current" / "cert.pem").read_bytes()
    )


def test_rotate_force_creates_new_version_and_audits(
    pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """`rotate web --force` flips current to a new 0600-key version that chains to Pebble's root."""
    state = short_tmp / "state"
    config = write_config(short_tmp / "r.toml", pebble_server, state, web_service(pebble_server))
    first = rotatord(config, "rotate", "web", "--force", umask=0o000)
    assert first.returncode == 0, first.stderr
    service_dir = state / "services" / "web"
    first_version = os.readlink(service_dir / "current")
    first_serial = current_leaf(state, "web").serial_number

    second = rotatord(config, "rotate", "web", "--force", umask=0o000)
    assert second.returncode == 0, second.stderr
    second_version = os.readlink(service_dir / "current")
    assert second_version != first_version
    assert second_version.startswith("versions/")
    assert (service_dir / first_version).is_dir(), "the previous version is kept for rollback"

    version_dir = service_dir / second_version
    assert (version_dir / "privkey.pem").stat().st_mode & 0o777 == 0o600
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        assert (version_dir / name).stat().st_mode & 0o777 == 0o644

    chain = x509.load_pem_x509_certificates((version_dir / "fullchain.pem").read_bytes())
    root = x509.load_pem_x509_certificate(pebble_server.root_pem())
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName("web.example.test"))
    )
    verifier.verify(chain[0], chain[1:])
    new_serial = chain[0].serial_number
    assert new_serial != first_serial

    records = audit_records(state / "audit.jsonl")
    finished = [r for r in records if r["event"] == "rotation_finished"]
    last = finished[-1]
    assert last["old_serial"] == serial_text(first_serial)
    assert last["new_serial"] == serial_text(new_serial)
    rid = last["rotation_id"]
    events = [r["event"] for r in records if r.get("rotation_id") == rid]
    assert events[0] == "rotation_started"
    assert events[-1] == "rotation_finished"
    for expected in ("key_generated", "certificate_issued", "certificate_activated"):
        assert expected in events
    assert verify_chain(state / "audit.jsonl").ok

    status = rotatord(config, "status", "--json")
    doc = json.loads(status.stdout)["services"][0]
    assert doc["serial"] == serial_text(new_serial)
    assert doc["last_result"] == "rotated"


def test_rotate_not_due_is_a_noop(pebble_server: PebbleServer, short_tmp: Path) -> None:
    """Without --force a fresh certificate is not rotated again (the check under the lock)."""
    state = short_tmp / "state"
    config = write_config(short_tmp / "r.toml", pebble_server, state, web_service(pebble_server))
    assert rotatord(config, "rotate", "--all").returncode == 0
    before = os.readlink(state / "services" / "web" / "current")
    again = rotatord(config, "rotate", "web")
    assert again.returncode == 0
    assert "not due" in again.stdout
    assert os.readlink(state / "services" / "web" / "current") == before


# ---------------------------------------------------------------------------------- nginx


@pytest.fixture
def nginx_binary() -> str:
    return require_binary("nginx")


@pytest.fixture
def nginx_factory(nginx_binary: str) -> Iterator[list[Nginx]]:
    started: list[Nginx] = []
    yield started
    for n in started:
        n.stop()


def test_nginx_serves_new_serial_after_rotate(
    pebble_server: PebbleServer, short_tmp: Path, nginx_binary: str, nginx_factory: list[Nginx]
) -> None:
    """After `rotatord rotate` with an nginx reload action, a TLS handshake gets the new serial."""
    state = short_tmp / "state"
    nginx = Nginx(
        nginx_binary, short_tmp / "nginx", {"web.example.test": state / "services/web/current"}
    )
    port = nginx.port
    reload = f"""
[[services.web.reload]]
command = {json.dumps(nginx.argv("-s", "reload"))}
timeout = 10
"""
    config = write_config(
        short_tmp / "r.toml", pebble_server, state, web_service(pebble_server, reload=reload)
    )
    # First certificate: nginx is not running yet, so its reload action is expected to fail;
    # there is no previous pair, so the new one stays current.
    rotatord(config, "rotate", "web", "--force")
    assert (state / "services" / "web" / "current" / "fullchain.pem").exists()
    nginx.start()
    nginx_factory.append(nginx)
    old = current_leaf(state, "web").serial_number
    assert served_serial(port, "web.example.test") == old

    result = rotatord(config, "rotate", "web", "--force")
    assert result.returncode == 0, result.stderr
    new = current_leaf(state, "web").serial_number
    assert new != old
    assert wait_for_serial(port, "web.example.test", new) == new
