"""Tests of the ``pebble`` package: start, inspect, restart and stop a private Pebble."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cryptography import x509

from pebble import PebbleFactory, PebbleServer, PebbleUnavailable, pebble_available

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ipaddress.ip_address("127.0.0.1")
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def _get_json(url: str, ca_bundle: Path) -> dict[str, object]:
    """GET ``url`` trusting only ``ca_bundle`` (ignoring REQUESTS_CA_BUNDLE and proxies)."""
    with requests.Session() as session:
        session.trust_env = False
        with session.get(url, verify=str(ca_bundle), timeout=10) as resp:
            resp.raise_for_status()
            data = resp.json()
    assert isinstance(data, dict)
    return data


def _proc_address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode an address from /proc/net/{tcp,udp}[6] (32-bit words in host byte order)."""
    raw = b"".join(
        struct.pack("=I", int(hex_addr[i : i + 8], 16)) for i in range(0, len(hex_addr), 8)
    )
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return ipaddress.ip_address(socket.inet_ntop(family, raw))


def _bound_sockets(pid: int) -> set[tuple[str, str, int]]:
    """(protocol, local address, port) of every listening TCP and bound UDP socket of ``pid``."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = str(fd.readlink())
        except FileNotFoundError:  # fd closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found: set[tuple[str, str, int]] = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode not in inodes or (proto.startswith("tcp") and state != "0A"):  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            address = _proc_address(hex_addr)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            found.add((proto, str(address), int(hex_port, 16)))
    return found


def _environ(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (entry.decode().partition("=") for entry in entries if entry)
    return {key: value for key, _, value in pairs}


@pytest.mark.pebble
def test_directory_lists_acme_endpoints(pebble_server: PebbleServer) -> None:
    """The directory answers through the listener CA bundle with the RFC 8555 endpoints."""
    directory = _get_json(pebble_server.directory_url, pebble_server.ca_bundle)

    assert {"newNonce", "newAccount", "newOrder"} <= directory.keys()
    assert pebble_server.directory_url.startswith("https://127.0.0.1:")
    for key in ("newNonce", "newAccount", "newOrder"):
        assert str(directory[key]).startswith(pebble_server.directory_url.removesuffix("/dir"))


@pytest.mark.pebble
def test_every_listener_is_on_loopback(pebble_server: PebbleServer) -> None:
    """Config, challtestsrv argv and the sockets actually bound all use 127.0.0.1 only."""
    config = json.loads(pebble_server.config_path.read_text())["pebble"]
    assert config["listenAddress"].startswith("127.0.0.1:")
    assert config["managementListenAddress"].startswith("127.0.0.1:")
    assert config["httpPort"] == pebble_server.http_port
    assert config["tlsPort"] == pebble_server.tls_port

    argv = pebble_server.challtestsrv_argv
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags == {
        "-defaultIPv4": "127.0.0.1",
        "-defaultIPv6": "",
        "-dns01": pebble_server.dns_address,
        "-management": pebble_server.challtestsrv_management_url.removeprefix("http://"),
        "-http01": "",
        "-https01": "",
        "-tlsalpn01": "",
    }
    assert pebble_server.dns_address.startswith("127.0.0.1:")

    challtestsrv_pid, pebble_pid = pebble_server.pids
    pebble_sockets = _bound_sockets(pebble_pid)
    challtestsrv_sockets = _bound_sockets(challtestsrv_pid)
    for _proto, address, _port in pebble_sockets | challtestsrv_sockets:
        assert ipaddress.ip_address(address) == LOOPBACK
    listen_port = int(config["listenAddress"].rpartition(":")[2])
    management_port = int(config["managementListenAddress"].rpartition(":")[2])
    pebble_tcp_ports = {port for proto, _, port in pebble_sockets if proto == "tcp"}
    assert pebble_tcp_ports >= {listen_port, management_port}
    dns_port = int(pebble_server.dns_address.rpartition(":")[2])
    assert ("tcp", "127.0.0.1", dns_port) in challtestsrv_sockets
    assert ("udp", "127.0.0.1", dns_port) in challtestsrv_sockets


@pytest.mark.pebble
def test_defaults_keep_nonce_rejection_and_disable_authz_reuse(pebble_server: PebbleServer) -> None:
    """By default Pebble keeps its 5 % nonce rejection, skips VA sleeps and reuses no authz."""
    environ = _environ(pebble_server.pebble_pid)

    assert "PEBBLE_WFE_NONCEREJECT" not in environ
    assert environ["PEBBLE_VA_NOSLEEP"] == "1"
    assert environ["PEBBLE_AUTHZREUSE"] == "0"
    config = json.loads(pebble_server.config_path.read_text())["pebble"]
    assert "certificateValidityPeriod" not in config
    assert config["externalAccountBindingRequired"] is False


@pytest.mark.pebble
def test_options_reach_config_and_environment(pebble_factory: PebbleFactory) -> None:
    """Validity, EAB keys, nonce rejection, authz reuse and a fixed HTTP-01 port are applied."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    server = pebble_factory(
        validity_seconds=3600,
        nonce_reject=0,
        authz_reuse=100,
        eab_keys={"kid-1": EAB_KEY},
        http_port=http_port,
    )

    config = json.loads(server.config_path.read_text())["pebble"]
    assert config["certificateValidityPeriod"] == 3600
    assert config["externalAccountBindingRequired"] is True
    assert config["externalAccountMACKeys"] == {"kid-1": EAB_KEY}
    assert config["httpPort"] == server.http_port == http_port
    environ = _environ(server.pebble_pid)
    assert environ["PEBBLE_WFE_NONCEREJECT"] == "0"
    assert environ["PEBBLE_AUTHZREUSE"] == "100"
    directory = _get_json(server.directory_url, server.ca_bundle)
    meta = directory["meta"]
    assert isinstance(meta, dict)
    assert meta["externalAccountRequired"] is True


@pytest.mark.pebble
def test_cert_status_finds_root_by_openssl_style_serial(pebble_server: PebbleServer) -> None:
    """cert_status() normalises an upper-case, colon-separated serial and returns Pebble's JSON."""
    root = x509.load_pem_x509_certificate(pebble_server.root_pem())
    raw = root.serial_number.to_bytes((root.serial_number.bit_length() + 7) // 8, "big")

    status = pebble_server.cert_status(raw.hex(":").upper())

    assert status["Status"] == "Valid"
    assert int(status["Serial"], 16) == root.serial_number
    assert x509.load_pem_x509_certificate(status["Certificate"].encode()) == root
    intermediate = x509.load_pem_x509_certificate(pebble_server.intermediate_pem())
    assert intermediate.issuer == root.subject
    with pytest.raises(requests.HTTPError):
        pebble_server.cert_status("abcdef")


@pytest.mark.pebble
def test_stop_leaves_no_child_process(pebble_factory: PebbleFactory) -> None:
    """stop() terminates and reaps both processes it started and removes its temporary workdir."""
    server = pebble_factory()
    pids = server.pids
    workdir = server.workdir
    assert len(pids) == 2

    server.stop()
    server.stop()  # idempotent

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert server.pids == ()
    assert not workdir.exists()


@pytest.mark.pebble
def test_restart_gives_new_root_on_same_ports(pebble_factory: PebbleFactory) -> None:
    """restart() replaces only Pebble, keeps every address and yields a new root from /roots/0."""
    server = pebble_factory()
    root_before = x509.load_pem_x509_certificate(server.root_pem())
    challtestsrv_pid, old_pebble_pid = server.pids
    addresses = (server.directory_url, server.management_url, server.http_port, server.dns_address)

    server.restart()

    root_after = x509.load_pem_x509_certificate(server.root_pem())
    assert root_after.public_key() != root_before.public_key()
    assert root_after.serial_number != root_before.serial_number
    assert (server.directory_url, server.management_url, server.http_port,
            server.dns_address) == addresses  # fmt: skip
    assert server.pids == (challtestsrv_pid, server.pebble_pid)
    assert server.pebble_pid != old_pebble_pid
    with pytest.raises(ProcessLookupError):
        os.kill(old_pebble_pid, 0)
    assert "newOrder" in _get_json(server.directory_url, server.ca_bundle)


@pytest.mark.pebble
def test_cli_run_passes_addresses_and_exit_code(short_tmp: Path) -> None:
    """``python -m pebble run -- CMD`` gives CMD the Pebble variables and exits with its status."""
    child = (
        "import os, json, requests\n"
        "s = requests.Session(); s.trust_env = False\n"
        "r = s.get(os.environ['PEBBLE_DIRECTORY_URL'], verify=os.environ['PEBBLE_CA_BUNDLE'])\n"
        "keys = {k: v for k, v in os.environ.items() if k.startswith('PEBBLE_')}\n"
        "open('out.json', 'w').write(json.dumps({'status': r.status_code, 'env': keys}))\n"
        "r.close(); s.close()\n"
        "raise SystemExit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    result = subprocess.run(
        [sys.executable, "-m", "pebble", "run", "--validity", "60", "--", sys.executable, "-c",
         child],
        cwd=short_tmp, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 3, result.stderr.decode()
    out = json.loads((short_tmp / "out.json").read_text())
    assert out["status"] == 200
    assert set(out["env"]) >= {
        "PEBBLE_DIRECTORY_URL",
        "PEBBLE_CA_BUNDLE",
        "PEBBLE_HTTP_PORT",
        "PEBBLE_MANAGEMENT_URL",
    }
    assert not Path(out["env"]["PEBBLE_CA_BUNDLE"]).exists()  # workdir gone after the run


def test_missing_binary_raises_unavailable(
    monkeypatch: pytest.MonkeyPatch, short_tmp: Path
) -> None:
    """Without the binaries on PATH, start() raises PebbleUnavailable and creates no workdir."""
    monkeypatch.setenv("PATH", str(short_tmp))
    server = PebbleServer()

    assert not pebble_available()
    with pytest.raises(PebbleUnavailable, match="apt-get install -y pebble"):
        server.start()
    assert not server.running
    with pytest.raises(RuntimeError, match="start"):
        _ = server.directory_url
    with pytest.raises(RuntimeError, match="workdir"):
        _ = server.workdir


@pytest.mark.parametrize(("ci", "expected_rc", "expected_text"), [
    ("true", 1, "CI=true, so Pebble tests must run"),
    ("", 0, "1 skipped"),
])  # fmt: skip
def test_pebble_marker_fails_on_ci_and_skips_elsewhere(
    short_tmp: Path, ci: str, expected_rc: int, expected_text: str
) -> None:
    """A pebble-marked test fails when Pebble is missing and CI=true, and skips otherwise."""
    env = {**os.environ, "PATH": str(short_tmp), "CI": ci}

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_pebble_runner.py::test_directory_lists_acme_endpoints"],
        cwd=REPO_ROOT, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip

    output = result.stdout.decode()
    assert result.returncode == expected_rc, output
    assert expected_text in output
