"""Tests for rotatord.config: TOML → frozen model, every problem reported with its dotted path."""

from __future__ import annotations

import copy
import grp
import os
import pwd
import signal
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rotatord.config import load_config, parse_config
from rotatord.core.errors import ConfigError, Problem
from rotatord.core.model import (
    CommandReload,
    Config,
    Http01Standalone,
    Http01Webroot,
    KeyType,
    OutputFormat,
    OutputSpec,
    ProbeSpec,
    ReloadTarget,
    SignalReload,
    SystemdReload,
    TlsAlpn01,
)

REPO: Final = Path(__file__).resolve().parent.parent
EXAMPLE: Final = REPO / "config" / "rotatord.example.toml"
MY_USER: Final = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP: Final = grp.getgrgid(os.getgid()).gr_name
NO_SUCH_NAME: Final = "rotatord-test-no-such-name"

Key = str | int
KeyPath = tuple[Key, ...]


class _Delete:
    """Marker: remove the key instead of setting it."""


DELETE: Final = _Delete()


def base_config() -> dict[str, Any]:
    """A small valid config that exercises every section; needs no files on disk."""
    return {
        "daemon": {"state_dir": "state", "control_socket": "/tmp/rotatord-test.sock"},
        "acme": {"ca": {"directory": "https://127.0.0.1:14000/dir"}},
        "reload_targets": {"nginx": {"actions": [{"command": ["/bin/true"]}]}},
        "services": {
            "web": {
                "domains": ["web.example.test"],
                "challenge": {"listen": "127.0.0.1:5002"},
                "reload": [{"command": ["/bin/true"]}],
                "reload_targets": ["nginx"],
                "outputs": [{"path": "/srv/out/web.pem", "format": "fullchain"}],
                "probe": [{"address": "127.0.0.1:8443"}],
            },
        },
    }


def edited(keys: KeyPath, value: object, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``data`` (default: base_config()) with ``keys`` set to ``value``."""
    result = copy.deepcopy(base_config() if data is None else data)
    node: Any = result
    for key in keys[:-1]:
        node = node[key]
    if isinstance(value, _Delete):
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return result


def source_in(directory: Path) -> Path:
    return directory / "rotatord.toml"


def problems_of(data: Mapping[str, Any], directory: Path) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source_in(directory))
    return info.value.problems


def paths_of(problems: tuple[Problem, ...]) -> list[str]:
    return [p.path for p in problems]


# --------------------------------------------------------------------------- happy paths


def test_example_config_parses() -> None:
    """The shipped example config is valid and describes the two demo services on Pebble."""
    config = load_config(EXAMPLE)
    assert config.daemon.state_dir == REPO / "demo-state" / "state"
    assert config.daemon.audit_log == REPO / "demo-state" / "audit.jsonl"
    assert config.daemon.control_socket == Path("/tmp/rotatord-demo.sock")
    assert config.acme["pebble"].directory == "https://127.0.0.1:14000/dir"
    assert set(config.services) == {"web", "api"}
    web, api = config.services["web"], config.services["api"]
    assert web.domains == ("web.example.test", "www.example.test")
    assert web.challenge == Http01Standalone("127.0.0.1", 5002)
    assert api.key_type is KeyType.ECDSA_P384
    assert api.challenge == Http01Standalone("127.0.0.1", 5002)
    assert web.account == api.account == "pebble"
    assert dict(config.reload_targets) == {}  # shown commented out only
    assert web.probes == api.probes == ()


def test_base_config_parses_with_defaults(tmp_path: Path) -> None:
    """A minimal config gets the documented defaults for everything it leaves out."""
    config = parse_config(base_config(), source_in(tmp_path))
    assert isinstance(config, Config)
    assert config.daemon.keep_versions == 5
    assert config.daemon.max_concurrent == 4
    assert config.daemon.log_format == "auto"
    assert config.daemon.control_allowed_uids == (0,)
    assert config.acme["ca"].timeout_seconds == 30.0
    assert config.acme["ca"].order_deadline_seconds == 120.0
    web = config.services["web"]
    assert web.account == "ca"  # the only [acme.*] section
    assert web.key_type is KeyType.ECDSA_P256
    assert web.reuse_key is False
    assert web.renew_before is None
    assert web.reload == (CommandReload(argv=("/bin/true",), timeout_seconds=30.0),)
    assert web.outputs[0].mode == 0o644
    assert web.outputs[0].password_file is None
    assert config.reload_targets["nginx"].order == 0
    assert web.probes == (ProbeSpec(host="127.0.0.1", port=8443),)
    assert web.probe_deadline_seconds == 15.0


def test_zero_services_is_valid(tmp_path: Path) -> None:
    """A config with ACME accounts but no services is accepted."""
    config = parse_config(edited(("services",), DELETE), source_in(tmp_path))
    assert dict(config.services) == {}


def test_missing_challenge_defaults_to_standalone_port_80(tmp_path: Path) -> None:
    """A service without a [challenge] table answers HTTP-01 itself on 0.0.0.0:80."""
    config = parse_config(edited(("services", "web", "challenge"), DELETE), source_in(tmp_path))
    assert config.services["web"].challenge == Http01Standalone("0.0.0.0", 80)


def test_parsed_config_is_read_only(tmp_path: Path) -> None:
    """The mappings in a parsed Config cannot be modified by the jobs that read them."""
    config = parse_config(base_config(), source_in(tmp_path))
    with pytest.raises(TypeError):
        config.services["x"] = config.services["web"]  # type: ignore[index]


def test_reload_targets_probes_and_new_outputs_parse_to_model_types(tmp_path: Path) -> None:
    """Reload targets, probes and pkcs12/directory outputs written in TOML become model objects."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "p12.pass").write_text("never read")
    path = etc / "rotatord.toml"
    path.write_text(
        """
        [daemon]
        state_dir = "../state"
        [acme.ca]
        directory = "https://ca.example/dir"

        [reload_targets.nginx]
        order = 10
        [[reload_targets.nginx.actions]]
        command = ["/usr/sbin/nginx", "-s", "reload"]
        [[reload_targets.nginx.actions]]
        signal = "USR1"
        pid_file = "run/nginx.pid"

        [reload_targets.haproxy]
        [[reload_targets.haproxy.actions]]
        systemd_unit = "haproxy.service"
        timeout = 20

        [reload_targets.app]
        order = -5
        [[reload_targets.app.actions]]
        command = ["app-reload"]

        [services.web]
        domains = ["web.example.test"]
        reload_targets = ["nginx", "haproxy"]
        probe_deadline = 42.5
        [[services.web.probe]]
        address = "[::1]:8443"
        sni = "Other.Example.TEST"
        [[services.web.probe]]
        unix_socket = "run/tls.sock"
        [[services.web.outputs]]
        path = "out/web.p12"
        format = "pkcs12"
        password_file = "p12.pass"
        [[services.web.outputs]]
        path = "out/web"
        format = "directory"
        mode = 0o640
        """
    )
    config = load_config(path)

    assert list(config.reload_targets) == ["app", "haproxy", "nginx"]  # by (order, name)
    assert all(isinstance(t, ReloadTarget) for t in config.reload_targets.values())
    assert config.reload_targets["nginx"] == ReloadTarget(
        name="nginx",
        actions=(
            CommandReload(("/usr/sbin/nginx", "-s", "reload")),
            SignalReload(etc / "run" / "nginx.pid", signal.SIGUSR1),
        ),
        order=10,
    )
    assert config.reload_targets["haproxy"] == ReloadTarget(
        "haproxy", (SystemdReload("haproxy.service", 20.0),), 0
    )
    assert config.reload_targets["app"].order == -5

    web = config.services["web"]
    assert web.reload_targets == ("nginx", "haproxy")
    assert web.probe_deadline_seconds == 42.5
    assert all(isinstance(probe, ProbeSpec) for probe in web.probes)
    assert web.probes == (
        ProbeSpec(host="::1", port=8443, unix_socket=None, sni="other.example.test"),
        ProbeSpec(host=None, port=None, unix_socket=etc / "run" / "tls.sock", sni=None),
    )
    assert web.outputs == (
        OutputSpec(etc / "out" / "web.p12", OutputFormat.PKCS12, 0o600,
                   password_file=etc / "p12.pass"),
        OutputSpec(etc / "out" / "web", OutputFormat.DIRECTORY, 0o640),
    )  # fmt: skip


ACCEPTED: Final[list[tuple[KeyPath, object, str, object]]] = [
    # (keys, value, attribute path on services.web, expected)
    (("services", "web", "challenge"), {"listen": "[::1]:8080"}, "challenge",
     Http01Standalone("::1", 8080)),
    (("services", "web", "challenge"), {"listen": "localhost:80"}, "challenge",
     Http01Standalone("localhost", 80)),
    (("services", "web", "challenge"), {"type": "http-01"}, "challenge", Http01Standalone()),
    (("services", "web", "challenge"), {"webroot": "/var/www"}, "challenge",
     Http01Webroot(Path("/var/www"))),
    (("services", "web", "domains"), ["WEB.Example.TEST", "a-b.example.test"], "domains",
     ("web.example.test", "a-b.example.test")),
    # IP identifiers (RFC 8738), in their canonical spelling
    (("services", "web", "domains"), ["192.0.2.1", "web.example.test"], "domains",
     ("192.0.2.1", "web.example.test")),
    (("services", "web", "domains"), ["2001:DB8:0:0::1", "::1"], "domains",
     ("2001:db8::1", "::1")),
    (("services", "web", "challenge"), {"type": "tls-alpn-01"}, "challenge", TlsAlpn01()),
    (("services", "web", "challenge"), {"type": "tls-alpn-01", "listen": "[::1]:8443"},
     "challenge", TlsAlpn01("::1", 8443)),
    (("services", "web", "key_type"), "rsa-3072", "key_type", KeyType.RSA_3072),
    (("services", "web", "reuse_key"), True, "reuse_key", True),
    (("services", "web", "renew_before"), "90s", "renew_before", timedelta(seconds=90)),
    (("services", "web", "renew_before"), "30m", "renew_before", timedelta(minutes=30)),
    (("services", "web", "renew_before"), "12h", "renew_before", timedelta(hours=12)),
    (("services", "web", "renew_before"), "10d", "renew_before", timedelta(days=10)),
    (("services", "web", "keep_versions"), 2, "keep_versions", 2),
    (("services", "web", "key_group"), MY_GROUP, "key_group", MY_GROUP),
    (("services", "web", "reload"), [{"signal": "usr1", "pid_file": "/run/x.pid"}], "reload",
     (SignalReload(Path("/run/x.pid"), signal.SIGUSR1, 5.0),)),
    (("services", "web", "reload"), [{"signal": "SIGHUP", "pid_file": "/run/x.pid"}], "reload",
     (SignalReload(Path("/run/x.pid"), signal.SIGHUP, 5.0),)),
    (("services", "web", "reload"), [{"pid_file": "/run/x.pid"}], "reload",
     (SignalReload(Path("/run/x.pid"), signal.SIGHUP, 5.0),)),
    (("services", "web", "reload"), [{"systemd_unit": "nginx.service"}], "reload",
     (SystemdReload("nginx.service", 60.0),)),
    (("services", "web", "reload"),
     [{"command": ["nginx", "-s", "reload"], "env": {"A_B": "c"}, "timeout": 2.5}], "reload",
     (CommandReload(("nginx", "-s", "reload"), 2.5, {"A_B": "c"}),)),
    (("services", "web", "outputs"), [{"path": "/o/k.pem", "format": "key"}], "outputs.mode",
     0o600),
    (("services", "web", "outputs"), [{"path": "/o/c.pem", "format": "combined"}],
     "outputs.mode", 0o600),
    (("services", "web", "outputs"), [{"path": "/o/c.pem"}], "outputs.format",
     OutputFormat.FULLCHAIN),
    (("services", "web", "outputs"), [{"path": "/o/c.pem", "format": "der"}], "outputs.mode",
     0o644),
    (("services", "web", "outputs"), [{"path": "/o/k.pem", "format": "key", "mode": "0640"}],
     "outputs.mode", 0o640),
    (("services", "web", "outputs"), [{"path": "/o/k.pem", "format": "key", "mode": 0o640}],
     "outputs.mode", 0o640),
    (("services", "web", "outputs"), [{"path": "/o/k.pem", "mode": "0o444"}], "outputs.mode",
     0o444),
    (("services", "web", "outputs"),
     [{"path": "/o/k.pem", "owner": MY_USER, "group": MY_GROUP}], "outputs.owner", MY_USER),
    # pkcs12 and directory outputs
    (("services", "web", "outputs"),
     [{"path": "/o/w.p12", "format": "pkcs12", "password_file": str(EXAMPLE)}], "outputs.mode",
     0o600),
    (("services", "web", "outputs"),
     [{"path": "/o/w.p12", "format": "pkcs12", "password_file": str(EXAMPLE)}],
     "outputs.password_file", EXAMPLE),
    (("services", "web", "outputs"), [{"path": "/o/web", "format": "directory"}],
     "outputs.mode", 0o600),
    (("services", "web", "outputs"), [{"path": "/o/web", "format": "directory", "mode": "0640"}],
     "outputs.mode", 0o640),
    (("services", "web", "outputs"), [{"path": "/o/web/", "format": "directory"}],
     "outputs.path", Path("/o/web")),
    # reload targets, probes
    (("services", "web", "reload_targets"), [], "reload_targets", ()),
    (("services", "web", "probe"), [], "probes", ()),
    (("services", "web", "probe"), [{"address": "[::1]:8443"}], "probes",
     (ProbeSpec(host="::1", port=8443),)),
    (("services", "web", "probe"), [{"address": "localhost:443"}], "probes",
     (ProbeSpec(host="localhost", port=443),)),
    (("services", "web", "probe"), [{"unix_socket": "/run/app/tls.sock"}], "probes",
     (ProbeSpec(unix_socket=Path("/run/app/tls.sock")),)),
    (("services", "web", "probe"), [{"address": "10.0.0.1:443", "sni": "WWW.Example.TEST"}],
     "probes", (ProbeSpec(host="10.0.0.1", port=443, sni="www.example.test"),)),
    (("services", "web", "probe_deadline"), 0.5, "probe_deadline_seconds", 0.5),
    (("services", "web", "probe_deadline"), 600, "probe_deadline_seconds", 600.0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "value", "attribute", "expected"), ACCEPTED, ids=[repr(c[1]) for c in ACCEPTED]
)
def test_valid_values_are_accepted(
    tmp_path: Path, keys: KeyPath, value: object, attribute: str, expected: object
) -> None:
    """Each valid spelling of a setting parses to the expected model value."""
    config = parse_config(edited(keys, value), source_in(tmp_path))
    node: Any = config.services["web"]
    for part in attribute.split("."):
        node = getattr(node, part)
        if isinstance(node, tuple) and part == "outputs":
            node = node[0]
    assert node == expected


# --------------------------------------------------------------------------- every problem at once


def test_many_mistakes_are_all_reported_at_once(tmp_path: Path) -> None:
    """Six unrelated mistakes come back together in one ConfigError, each at its dotted path."""
    data = base_config()
    data["daemon"]["keep_versions"] = 1
    data["acme"]["ca"]["timeout"] = True
    data["services"]["web"]["domain"] = ["typo.example.test"]
    data["services"]["web"]["challenge"]["listen"] = "127.0.0.1:99999"
    data["services"]["web"]["reload"].append({"command": ["/bin/true"], "timeout": -1})
    data["services"]["api"] = {"domains": ["*.example.test"], "account": "missing"}
    problems = problems_of(data, tmp_path)
    assert paths_of(problems) == [
        "daemon.keep_versions",
        "acme.ca.timeout",
        "services.web.domain",
        "services.web.challenge.listen",
        "services.web.reload[1].timeout",
        "services.api.domains[0]",  # a wildcard without dns-01: checked with the domains
        "services.api.account",
    ]
    assert all(p.file == str(source_in(tmp_path)) for p in problems)
    assert "did you mean 'domains'?" in problems[2].message


REJECTED: Final[list[tuple[KeyPath, object, str, str]]] = [
    # top level
    (("servics",), {}, "servics", "did you mean 'services'?"),
    (("services",), ["web"], "services", "must be a table"),
    (("acme",), {}, "acme", "at least one [acme.<name>] section"),
    (("acme",), "ca", "acme", "must be a table"),
    # [daemon]
    (("daemon",), "x", "daemon", "must be a table"),
    (("daemon", "stat_dir"), "/x", "daemon.stat_dir", "did you mean 'state_dir'?"),
    (("daemon", "state_dir"), "", "daemon.state_dir", "must not be empty"),
    (("daemon", "state_dir"), "a\x00b", "daemon.state_dir", "NUL"),
    (("daemon", "audit_log"), 5, "daemon.audit_log", "expected a string"),
    (("daemon", "control_socket"), "/tmp/" + "s" * 120, "daemon.control_socket", "107 bytes"),
    (("daemon", "control_socket_group"), NO_SUCH_NAME, "daemon.control_socket_group",
     "does not exist"),
    (("daemon", "control_allowed_uids"), 0, "daemon.control_allowed_uids", "expected an array"),
    (("daemon", "control_allowed_uids"), [0, -1], "daemon.control_allowed_uids[1]", "uid"),
    (("daemon", "control_allowed_uids"), [2**32], "daemon.control_allowed_uids[0]", "uid"),
    (("daemon", "control_allowed_uids"), [True], "daemon.control_allowed_uids[0]", "boolean"),
    (("daemon", "keep_versions"), 1, "daemon.keep_versions", "from 2"),
    (("daemon", "keep_versions"), True, "daemon.keep_versions", "got a boolean"),
    (("daemon", "keep_versions"), 5.0, "daemon.keep_versions", "got a float"),
    (("daemon", "keep_versions"), 10**400, "daemon.keep_versions", "very large"),
    (("daemon", "max_concurrent"), 0, "daemon.max_concurrent", "from 1 to 64"),
    (("daemon", "max_concurrent"), 65, "daemon.max_concurrent", "from 1 to 64"),
    (("daemon", "log_format"), "xml", "daemon.log_format", "auto, json, console"),
    # [acme.<name>]
    (("acme", "ca"), "https://x", "acme.ca", "must be a table"),
    (("acme", "ca", "directory"), DELETE, "acme.ca.directory", "missing required key"),
    (("acme", "ca", "directory"), "http://ca.example/dir", "acme.ca.directory",
     "only allowed for a CA on this machine"),
    (("acme", "ca", "directory"), "ftp://ca.example/dir", "acme.ca.directory", "https://"),
    (("acme", "ca", "directory"), "https:///dir", "acme.ca.directory", "no host"),
    (("acme", "ca", "directory"), "https://[::1/dir", "acme.ca.directory", "not a valid URL"),
    (("acme", "ca", "directory"), "https://ca.example:99999/", "acme.ca.directory",
     "not a valid URL"),
    (("acme", "ca", "directory"), "https://ca.example/ dir", "acme.ca.directory", "spaces"),
    (("acme", "ca", "contact"), "mailto:a@b.test", "acme.ca.contact", "expected an array"),
    (("acme", "ca", "contact"), ["mailto:a@b.test", "ops@b.test"], "acme.ca.contact[1]",
     "mailto:"),
    (("acme", "ca", "ca_bundle"), "missing.pem", "acme.ca.ca_bundle", "does not exist"),
    (("acme", "ca", "ca_bundle"), ".", "acme.ca.ca_bundle", "not a regular file"),
    (("acme", "ca", "timeout"), 0, "acme.ca.timeout", "greater than 0"),
    (("acme", "ca", "timeout"), 3601, "acme.ca.timeout", "at most 3600"),
    (("acme", "ca", "timeout"), "30", "acme.ca.timeout", "got a string"),
    (("acme", "ca", "timeout"), float("nan"), "acme.ca.timeout", "nan"),
    (("acme", "ca", "timeout"), float("inf"), "acme.ca.timeout", "inf"),
    (("acme", "ca", "order_deadline"), -1, "acme.ca.order_deadline", "greater than 0"),
    (("acme", "ca", "order_deadline"), 10**9, "acme.ca.order_deadline", "at most 86400"),
    (("acme", "ca", "eab"), {"kid": "k"}, "acme.ca.eab.hmac_key_file", "missing required key"),
    (("acme", "ca", "eab"), {"hmac_key_file": str(EXAMPLE)}, "acme.ca.eab.kid",
     "missing required key"),
    (("acme", "ca", "eab"), {"kid": "k", "hmac_key_file": "missing.key"},
     "acme.ca.eab.hmac_key_file", "does not exist"),
    (("acme", "ca", "eab"), [], "acme.ca.eab", "must be a table"),
    (("acme", "ca", "directry"), "x", "acme.ca.directry", "did you mean 'directory'?"),
    # [services.<name>]
    (("services", "web"), [], "services.web", "must be a table"),
    (("services", "web", "domains"), DELETE, "services.web.domains", "missing required key"),
    (("services", "web", "domains"), [], "services.web.domains", "at least one"),
    (("services", "web", "domains"), "web.example.test", "services.web.domains",
     "expected an array"),
    (("services", "web", "domains"), [1], "services.web.domains[0]", "got an integer"),
    (("services", "web", "domains"), ["*.example.test"], "services.web.domains[0]", "wildcard"),
    (("services", "web", "domains"), ["a.test", "*.example.test"], "services.web.domains[1]",
     "which only dns-01 can validate, not http-01"),
    (("services", "web", "domains"), ["::ffff:192.0.2.1"], "services.web.domains[0]",
     "write the IPv4 address 192.0.2.1"),
    (("services", "web", "domains"), ["fe80::1%eth0"], "services.web.domains[0]", "scoped"),
    (("services", "web", "domains"), ["0.0.0.0"], "services.web.domains[0]", "unicast"),
    (("services", "web", "domains"), ["::1", "0::1"], "services.web.domains[1]", "twice"),
    (("services", "web", "domains"), ["*.192.0.2.1"], "services.web.domains[0]", "IP address"),
    (("services", "web", "domains"), ["-bad.example.test"], "services.web.domains[0]", "label"),
    (("services", "web", "domains"), ["bad-.example.test"], "services.web.domains[0]", "label"),
    (("services", "web", "domains"), ["a_b.example.test"], "services.web.domains[0]", "label"),
    (("services", "web", "domains"), ["a..example.test"], "services.web.domains[0]", "label"),
    (("services", "web", "domains"), ["a" * 64 + ".test"], "services.web.domains[0]", "label"),
    (("services", "web", "domains"), [("a" * 60 + ".") * 5 + "test"], "services.web.domains[0]",
     "253"),
    (("services", "web", "domains"), ["web.example.test."], "services.web.domains[0]", "dot"),
    (("services", "web", "domains"), ["exämple.test"], "services.web.domains[0]", "punycode"),
    (("services", "web", "domains"), ["1.2.3.999"], "services.web.domains[0]", "all digits"),
    (("services", "web", "domains"), ["", "x.test"], "services.web.domains[0]", "label"),
    (("services", "web", "domains"), ["a.test", "A.test"], "services.web.domains[1]", "twice"),
    (("services", "web", "domains"), [f"n{i}.test" for i in range(101)], "services.web.domains",
     "at most 100"),
    (("services", "web", "account"), "nope", "services.web.account", "does not name"),
    (("services", "web", "account"), "cA", "services.web.account", "did you mean 'ca'?"),
    (("services", "web", "account"), "", "services.web.account", "must not be empty"),
    (("services", "web", "key_type"), "rsa-1024", "services.web.key_type", "ecdsa-p256"),
    (("services", "web", "key_type"), 256, "services.web.key_type", "got an integer"),
    (("services", "web", "reuse_key"), "yes", "services.web.reuse_key", "true or false"),
    (("services", "web", "reuse_key"), 1, "services.web.reuse_key", "true or false"),
    (("services", "web", "renew_before"), 864000, "services.web.renew_before", "duration"),
    (("services", "web", "renew_before"), "10", "services.web.renew_before", "duration"),
    (("services", "web", "renew_before"), "10w", "services.web.renew_before", "duration"),
    (("services", "web", "renew_before"), "-1d", "services.web.renew_before", "duration"),
    (("services", "web", "renew_before"), "1.5d", "services.web.renew_before", "duration"),
    (("services", "web", "renew_before"), "0d", "services.web.renew_before", "greater than"),
    (("services", "web", "renew_before"), "366d", "services.web.renew_before", "at most 365d"),
    (("services", "web", "renew_before"), "9" * 5000 + "d", "services.web.renew_before",
     "at most"),
    (("services", "web", "key_group"), NO_SUCH_NAME, "services.web.key_group", "does not exist"),
    (("services", "web", "keep_versions"), 1, "services.web.keep_versions", "from 2"),
    (("services", "web", "keep_versions"), "5", "services.web.keep_versions", "got a string"),
    # challenge
    (("services", "web", "challenge"), "http-01", "services.web.challenge", "must be a table"),
    (("services", "web", "challenge", "type"), "bogus-01", "services.web.challenge.type",
     "supported types are 'http-01', 'tls-alpn-01' and 'dns-01'"),
    (("services", "web", "challenge"), {"type": "tls-alpn-01", "webroot": "/var/www"},
     "services.web.challenge.webroot", "'webroot' is for http-01"),
    (("services", "web", "challenge", "lisen"), "x", "services.web.challenge.lisen",
     "did you mean 'listen'?"),
    (("services", "web", "challenge", "webroot"), "/var/www", "services.web.challenge",
     "exactly one of 'listen'"),
    (("services", "web", "challenge", "listen"), "127.0.0.1", "services.web.challenge.listen",
     "host:port"),
    (("services", "web", "challenge", "listen"), "127.0.0.1:0", "services.web.challenge.listen",
     "1 to 65535"),
    (("services", "web", "challenge", "listen"), "127.0.0.1:65536",
     "services.web.challenge.listen", "1 to 65535"),
    (("services", "web", "challenge", "listen"), "127.0.0.1:http",
     "services.web.challenge.listen", "1 to 65535"),
    (("services", "web", "challenge", "listen"), "::1:80", "services.web.challenge.listen",
     "brackets"),
    (("services", "web", "challenge", "listen"), "[nope]:80", "services.web.challenge.listen",
     "not an IPv6 address"),
    (("services", "web", "challenge", "listen"), "[::1]80", "services.web.challenge.listen",
     "host:port"),
    (("services", "web", "challenge", "listen"), ":80", "services.web.challenge.listen",
     "missing host"),
    (("services", "web", "challenge", "listen"), "bad_host:80",
     "services.web.challenge.listen", "not an IPv4 address or host name"),
    (("services", "web", "challenge", "listen"), 80, "services.web.challenge.listen",
     "expected a string"),
    # reload
    (("services", "web", "reload"), {"command": ["/bin/true"]}, "services.web.reload",
     "array of tables"),
    (("services", "web", "reload"), ["/bin/true"], "services.web.reload[0]", "must be a table"),
    (("services", "web", "reload"), [{"command": "nginx -s reload"}],
     "services.web.reload[0].command", "never a shell string"),
    (("services", "web", "reload"), [{"command": []}], "services.web.reload[0].command",
     "must not be empty"),
    (("services", "web", "reload"), [{"command": ["nginx", ""]}],
     "services.web.reload[0].command[1]", "must not be empty"),
    (("services", "web", "reload"), [{"command": ["nginx", 1]}],
     "services.web.reload[0].command[1]", "expected a string"),
    (("services", "web", "reload"), [{}], "services.web.reload[0]", "set one of"),
    (("services", "web", "reload"), [{"command": ["x"], "systemd_unit": "x.service"}],
     "services.web.reload[0]", "exactly one kind"),
    (("services", "web", "reload"), [{"systemd_unit": "x.service", "pid_file": "/run/x.pid"}],
     "services.web.reload[0]", "exactly one kind"),
    (("services", "web", "reload"), [{"signal": "HUP"}], "services.web.reload[0].pid_file",
     "missing required key"),
    (("services", "web", "reload"), [{"signal": "BOGUS", "pid_file": "/run/x.pid"}],
     "services.web.reload[0].signal", "unknown signal"),
    (("services", "web", "reload"), [{"signal": 1, "pid_file": "/run/x.pid"}],
     "services.web.reload[0].signal", "signal name"),
    (("services", "web", "reload"), [{"signal": "KILL", "pid_file": "/run/x.pid"}],
     "services.web.reload[0].signal", "cannot be caught"),
    (("services", "web", "reload"), [{"systemd_unit": "--force"}],
     "services.web.reload[0].systemd_unit", "not starting with '-'"),
    (("services", "web", "reload"), [{"systemd_unit": "a b"}],
     "services.web.reload[0].systemd_unit", "unit name"),
    (("services", "web", "reload"), [{"systemd_unit": "x.service", "env": {"A": "b"}}],
     "services.web.reload[0].env", "only applies to a 'command'"),
    (("services", "web", "reload"), [{"command": ["x"], "env": {"A": 1}}],
     "services.web.reload[0].env.A", "expected a string"),
    (("services", "web", "reload"), [{"command": ["x"], "env": {"A=B": "c"}}],
     'services.web.reload[0].env."A=B"', "environment variable name"),
    (("services", "web", "reload"), [{"command": ["x"], "env": "A=b"}],
     "services.web.reload[0].env", "must be a table"),
    (("services", "web", "reload"), [{"command": ["x"], "timeout": 0}],
     "services.web.reload[0].timeout", "greater than 0"),
    (("services", "web", "reload"), [{"command": ["x"], "timeout": 3601}],
     "services.web.reload[0].timeout", "at most 3600"),
    (("services", "web", "reload"), [{"command": ["x"], "timeout": True}],
     "services.web.reload[0].timeout", "got a boolean"),
    (("services", "web", "reload"), [{"command": ["x"], "cmd": ["y"]}],
     "services.web.reload[0].cmd", "unknown key"),
    # outputs
    (("services", "web", "outputs"), {"path": "/o/x.pem"}, "services.web.outputs",
     "array of tables"),
    (("services", "web", "outputs"), [{"format": "cert"}], "services.web.outputs[0].path",
     "missing required key"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "format": "p12"}],
     "services.web.outputs[0].format",
     "fullchain, cert, chain, key, combined, der, pkcs12, directory"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "format": "key", "mode": "0644"}],
     "services.web.outputs[0].mode", "nothing to others"),
    (("services", "web", "outputs"),
     [{"path": "/o/x.pem", "format": "combined", "mode": 0o602}],
     "services.web.outputs[0].mode", "nothing to others"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "mode": 640}],
     "services.web.outputs[0].mode", "not a file mode"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "mode": "rw-r-----"}],
     "services.web.outputs[0].mode", "octal"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "mode": "0648"}],
     "services.web.outputs[0].mode", "octal"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "mode": "4755"}],
     "services.web.outputs[0].mode", "setuid"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "mode": 1.5}],
     "services.web.outputs[0].mode", "got a float"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "owner": NO_SUCH_NAME}],
     "services.web.outputs[0].owner", "does not exist"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem", "group": NO_SUCH_NAME}],
     "services.web.outputs[0].group", "does not exist"),
    (("services", "web", "outputs"), [{"path": "/o/x.pem"}, {"path": "/o/../o/x.pem"}],
     "services.web.outputs[1].path", "also written by services.web.outputs[0].path"),
    (("services", "web", "outputs"), [{"path": "state/services/web/x.pem"}],
     "services.web.outputs[0].path", "inside daemon.state_dir"),
    # pkcs12 outputs: password_file required, must exist, pkcs12 only
    (("services", "web", "outputs"), [{"path": "/o/w.p12", "format": "pkcs12"}],
     "services.web.outputs[0].password_file", "missing required key"),
    (("services", "web", "outputs"),
     [{"path": "/o/w.p12", "format": "pkcs12", "password_file": "missing.pass"}],
     "services.web.outputs[0].password_file", "does not exist"),
    (("services", "web", "outputs"),
     [{"path": "/o/w.p12", "format": "pkcs12", "password_file": "."}],
     "services.web.outputs[0].password_file", "not a regular file"),
    (("services", "web", "outputs"),
     [{"path": "/o/w.p12", "format": "pkcs12", "password_file": ""}],
     "services.web.outputs[0].password_file", "must not be empty"),
    (("services", "web", "outputs"),
     [{"path": "/o/w.p12", "format": "pkcs12", "password_file": str(EXAMPLE), "mode": "0644"}],
     "services.web.outputs[0].mode", "nothing to others"),
    (("services", "web", "outputs"), [{"path": "/o/w.pem", "password_file": str(EXAMPLE)}],
     "services.web.outputs[0].password_file", "only applies to format = 'pkcs12'"),
    (("services", "web", "outputs"),
     [{"path": "/o/web", "format": "directory", "password_file": str(EXAMPLE)}],
     "services.web.outputs[0].password_file", "not 'directory'"),
    # directory outputs: key mode, state_dir, nesting with other outputs (either order)
    (("services", "web", "outputs"), [{"path": "/o/web", "format": "directory", "mode": "0644"}],
     "services.web.outputs[0].mode", "applies to privkey.pem"),
    (("services", "web", "outputs"), [{"path": "/o/web", "format": "directory", "mode": 0o601}],
     "services.web.outputs[0].mode", "nothing to others"),
    (("services", "web", "outputs"), [{"path": "state/out", "format": "directory"}],
     "services.web.outputs[0].path", "inside daemon.state_dir"),
    (("services", "web", "outputs"), [{"path": ".", "format": "directory"}],
     "services.web.outputs[0].path", "daemon.state_dir"),
    (("services", "web", "outputs"),
     [{"path": "/o/web", "format": "directory"}, {"path": "/o/web/x.pem"}],
     "services.web.outputs[1].path", "directory output of services.web.outputs[0].path"),
    (("services", "web", "outputs"),
     [{"path": "/o/web/x.pem"}, {"path": "/o/web", "format": "directory"}],
     "services.web.outputs[1].path", "written by services.web.outputs[0].path"),
    (("services", "web", "outputs"),
     [{"path": "/o/web", "format": "directory"}, {"path": "/o/web/sub", "format": "directory"}],
     "services.web.outputs[1].path", "directory output of services.web.outputs[0].path"),
    (("services", "web", "outputs"),
     [{"path": "/o/web", "format": "directory"}, {"path": "/o/web", "format": "directory"}],
     "services.web.outputs[1].path", "also written by services.web.outputs[0].path"),
    # [reload_targets.<name>]
    (("reload_targets",), ["nginx"], "reload_targets", "must be a table"),
    (("reload_targets", "nginx"), [], "reload_targets.nginx", "must be a table"),
    (("reload_targets", "nginx", "ordr"), 1, "reload_targets.nginx.ordr",
     "did you mean 'order'?"),
    (("reload_targets", "nginx", "order"), 1001, "reload_targets.nginx.order",
     "from -1000 to 1000"),
    (("reload_targets", "nginx", "order"), -1001, "reload_targets.nginx.order",
     "from -1000 to 1000"),
    (("reload_targets", "nginx", "order"), "10", "reload_targets.nginx.order", "got a string"),
    (("reload_targets", "nginx", "order"), True, "reload_targets.nginx.order", "got a boolean"),
    (("reload_targets", "nginx", "order"), 1.5, "reload_targets.nginx.order", "got a float"),
    (("reload_targets", "nginx", "actions"), DELETE, "reload_targets.nginx.actions",
     "missing required key"),
    (("reload_targets", "nginx", "actions"), [], "reload_targets.nginx.actions",
     "at least one reload action"),
    (("reload_targets", "nginx", "actions"), {"command": ["/bin/true"]},
     "reload_targets.nginx.actions", "array of tables"),
    (("reload_targets", "nginx", "actions"), [{}], "reload_targets.nginx.actions[0]",
     "set one of"),
    (("reload_targets", "nginx", "actions"), [{"command": "nginx -s reload"}],
     "reload_targets.nginx.actions[0].command", "never a shell string"),
    (("reload_targets", "nginx", "actions"), [{"signal": "KILL", "pid_file": "/run/x.pid"}],
     "reload_targets.nginx.actions[0].signal", "cannot be caught"),
    (("reload_targets", "nginx", "actions"), [{"systemd_unit": "x.service", "env": {"A": "b"}}],
     "reload_targets.nginx.actions[0].env", "only applies to a 'command'"),
    (("reload_targets", "nginx", "actions"), [{"command": ["x"], "timeout": 0}],
     "reload_targets.nginx.actions[0].timeout", "greater than 0"),
    # services.<svc>.reload_targets
    (("services", "web", "reload_targets"), "nginx", "services.web.reload_targets",
     "expected an array"),
    (("services", "web", "reload_targets"), ["apache"], "services.web.reload_targets[0]",
     "does not name a [reload_targets.<name>] section; defined: 'nginx'"),
    (("services", "web", "reload_targets"), ["ngnix"], "services.web.reload_targets[0]",
     "did you mean 'nginx'?"),
    (("services", "web", "reload_targets"), ["nginx", "nginx"], "services.web.reload_targets[1]",
     "listed twice (also at index 0)"),
    (("services", "web", "reload_targets"), ["nginx", 1], "services.web.reload_targets[1]",
     "expected a string"),
    (("services", "web", "reload_targets"), [""], "services.web.reload_targets[0]",
     "must not be empty"),
    # services.<svc>.probe_deadline
    (("services", "web", "probe_deadline"), 0, "services.web.probe_deadline", "greater than 0"),
    (("services", "web", "probe_deadline"), 601, "services.web.probe_deadline", "at most 600"),
    (("services", "web", "probe_deadline"), "15", "services.web.probe_deadline",
     "got a string"),
    (("services", "web", "probe_deadline"), True, "services.web.probe_deadline",
     "got a boolean"),
    (("services", "web", "probe_deadline"), float("nan"), "services.web.probe_deadline", "nan"),
    # [[services.<svc>.probe]]
    (("services", "web", "probe"), {"address": "127.0.0.1:8443"}, "services.web.probe",
     "array of tables"),
    (("services", "web", "probe"), ["127.0.0.1:8443"], "services.web.probe[0]",
     "must be a table"),
    (("services", "web", "probe"), [{}], "services.web.probe[0]", "set one of 'address'"),
    (("services", "web", "probe"), [{"sni": "web.example.test"}], "services.web.probe[0]",
     "set one of 'address'"),
    (("services", "web", "probe"), [{"address": "127.0.0.1:8443", "unix_socket": "/run/t.sock"}],
     "services.web.probe[0]", "exactly one of 'address'"),
    (("services", "web", "probe"), [{"adress": "127.0.0.1:8443", "unix_socket": "/run/t.sock"}],
     "services.web.probe[0].adress", "did you mean 'address'?"),
    (("services", "web", "probe"), [{"address": "127.0.0.1"}], "services.web.probe[0].address",
     "host:port"),
    (("services", "web", "probe"), [{"address": "127.0.0.1:0"}],
     "services.web.probe[0].address", "1 to 65535"),
    (("services", "web", "probe"), [{"address": "::1:443"}], "services.web.probe[0].address",
     "brackets"),
    (("services", "web", "probe"), [{"address": "[nope]:443"}], "services.web.probe[0].address",
     "not an IPv6 address"),
    (("services", "web", "probe"), [{"address": ":443"}], "services.web.probe[0].address",
     "missing host"),
    (("services", "web", "probe"), [{"address": "0.0.0.0:443"}],
     "services.web.probe[0].address", "cannot be connected to"),
    (("services", "web", "probe"), [{"address": "[::]:443"}], "services.web.probe[0].address",
     "cannot be connected to"),
    (("services", "web", "probe"), [{"address": "bad_host:443"}],
     "services.web.probe[0].address", "not an IPv4 address or host name"),
    (("services", "web", "probe"), [{"address": 8443}], "services.web.probe[0].address",
     "expected a string"),
    (("services", "web", "probe"), [{"unix_socket": ""}], "services.web.probe[0].unix_socket",
     "must not be empty"),
    (("services", "web", "probe"), [{"unix_socket": "/run/" + "s" * 120}],
     "services.web.probe[0].unix_socket", "107 bytes"),
    (("services", "web", "probe"), [{"address": "127.0.0.1:8443", "sni": "*.example.test"}],
     "services.web.probe[0].sni", "wildcards are not allowed"),
    (("services", "web", "probe"), [{"address": "127.0.0.1:8443", "sni": "192.0.2.1"}],
     "services.web.probe[0].sni", "IP address"),
    (("services", "web", "probe"), [{"address": "127.0.0.1:8443", "sni": "bad_name.test"}],
     "services.web.probe[0].sni", "label"),
    (("services", "web", "probe"), [{"address": "127.0.0.1:8443", "sni": "web.example.test."}],
     "services.web.probe[0].sni", "dot"),
    (("services", "web", "probe"), [{"address": "127.0.0.1:8443", "sni": 1}],
     "services.web.probe[0].sni", "expected a string"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "value", "path", "fragment"), REJECTED, ids=[f"{c[2]}:{c[3]}" for c in REJECTED]
)
def test_each_rule_reports_its_path(
    tmp_path: Path, keys: KeyPath, value: object, path: str, fragment: str
) -> None:
    """Each invalid setting is reported, alone, at its dotted path with an explanatory message."""
    problems = problems_of(edited(keys, value), tmp_path)
    assert [(p.path, fragment in p.message) for p in problems] == [(path, True)], problems


def test_account_is_required_with_several_acme_sections(tmp_path: Path) -> None:
    """With two [acme.*] sections a service must say which one it uses."""
    data = edited(("acme", "other"), {"directory": "https://ca.example/dir"})
    problems = problems_of(data, tmp_path)
    assert paths_of(problems) == ["services.web.account"]
    assert "more than one" in problems[0].message


def test_two_services_writing_one_output_are_refused(tmp_path: Path) -> None:
    """Two services may share domains and account, but not an output file."""
    data = base_config()
    data["services"]["api"] = copy.deepcopy(data["services"]["web"])
    problems = problems_of(data, tmp_path)
    assert paths_of(problems) == ["services.api.outputs[0].path"]
    assert "services.web.outputs[0].path" in problems[0].message


def test_output_clash_is_found_even_when_the_other_service_is_invalid(tmp_path: Path) -> None:
    """A shared output path is reported even when the service first claiming it has errors."""
    data = base_config()
    data["services"]["web"]["key_type"] = "bogus"
    data["services"]["api"] = copy.deepcopy(data["services"]["web"])
    data["services"]["api"]["key_type"] = "ecdsa-p384"
    assert paths_of(problems_of(data, tmp_path)) == [
        "services.web.key_type",
        "services.api.outputs[0].path",
    ]


def test_output_inside_another_services_directory_output_is_refused(tmp_path: Path) -> None:
    """A directory output owns its whole tree, across services too."""
    data = base_config()
    data["services"]["web"]["outputs"] = [{"path": "/srv/out", "format": "directory"}]
    data["services"]["api"] = copy.deepcopy(data["services"]["web"])
    data["services"]["api"]["outputs"] = [{"path": "/srv/out/api/fullchain.pem"}]
    problems = problems_of(data, tmp_path)
    assert paths_of(problems) == ["services.api.outputs[0].path"]
    assert "services.web.outputs[0].path" in problems[0].message


def test_reload_target_names_need_a_defined_section(tmp_path: Path) -> None:
    """Naming a reload target when no [reload_targets] section exists says none is defined."""
    data = edited(("reload_targets",), DELETE)
    problems = problems_of(data, tmp_path)
    assert paths_of(problems) == ["services.web.reload_targets[0]"]
    assert "none is defined" in problems[0].message


def test_each_bad_reload_target_reference_is_reported(tmp_path: Path) -> None:
    """Every bad entry of a service's reload_targets is reported, not just the first."""
    data = edited(("services", "web", "reload_targets"), [1, "nope", "nginx", "nginx", "x"])
    assert paths_of(problems_of(data, tmp_path)) == [
        "services.web.reload_targets[0]",
        "services.web.reload_targets[1]",
        "services.web.reload_targets[3]",
        "services.web.reload_targets[4]",
    ]


def test_invalid_target_is_not_also_reported_missing(tmp_path: Path) -> None:
    """A service naming a target whose own section has problems gets no second problem."""
    data = edited(("reload_targets", "nginx", "actions"), [{"signal": "HUP"}])
    assert paths_of(problems_of(data, tmp_path)) == ["reload_targets.nginx.actions[0].pid_file"]


def test_pkcs12_password_never_appears_in_errors(tmp_path: Path) -> None:
    """Neither the password file's content nor a password pasted into the config leaks."""
    secret = "p12-password-do-not-leak"
    (tmp_path / "p12.pass").write_text(secret)
    data = edited(
        ("services", "web", "outputs"),
        [
            {"path": "/o/a.p12", "format": "pkcs12", "password_file": "p12.pass", "mode": "0666"},
            {"path": "/o/b.p12", "format": "pkcs12", "password": secret},
            {"path": "/o/c.pem", "password_file": "p12.pass"},
        ],
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data, source_in(tmp_path))
    assert paths_of(info.value.problems) == [
        "services.web.outputs[0].mode",
        "services.web.outputs[1].password",
        "services.web.outputs[1].password_file",
        "services.web.outputs[2].password_file",
    ]
    assert secret not in str(info.value) + repr(info.value.problems)


def test_non_string_keys_are_reported(tmp_path: Path) -> None:
    """A mapping with non-string keys (impossible in TOML, possible from Python) is a problem."""
    data: dict[Any, Any] = base_config()
    data["services"]["web"][1] = "x"
    problems = problems_of(data, tmp_path)
    assert paths_of(problems) == ["services.web"]
    assert "keys must be strings" in problems[0].message


def test_top_level_must_be_a_table(tmp_path: Path) -> None:
    """parse_config given a non-mapping reports it instead of crashing."""
    problems = problems_of([], tmp_path)  # type: ignore[arg-type]
    assert paths_of(problems) == [""]


# --------------------------------------------------------------------------- names, paths, files


@pytest.mark.parametrize(
    "name", ["../x", "..", ".", ".hidden", "a/b", "/abs", "", "web\n", "we b", "é", "a" * 64]
)
def test_unsafe_service_names_are_refused(tmp_path: Path, name: str) -> None:
    """Service names that are not a safe single directory name are refused."""
    data = base_config()
    data["services"][name] = data["services"].pop("web")
    problems = problems_of(data, tmp_path)
    assert len(problems) == 1
    assert problems[0].path.startswith("services.")
    assert "invalid [services.<name>] name" in problems[0].message


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b"])
def test_unsafe_acme_names_are_refused(tmp_path: Path, name: str) -> None:
    """ACME account names become directory names too, so traversal is refused there as well."""
    data = base_config()
    data["acme"][name] = data["acme"].pop("ca")
    problems = problems_of(data, tmp_path)
    assert paths_of(problems)[0] == 'acme."' + name + '"'
    assert "invalid [acme.<name>] name" in problems[0].message


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "we b", "a" * 64])
def test_unsafe_reload_target_names_are_refused(tmp_path: Path, name: str) -> None:
    """Reload target names follow the same safe-name rule as services and accounts."""
    data = base_config()
    data["reload_targets"][name] = data["reload_targets"].pop("nginx")
    data["services"]["web"]["reload_targets"] = [name]
    problems = problems_of(data, tmp_path)
    assert len(problems) == 1
    assert problems[0].path.startswith("reload_targets.")
    assert "invalid [reload_targets.<name>] name" in problems[0].message


@pytest.mark.parametrize("order", [-1000, -1, 0, 1000])
def test_reload_target_order_accepts_its_whole_range(tmp_path: Path, order: int) -> None:
    """Any integer order from -1000 to 1000 is kept as given."""
    data = edited(("reload_targets", "nginx", "order"), order)
    assert parse_config(data, source_in(tmp_path)).reload_targets["nginx"].order == order


@pytest.mark.parametrize("name", ["web", "Web-1", "a.b_c-d", "0", "a" * 63])
def test_safe_service_names_are_accepted(tmp_path: Path, name: str) -> None:
    """Letters, digits, '.', '_' and '-' up to 63 characters make a valid service name."""
    data = base_config()
    data["services"][name] = data["services"].pop("web")
    assert parse_config(data, source_in(tmp_path)).services[name].name == name


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every relative path is taken relative to the config file's directory, not the cwd."""
    etc = tmp_path / "etc" / "rotatord"
    etc.mkdir(parents=True)
    (etc / "ca.pem").write_text("not read")
    (etc / "eab.key").write_text("not read")
    (etc / "rotatord.toml").write_text(
        """
        [daemon]
        state_dir = "../../state"
        audit_log = "log/audit.jsonl"
        control_socket = "run/c.sock"
        [acme.ca]
        directory = "https://ca.example/dir"
        ca_bundle = "ca.pem"
        eab = { kid = "k", hmac_key_file = "./eab.key" }
        [services.web]
        domains = ["web.example.test"]
        challenge = { webroot = "www" }
        reload = [
            { command = ["scripts/reload.sh", "arg/with/slash"] },
            { signal = "HUP", pid_file = "run/x.pid" },
            { command = ["nginx"] },
        ]
        outputs = [{ path = "out/web.pem" }]
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/rotatord/rotatord.toml"))
    assert config.daemon.state_dir == tmp_path / "state"
    assert config.daemon.audit_log == etc / "log" / "audit.jsonl"
    assert config.daemon.control_socket == etc / "run" / "c.sock"
    acme = config.acme["ca"]
    assert acme.ca_bundle == etc / "ca.pem"
    assert acme.eab is not None
    assert acme.eab.hmac_key_file == etc / "eab.key"
    web = config.services["web"]
    assert web.challenge == Http01Webroot(etc / "www")
    assert web.reload[0] == CommandReload((str(etc / "scripts" / "reload.sh"), "arg/with/slash"))
    assert web.reload[1] == SignalReload(etc / "run" / "x.pid")
    assert web.reload[2] == CommandReload(("nginx",))  # a bare name is looked up in PATH
    assert web.outputs[0].path == etc / "out" / "web.pem"


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error is one problem naming the file and the line it is on."""
    path = tmp_path / "broken.toml"
    path.write_text('[daemon]\nstate_dir = "/x"\nkeep_versions = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert "line 3" in problem.message
    assert str(path) in str(info.value)


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    """A config file that does not exist is one problem naming that file."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert "cannot read" in problem.message


def test_non_utf8_config_file_is_refused(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is reported, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[daemon]\nstate_dir = "/caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "UTF-8" in info.value.problems[0].message


def test_load_config_reports_validation_problems_with_the_file(tmp_path: Path) -> None:
    """load_config passes TOML it could read on to validation, problems naming the file."""
    path = tmp_path / "rotatord.toml"
    path.write_text('[acme.ca]\ndirectory = "https://ca.example/dir"\n[services.web]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [(p.file, p.path) for p in info.value.problems] == [(str(path), "services.web.domains")]


def test_eab_hmac_key_never_appears_in_errors(tmp_path: Path) -> None:
    """Neither the EAB key file's content nor a key pasted into the config leaks into errors."""
    secret = "c2VjcmV0LWhtYWMta2V5LWRvLW5vdC1sZWFr"
    (tmp_path / "eab.key").write_text(secret)
    data = base_config()
    data["acme"]["ca"]["eab"] = {
        "kid": "",
        "hmac_key_file": "eab.key",
        "hmac_key": secret,  # the classic mistake: the key pasted in instead of a file name
    }
    data["acme"]["other"] = {
        "directory": "https://ca.example/dir",
        "eab": {"kid": "k", "hmac_key_file": str(tmp_path)},  # a directory, not a file
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, source_in(tmp_path))
    assert paths_of(info.value.problems) == [
        "acme.ca.eab.hmac_key",
        "acme.ca.eab.kid",
        "acme.other.eab.hmac_key_file",
        "services.web.account",
    ]
    rendered = str(info.value) + repr(info.value.problems)
    assert secret not in rendered


def test_messages_are_printable_ascii_safe(tmp_path: Path) -> None:
    """Values with lone surrogates or control characters are escaped, so an error always prints."""
    data = edited(("services", "web", "key_type"), "\ud800\x1b[31m")
    problems = problems_of(data, tmp_path)
    str(ConfigError(problems)).encode("ascii")


# --------------------------------------------------------------------------- fuzzing


_SCHEMA_KEYS: Final = [
    "daemon", "acme", "services", "state_dir", "audit_log", "control_socket",
    "control_socket_group", "control_allowed_uids", "keep_versions", "max_concurrent",
    "log_format", "directory", "contact", "ca_bundle", "timeout", "order_deadline", "eab", "kid",
    "hmac_key_file", "domains", "account", "key_type", "reuse_key", "renew_before", "key_group",
    "challenge", "type", "listen", "webroot", "reload", "command", "env", "signal", "pid_file",
    "systemd_unit", "outputs", "path", "format", "mode", "owner", "group", "web", "ca", "..",
    "reload_targets", "order", "actions", "nginx", "probe", "probe_deadline", "address",
    "unix_socket", "sni", "password_file",
]  # fmt: skip
_PLAUSIBLE: Final = [
    "127.0.0.1:80", "[::1]:80", "web.example.test", "*.example.test", "HUP", "KILL", "0640",
    "10d", "https://127.0.0.1/dir", "http://x/dir", "key", "combined", "http-01", "/tmp/x", ".",
    "mailto:a@b", "root", "ecdsa-p384", "nginx.service", "a\x00b", "pkcs12", "directory", "nginx",
    "0.0.0.0:443", "[::]:443", "/", "state",
]  # fmt: skip
_TEXT: Final = st.text(st.characters(exclude_categories=()), max_size=12)
_KEYS: Final = st.sampled_from(_SCHEMA_KEYS) | _TEXT
_SCALARS: Final = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | _TEXT
    | st.sampled_from(_PLAUSIBLE)
)
_VALUES: Final = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=20,
)


def _all_key_paths(node: object, prefix: KeyPath = ()) -> list[KeyPath]:
    paths: list[KeyPath] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _all_key_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths += _all_key_paths(value, (*prefix, index))
    return paths


_BASE_PATHS: Final = _all_key_paths(base_config())


def _mutate(keys: KeyPath, value: object, extra: dict[str, Any]) -> dict[str, Any]:
    data = edited(keys, value)
    data.update(extra)
    return data


_MUTATED_BASE: Final = st.builds(
    _mutate,
    st.sampled_from(_BASE_PATHS),
    _VALUES | st.just(DELETE),
    st.dictionaries(
        st.sampled_from(["daemon", "acme", "reload_targets", "services", "x"]), _VALUES, max_size=1
    ),
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,  # keep .hypothesis/ out of the source tree
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.dictionaries(_KEYS, _VALUES, max_size=4) | _MUTATED_BASE)
def test_arbitrary_input_raises_only_config_error(data: dict[str, Any]) -> None:
    """Whatever nested tables, arrays and scalars come in, parse_config only raises ConfigError."""
    try:
        config = parse_config(data, Path("/nonexistent/rotatord.toml"))
    except ConfigError as exc:
        assert exc.problems
        assert all(isinstance(p, Problem) for p in exc.problems)
        str(exc).encode("ascii")  # always printable
    else:
        assert isinstance(config, Config)
