"""DNS-01 end to end: Pebble validates what rotatord wrote into a real BIND 9 with TSIG.

BIND (``tests/bind_server.py``) serves ``example.test`` and ``acme.example.net`` on a free
loopback port; Pebble is started with ``-dnsserver`` pointing at it, so its validation reads the
TXT records over real DNS. Services are parsed from TOML by the real config code. Marked
``pebble``; a missing BIND skips locally and fails under CI=true.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.name
import pytest
from cryptography import x509
from structlog.testing import capture_logs

from pebble import PebbleServer
from rotatord.clock import FakeClock, SystemClock
from rotatord.config import parse_config
from rotatord.core import keys
from rotatord.core.dns01 import DnsLookup
from rotatord.core.errors import IssuanceError
from rotatord.core.model import AcmeSpec, KeyType, ServiceSpec
from rotatord.issuing.acme_issuer import AcmeIssuer
from rotatord.issuing.challenges.dns_lookup import DnsLookups
from rotatord.issuing.challenges.solver import Solvers
from tests.bind_server import Bind, bind_available
from tests.daemon_harness import run_cli, write_config
from tests.unavailable import unavailable

pytestmark = pytest.mark.pebble

HOOK = Path(__file__).resolve().parent / "dns01_hook.sh"
OTHER = "someone-else-keeps-this"
ZONES = {
    "example.test": (
        "ns1 IN A 127.0.0.1\n"
        f'_acme-challenge IN TXT "{OTHER}"\n'
        "_acme-challenge.sub IN CNAME sub.acme.example.net.\n"
        # Name servers for the propagation tests: ns2 only at an address nobody answers on,
        # ns3 at that one and at BIND's.
        "ns2 IN AAAA ::1\nns3 IN A 127.0.0.1\nns3 IN AAAA ::1\n"
    ),
    "acme.example.net": "",
    "two.test": "@ IN NS ns1.example.test.\n@ IN NS ns2.example.test.\n",
    "three.test": "@ IN NS ns3.example.test.\n",
}


@pytest.fixture(scope="module")
def bind() -> Iterator[Bind]:
    if not bind_available():
        unavailable("BIND 9 is not installed ('apt-get install -y bind9 bind9-dnsutils')")
    with Bind(ZONES) as server:
        yield server


@pytest.fixture(scope="module")
def pebble(bind: Bind) -> Iterator[PebbleServer]:
    with PebbleServer(dns_server=bind.address) as server:
        yield server


@pytest.fixture
def issuer(pebble: PebbleServer, tmp_path: Path) -> Iterator[AcmeIssuer]:
    spec = AcmeSpec(
        "pebble", pebble.directory_url, ca_bundle=pebble.ca_bundle, trust_roots_url=pebble.roots_url
    )
    solvers = Solvers(clock=SystemClock())
    issuer = AcmeIssuer(spec, tmp_path / "account", SystemClock(), solvers)
    yield issuer
    issuer.close()
    solvers.close()


def service(bind: Bind, tmp_path: Path, domains: list[str], dns: dict[str, Any]) -> ServiceSpec:
    """Parse a one-service config whose challenge is dns-01 through ``[dns.p]``."""
    lookup = {
        "resolvers": [bind.address],
        "authoritative_port": bind.port,
        "polling_interval": 0.05,
        "propagation_timeout": 10,
    }
    data = {
        "acme": {"a": {"directory": "https://127.0.0.1:1/dir"}},
        "dns": {"p": {**lookup, **dns}},
        "services": {"s": {"domains": domains, "challenge": {"type": "dns-01", "provider": "p"}}},
    }
    return parse_config(data, tmp_path / "rotatord.toml").services["s"]


def issue(issuer: AcmeIssuer, spec: ServiceSpec) -> x509.Certificate:
    csr = keys.make_csr(keys.generate_key(KeyType.ECDSA_P256), list(spec.domains))
    issued = issuer.issue(csr, list(spec.domains), spec.challenge)
    return x509.load_pem_x509_certificate(issued.cert_pem)


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(ext.value.get_values_for_type(x509.DNSName))


def rfc2136(bind: Bind) -> dict[str, Any]:
    return {"type": "rfc2136", "server": bind.address, "tsig_key_file": str(bind.key_file)}


def test_wildcard_and_apex_over_rfc2136_with_tsig(
    bind: Bind, issuer: AcmeIssuer, tmp_path: Path
) -> None:
    """A certificate for ``*.example.test`` and ``example.test`` is issued over DNS-01: two
    values were added at one name beside a third party's (none replaced), Pebble read them from
    BIND, and afterwards only the third party's value is left; no log line holds the secret."""
    spec = service(bind, tmp_path, ["*.example.test", "example.test"], rfc2136(bind))
    with capture_logs() as logs:
        cert = issue(issuer, spec)
    assert sans(cert) == {"*.example.test", "example.test"}
    assert bind.txt("_acme-challenge.example.test") == {OTHER}
    presented = [e for e in logs if e["event"] == "dns01_presented"]
    assert [e["zone"] for e in presented] == ["example.test.", "example.test."]
    secret = bind.key_file.read_text().split('secret "')[1].split('"')[0]
    assert secret not in repr(logs)


def test_cname_delegation_updates_the_target_zone(
    bind: Bind, issuer: AcmeIssuer, tmp_path: Path
) -> None:
    """``_acme-challenge.sub.example.test CNAME sub.acme.example.net``: the TXT values go into
    the ``acme.example.net`` zone, Pebble follows the CNAME and issues, and the target name is
    empty afterwards."""
    spec = service(bind, tmp_path, ["*.sub.example.test", "sub.example.test"], rfc2136(bind))
    with capture_logs() as logs:
        cert = issue(issuer, spec)
    assert sans(cert) == {"*.sub.example.test", "sub.example.test"}
    presented = [e for e in logs if e["event"] == "dns01_presented"]
    assert {(e["name"], e["zone"]) for e in presented} == {
        ("sub.acme.example.net.", "acme.example.net.")
    }
    assert bind.txt("sub.acme.example.net") == set()


def test_exec_hook_with_lego_contract(
    bind: Bind, issuer: AcmeIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exec hook (a shell script calling nsupdate) is called as lego calls it —
    ``present FQDN. VALUE`` then ``cleanup FQDN. VALUE``, with only the configured environment —
    the wildcard+apex certificate is issued through it, and the records are gone afterwards."""
    log = tmp_path / "hook.log"
    hook = {
        "type": "exec",
        "command": [str(HOOK)],
        "env": {
            "TSIG_KEY_FILE": str(bind.key_file),
            "DNS_PORT": str(bind.port),
            "HOOK_LOG": str(log),
        },
        "timeout": 20,
    }
    spec = service(bind, tmp_path, ["*.example.test", "example.test"], hook)
    monkeypatch.setenv("ROTATORD_TEST_LEAK", "must-not-reach-the-hook")
    cert = issue(issuer, spec)
    assert sans(cert) == {"*.example.test", "example.test"}
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [c[:2] for c in calls] == [["present", "_acme-challenge.example.test."]] * 2 + [
        ["cleanup", "_acme-challenge.example.test."]
    ] * 2
    assert {c[2] for c in calls[:2]} == {c[2] for c in calls[2:]}
    assert len({c[2] for c in calls}) == 2  # one value per authorization
    env = log.with_name("hook.log.env").read_text()
    assert f"EXEC_PATH={HOOK}\n" in env and "HOOK_LOG=" in env
    assert "ROTATORD_TEST_LEAK" not in env and "EXEC_MODE" not in env
    assert bind.txt("_acme-challenge.example.test") == {OTHER}


def test_records_are_removed_when_propagation_times_out(
    bind: Bind, issuer: AcmeIssuer, tmp_path: Path
) -> None:
    """When the authoritative servers never show the value (the check asks a socket that never
    answers), the order fails with a retryable error naming the provider section, and both TXT
    values that were written are removed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        dns = {**rfc2136(bind), "authoritative_port": port, "propagation_timeout": 0.3}
        spec = service(bind, tmp_path, ["*.example.test", "example.test"], dns)
        with pytest.raises(IssuanceError) as caught:
            issue(issuer, spec)
    assert caught.value.retryable
    assert "dns.p" in str(caught.value) and "not visible" in str(caught.value)
    assert bind.txt("_acme-challenge.example.test") == {OTHER}


def test_wrong_tsig_key_is_refused_without_leaking_it(
    bind: Bind, issuer: AcmeIssuer, tmp_path: Path
) -> None:
    """A TSIG key BIND does not know fails the order, not retryable, with a message naming the
    config file and section and never the secret; nothing is written."""
    bad = tmp_path / "bad.key"
    secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
    bad.write_text(f'key "intruder" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    bad.chmod(0o600)
    spec = service(bind, tmp_path, ["example.test"], {**rfc2136(bind), "tsig_key_file": str(bad)})
    with capture_logs() as logs, pytest.raises(IssuanceError) as caught:
        issue(issuer, spec)
    assert not caught.value.retryable
    assert f"{tmp_path / 'rotatord.toml'}: dns.p" in str(caught.value)
    assert secret not in str(caught.value) and secret not in repr(logs)
    assert bind.txt("_acme-challenge.example.test") == {OTHER}


def test_zone_not_found_names_the_config_path(
    bind: Bind, issuer: AcmeIssuer, tmp_path: Path
) -> None:
    """A name no zone of the resolvers holds fails with "zone not found" and the config path,
    not retryable (another try cannot find it either)."""
    spec = service(bind, tmp_path, ["www.elsewhere.test"], rfc2136(bind))
    with pytest.raises(IssuanceError) as caught:
        issue(issuer, spec)
    assert not caught.value.retryable
    assert "zone not found for _acme-challenge.www.elsewhere.test." in str(caught.value)
    assert f"{tmp_path / 'rotatord.toml'}: dns.p" in str(caught.value)


def test_cli_rotate_from_a_toml_config(bind: Bind, pebble: PebbleServer, short_tmp: Path) -> None:
    """The whole path from a TOML file: ``check-config`` accepts the dns-01 service, ``rotate``
    activates a wildcard+apex certificate, and BIND holds no value of ours afterwards."""
    state = short_tmp / "state"
    dns = f"""
[dns.bind]
type = "rfc2136"
server = "{bind.address}"
tsig_key_file = "{bind.key_file}"
resolvers = ["{bind.address}"]
authoritative_port = {bind.port}
polling_interval = 0.05

[services.wild]
domains = ["*.example.test", "example.test"]
account = "pebble"

[services.wild.challenge]
type = "dns-01"
provider = "bind"
"""
    config = write_config(short_tmp / "r.toml", pebble, state, dns)
    checked = run_cli(config, "check-config")
    assert checked.returncode == 0, checked.stderr
    result = run_cli(config, "rotate", "wild")
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate(
        (state / "services" / "wild" / "current" / "cert.pem").read_bytes()
    )
    assert sans(cert) == {"*.example.test", "example.test"}
    assert bind.txt("_acme-challenge.example.test") == {OTHER}


def lookups(bind: Bind) -> DnsLookups:
    spec = DnsLookup(
        resolvers=(("127.0.0.1", bind.port),),
        authoritative_port=bind.port,
        propagation_timeout_seconds=1.0,
        polling_interval_seconds=0.25,
        query_timeout_seconds=0.2,
    )
    return DnsLookups(spec, FakeClock(), "test: dns.p")


def nsupdate(bind: Bind, line: str) -> None:
    script = f"server 127.0.0.1 {bind.port}\n{line}\nsend\n"
    subprocess.run(
        ["nsupdate", "-k", str(bind.key_file)], input=script.encode(), check=True, timeout=10
    )


def test_every_name_server_must_serve_the_value(bind: Bind) -> None:
    """``two.test`` has two NS names; the value is on ns1 (BIND) but ns2's only address never
    answers: the check gives up at its timeout naming ns2 alone, never answering the CA."""
    name = dns.name.from_text("_acme-challenge.two.test.")
    nsupdate(bind, f'update add {name} 60 TXT "v2"')
    try:
        with pytest.raises(IssuanceError) as caught:
            lookups(bind).wait_visible(dns.name.from_text("two.test."), name, "v2", 1e9)
    finally:
        nsupdate(bind, f"update delete {name} TXT")
    message = str(caught.value)
    assert "ns2.example.test." in message and "ns1.example.test." not in message
    assert "(of 2 authoritative servers of two.test.)" in message and caught.value.retryable


def test_one_answering_address_of_a_name_server_is_enough(bind: Bind) -> None:
    """ns3 has an address that answers (BIND) and one that does not: the value counts as
    visible on ns3 once the first serves it."""
    name = dns.name.from_text("_acme-challenge.three.test.")
    nsupdate(bind, f'update add {name} 60 TXT "v3"')
    try:
        lookups(bind).wait_visible(dns.name.from_text("three.test."), name, "v3", 1e9)
    finally:
        nsupdate(bind, f"update delete {name} TXT")
    assert bind.txt("_acme-challenge.three.test") == set()
