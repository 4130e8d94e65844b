"""End to end: deployment that proves itself — outputs, coalesced reloads, live probe, rollback —
against real Pebble, nginx and haproxy on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509

from pebble import PebbleServer
from rotatord.core.text import serial_text
from tests.daemon_harness import Record, events, read_audit, run_cli, write_config
from tests.servers import (
    Haproxy,
    Nginx,
    Server,
    require_binary,
    served_der,
    served_serial,
    wait_for_serial,
)

pytestmark = pytest.mark.pebble
NGINX_HANDOVER_S = 0.5


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def web(pebble: PebbleServer, name: str = "web", extra: str = "", deadline: int = 3) -> str:
    return f"""
[services.{name}]
domains = ["{name}.example.test"]
account = "pebble"
probe_deadline = {deadline}
{extra}
[services.{name}.challenge]
listen = "127.0.0.1:{pebble.http_port}"
"""


def probe(port: int) -> str:
    return f"""
[[services.web.probe]]
address = "127.0.0.1:{port}"
"""


def leaf(state: Path, name: str = "web") -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        (state / "services" / name / "current" / "cert.pem").read_bytes()
    )


def start_nginx(
    tmp: Path, state: Path, servers: list[Server], names: tuple[str, ...] = ("web",)
) -> Nginx:
    nginx = Nginx(
        require_binary("nginx"),
        tmp / "nginx",
        {f"{n}.example.test": state / "services" / n / "current" for n in names},
    )
    nginx.start()
    servers.append(nginx)
    return nginx


def reload_target(nginx: Nginx, counter: Path | None = None, script: str = "") -> str:
    if counter is None and not script:
        argv = nginx.argv("-s", "reload")
    else:
        body = script or f'echo x >> "{counter}"; exec "$@"'
        argv = ["/bin/sh", "-c", body, "sh", *nginx.argv("-s", "reload")]
    return f"""
[reload_targets.nginx]
order = 10
[[reload_targets.nginx.actions]]
command = {json.dumps(argv)}
timeout = 2
"""


def first_issue(config: Path) -> None:
    """Issue the first certificate before the server that needs it exists (no reload yet)."""
    result = run_cli(config, "rotate", "--all", "--force")
    assert (result.returncode == 0) or "rolled_back" not in result.stderr, result.stderr


def setup_web(
    pebble: PebbleServer, tmp: Path, servers: list[Server], target: str = "", extra: str = ""
) -> tuple[Path, Path, Nginx]:
    state = tmp / "state"
    cfg = tmp / "r.toml"
    write_config(cfg, pebble, state, web(pebble))
    first_issue(cfg)
    nginx = start_nginx(tmp, state, servers)
    write_config(
        cfg,
        pebble,
        state,
        web(pebble, extra='reload_targets = ["nginx"]\n' + extra)
        + probe(nginx.port)
        + (target or reload_target(nginx)),
    )
    return cfg, state, nginx


def last_rotation(records: list[Record], name: str = "web") -> list[Record]:
    rid = events(records, "rotation_finished", name)[-1]["rotation_id"]
    return [r for r in records if r.get("rotation_id") == rid]


def test_nginx_probe_sees_new_serial(
    pebble_server: PebbleServer, short_tmp: Path, servers: list[Server]
) -> None:
    """rotate → nginx reloads → the probe sees the new certificate; the audit says so."""
    cfg, state, nginx = setup_web(pebble_server, short_tmp, servers)
    result = run_cli(cfg, "rotate", "web", "--force")
    assert result.returncode == 0, result.stderr
    new = leaf(state)
    assert served_serial(nginx.port, "web.example.test") == new.serial_number
    rec = last_rotation(read_audit(state / "audit.jsonl"))
    kinds = [r["event"] for r in rec]
    assert "reload_succeeded" in kinds
    probe_ok = [r for r in rec if r["event"] == "probe_succeeded"]
    assert (
        probe_ok
        and probe_ok[0]["served_fingerprint"]
        == new.fingerprint(
            __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()
        ).hex()
    )
    assert kinds[-1] == "rotation_finished"


def test_haproxy_serves_combined_pem(
    pebble_server: PebbleServer, short_tmp: Path, servers: list[Server]
) -> None:
    """A combined PEM output feeds haproxy; after rotate + USR2, haproxy serves the new cert."""
    state = short_tmp / "state"
    cfg = short_tmp / "r.toml"
    crt = short_tmp / "haproxy" / "web.pem"
    out = f"""
[[services.web.outputs]]
path = "{crt}"
format = "combined"
mode = "0600"
"""
    write_config(cfg, pebble_server, state, web(pebble_server) + out)
    first_issue(cfg)
    haproxy = Haproxy(require_binary("haproxy"), short_tmp / "haproxy", crt)
    haproxy.start()
    servers.append(haproxy)
    assert served_serial(haproxy.port, "web.example.test") == leaf(state).serial_number
    reload = f"""
[[services.web.reload]]
signal = "USR2"
pid_file = "{haproxy.pid_file}"
[[services.web.probe]]
address = "127.0.0.1:{haproxy.port}"
"""
    write_config(cfg, pebble_server, state, web(pebble_server, deadline=10) + out + reload)
    result = run_cli(cfg, "rotate", "web", "--force")
    assert result.returncode == 0, result.stderr + haproxy.log()
    assert served_serial(haproxy.port, "web.example.test") == leaf(state).serial_number
    assert crt.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ('if [ -e "$M" ]; then rm "$M"; exit 3; fi; exec "$@"', "exited with status 3"),
        ('if [ -e "$M" ]; then rm "$M"; exec sleep 30; fi; exec "$@"', "timed out"),
    ],
    ids=["exit-nonzero", "hangs"],
)
def test_failing_reload_rolls_back(
    pebble_server: PebbleServer, short_tmp: Path, servers: list[Server], script: str, why: str
) -> None:
    """A reload that fails or hangs once → rollback; nginx still serves the previous cert."""
    marker = short_tmp / "fail-once"
    body = script.replace("$M", str(marker))
    cfg, state, nginx = setup_web(pebble_server, short_tmp, servers)
    write_config(
        cfg,
        pebble_server,
        state,
        web(pebble_server, extra='reload_targets = ["nginx"]')
        + probe(nginx.port)
        + reload_target(nginx, script=body),
    )
    before = leaf(state).serial_number
    marker.write_text("x")
    result = run_cli(cfg, "rotate", "web", "--force")
    assert result.returncode == 1
    assert leaf(state).serial_number == before, "current points at the previous pair again"
    assert served_serial(nginx.port, "web.example.test") == before
    rec = last_rotation(read_audit(state / "audit.jsonl"))
    failed = [r for r in rec if r["event"] == "reload_failed"]
    assert failed and why in failed[0]["error"]
    rolled = [r for r in rec if r["event"] == "rolled_back"]
    assert rolled and rolled[0]["ok"] is True and rolled[0]["to_serial"] == serial_text(before)
    assert rec[-1]["outcome"] == "rolled_back"


def test_reload_that_does_nothing_is_caught_by_the_probe(
    pebble_server: PebbleServer, short_tmp: Path, servers: list[Server]
) -> None:
    """A reload that leaves the old cert in memory fails the probe and is rolled back."""
    cfg, state, nginx = setup_web(pebble_server, short_tmp, servers)
    noop = """
[reload_targets.nginx]
[[reload_targets.nginx.actions]]
command = ["/bin/true"]
"""
    write_config(
        cfg,
        pebble_server,
        state,
        web(pebble_server, extra='reload_targets = ["nginx"]') + probe(nginx.port) + noop,
    )
    before = leaf(state).serial_number
    result = run_cli(cfg, "rotate", "web", "--force")
    assert result.returncode == 1
    rec = last_rotation(read_audit(state / "audit.jsonl"))
    failed = [r for r in rec if r["event"] == "probe_failed"]
    assert failed and failed[0]["phase"] == "after_reload"
    assert failed[0]["served_fingerprint"] != failed[0]["expected_fingerprint"]
    assert next(r for r in rec if r["event"] == "rolled_back")["ok"] is True
    assert leaf(state).serial_number == before
    assert served_serial(nginx.port, "web.example.test") == before


def test_three_services_one_nginx_reload_once(
    pebble_server: PebbleServer, short_tmp: Path, servers: list[Server]
) -> None:
    """Three services sharing one nginx, rotated together, cause exactly one nginx reload."""
    state = short_tmp / "state"
    cfg = short_tmp / "r.toml"
    names = ("a", "b", "c")
    plain = "".join(web(pebble_server, n) for n in names)
    write_config(cfg, pebble_server, state, plain)
    first_issue(cfg)
    nginx = start_nginx(short_tmp, state, servers, names)
    counter = short_tmp / "reloads"
    services = "".join(web(pebble_server, n, extra='reload_targets = ["nginx"]') for n in names)
    probes = "".join(f'[[services.{n}.probe]]\naddress = "127.0.0.1:{nginx.port}"\n' for n in names)
    write_config(cfg, pebble_server, state, services + probes + reload_target(nginx, counter))
    result = run_cli(cfg, "rotate", "--all", "--force")
    assert result.returncode == 0, result.stderr
    assert counter.read_text().count("x") == 1
    for n in names:
        assert served_serial(nginx.port, f"{n}.example.test") == leaf(state, n).serial_number


def test_handshakes_never_fail_during_twenty_rotations(
    pebble_server: PebbleServer, short_tmp: Path, servers: list[Server]
) -> None:
    """A client handshaking in a loop through 20 rotations sees no failure, and each served
    certificate had already been activated, never going back to an older one."""
    cfg, state, nginx = setup_web(pebble_server, short_tmp, servers)
    seen: list[tuple[float, float, bytes | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            t0 = time.time()
            der = served_der(nginx.port, "web.example.test", timeout=5)
            seen.append((t0, time.time(), der))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for _ in range(20):
            result = run_cli(cfg, "rotate", "web", "--force")
            assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 100
    assert all(der is not None for _, _, der in seen), "a handshake failed"
    records = read_audit(state / "audit.jsonl")
    activated = {
        int(r["serial"], 16): datetime.fromisoformat(r["ts"]).timestamp()
        for r in events(records, "certificate_activated", "web")
    }
    finished = {
        int(r["new_serial"], 16): datetime.fromisoformat(r["ts"]).timestamp()
        for r in events(records, "rotation_finished", "web")
        if r.get("new_serial")
    }
    order = sorted(activated, key=activated.__getitem__)
    for t0, t1, der in seen:
        assert der is not None
        serial = x509.load_der_x509_certificate(der).serial_number
        assert serial in activated, "served a certificate rotatord never activated"
        assert activated[serial] <= t1, "served a certificate before it was current"
        rank = order.index(serial)
        if rank + 1 < len(order):
            # Superseded: acceptable only while the rotation that replaced it was still
            # reloading. nginx hands over gracefully: its old workers may accept for a few
            # milliseconds after new workers serve the new pair (measured up to ~10 ms here),
            # which no probe can observe; beyond that window it is a failure.
            successor = order[rank + 1]
            assert t0 <= finished[successor] + NGINX_HANDOVER_S, "served a replaced certificate"
    assert (
        wait_for_serial(nginx.port, "web.example.test", leaf(state).serial_number)
        == leaf(state).serial_number
    )
