"""``[dns.<name>]`` and ``type = "dns-01"``: what parses, and each mistake reported at its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rotatord.config import load_config, parse_config
from rotatord.core.dns01 import Dns01, DnsLookup, ExecHook, Rfc2136
from rotatord.core.errors import ConfigError, Problem

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="


def key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "tsig.key"
    path.write_text(f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
    path.chmod(mode)
    return path


def config(
    tmp_path: Path,
    dns: dict[str, Any],
    challenge: dict[str, Any] | None = None,
    domains: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "acme": {"a": {"directory": "https://127.0.0.1:14000/dir"}},
        "dns": dns,
        "services": {
            "s": {
                "domains": domains or ["*.example.test", "example.test"],
                "challenge": challenge or {"type": "dns-01", "provider": "bind"},
            }
        },
    }


def bind(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "bind": {"type": "rfc2136", "server": "192.0.2.53", "tsig_key_file": "tsig.key", **extra}
    }


def problems(data: dict[str, Any], tmp_path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path / "rotatord.toml")
    return list(caught.value.problems)


def only(data: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    found = problems(data, tmp_path)
    assert len(found) == 1, found
    assert found[0].file == str(tmp_path / "rotatord.toml")
    return found[0].path, found[0].message


def test_rfc2136_section_parses_with_defaults(tmp_path: Path) -> None:
    """A minimal rfc2136 section: port 53, the key file relative to the config, default lookup;
    the wildcard is accepted because the challenge is dns-01."""
    key = key_file(tmp_path)
    spec = parse_config(config(tmp_path, bind(tmp_path)), tmp_path / "rotatord.toml")
    challenge = spec.services["s"].challenge
    assert spec.services["s"].domains == ("*.example.test", "example.test")
    assert challenge == Dns01(
        "bind",
        Rfc2136(server=("192.0.2.53", 53), tsig_key_file=key),
        DnsLookup(),
        where=f"{tmp_path / 'rotatord.toml'}: dns.bind",
    )


def test_every_lookup_and_exec_setting_parses(tmp_path: Path) -> None:
    """An exec section with every key set; the one provider is used without naming it."""
    dns = {
        "hook": {
            "type": "exec",
            "command": ["hooks/dns.sh", "--quiet"],
            "mode": "RAW",
            "env": {"API_TOKEN": "t0ken"},
            "timeout": 5,
            "resolvers": ["127.0.0.1:5353", "::1", "192.0.2.1"],
            "authoritative_port": 5353,
            "propagation_timeout": 30,
            "polling_interval": 0.5,
            "query_timeout": 2,
            "follow_cname": False,
        }
    }
    data = config(tmp_path, dns, {"type": "dns-01"})
    challenge = parse_config(data, tmp_path / "rotatord.toml").services["s"].challenge
    assert isinstance(challenge, Dns01)
    assert challenge.provider == ExecHook(
        argv=(str(tmp_path / "hooks/dns.sh"), "--quiet"),
        raw=True,
        env={"API_TOKEN": "t0ken"},
        timeout_seconds=5.0,
    )
    assert challenge.lookup == DnsLookup(
        resolvers=(("127.0.0.1", 5353), ("::1", 53), ("192.0.2.1", 53)),
        authoritative_port=5353,
        propagation_timeout_seconds=30.0,
        polling_interval_seconds=0.5,
        query_timeout_seconds=2.0,
        follow_cname=False,
    )


def test_wildcard_with_http01_is_refused_at_its_path(tmp_path: Path) -> None:
    """A wildcard with an http-01 challenge names the domain and says dns-01 is needed."""
    data = config(tmp_path, {}, {"type": "http-01", "listen": "127.0.0.1:80"})
    del data["dns"]
    path, message = only(data, tmp_path)
    assert path == "services.s.domains[0]"
    assert "wildcard" in message and "dns-01" in message


def test_wildcard_with_default_challenge_is_refused(tmp_path: Path) -> None:
    """No challenge table means http-01, so a wildcard is refused there too."""
    data = config(tmp_path, {})
    del data["dns"], data["services"]["s"]["challenge"]
    assert only(data, tmp_path)[0] == "services.s.domains[0]"


def test_missing_tsig_key_file(tmp_path: Path) -> None:
    """A TSIG key file that does not exist is named with its path."""
    path, message = only(config(tmp_path, bind(tmp_path)), tmp_path)
    assert path == "dns.bind.tsig_key_file"
    assert "does not exist" in message and str(tmp_path / "tsig.key") in message


def test_tsig_key_file_that_is_a_directory(tmp_path: Path) -> None:
    """A directory where the key file should be is refused."""
    (tmp_path / "tsig.key").mkdir()
    path, message = only(config(tmp_path, bind(tmp_path)), tmp_path)
    assert path == "dns.bind.tsig_key_file" and "not a regular file" in message


def test_world_readable_tsig_key_file_is_refused_without_its_content(tmp_path: Path) -> None:
    """A key file every user can read is refused (chmod advice given); the secret is not shown."""
    key_file(tmp_path, 0o644)
    path, message = only(config(tmp_path, bind(tmp_path)), tmp_path)
    assert path == "dns.bind.tsig_key_file"
    assert "0644" in message and "chmod" in message and SECRET not in message


def test_unreadable_tsig_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key file this user may not read is refused at load time (os.access says so; root can
    read anything, so the check is shown by making access() answer as for another user)."""
    key_file(tmp_path)
    monkeypatch.setattr("rotatord.config_dns.os.access", lambda *_a, **_k: False)
    path, message = only(config(tmp_path, bind(tmp_path)), tmp_path)
    assert path == "dns.bind.tsig_key_file" and "not readable" in message


@pytest.mark.parametrize(
    ("dns", "challenge", "where", "says"),
    [
        ({}, {"type": "dns-01", "provider": "bind"}, "services.s.challenge.provider",
         "does not name a [dns.<name>]"),
        ({"bind": {"type": "exec", "command": ["/bin/true"]}},
         {"type": "dns-01", "provider": "bnd"}, "services.s.challenge.provider",
         "did you mean 'bind'?"),
        ({"a": {"type": "exec", "command": ["/bin/true"]},
          "b": {"type": "exec", "command": ["/bin/true"]}},
         {"type": "dns-01"}, "services.s.challenge.provider", "defined: a, b"),
        ({"bind": {"type": "exec", "command": ["/bin/true"]}},
         {"type": "dns-01", "listen": "127.0.0.1:80"}, "services.s.challenge.listen",
         "belongs to http-01"),
        ({"bind": {"type": "nsupdate"}}, None, "dns.bind.type", "rfc2136, exec"),
        ({"bind": {"command": ["/bin/true"]}}, None, "dns.bind.type", "missing required key"),
        ({"bind": {"type": "exec", "command": "/bin/hook present"}}, None, "dns.bind.command",
         "never a shell string"),
        ({"bind": {"type": "exec", "command": ["/bin/true"], "mode": "shell"}}, None,
         "dns.bind.mode", "'raw'"),
        ({"bind": {"type": "exec", "command": ["/bin/true"], "resolvers": ["ns1.example"]}},
         None, "dns.bind.resolvers[0]", "not an IP address"),
        ({"bind": {"type": "exec", "command": ["/bin/true"], "resolvers": ["1.2.3.4:0"]}},
         None, "dns.bind.resolvers[0]", "port must be"),
        ({"bind": {"type": "exec", "command": ["/bin/true"], "tsig_key_file": "k"}}, None,
         "dns.bind.tsig_key_file", "unknown key"),
        ({"bind": {"type": "exec", "command": ["/bin/true"], "polling_interval": 0}}, None,
         "dns.bind.polling_interval", "greater than 0"),
        ({"bind": {"type": "exec", "command": ["/bin/true"], "env": {"1X": "v"}}}, None,
         "dns.bind.env.1X", "not a valid environment variable name"),
        ({"bind": {"type": "rfc2136", "tsig_key_file": "tsig.key"}}, None, "dns.bind.server",
         "missing required key"),
        ({"bind": {"type": "rfc2136", "server": "192.0.2.1", "tsig_key_file": "tsig.key",
                   "zone": "*.example.test"}}, None, "dns.bind.zone", "not a zone name"),
        ({"bind": {"type": "rfc2136", "server": "192.0.2.1", "tsig_key_file": "tsig.key",
                   "ttl": 0}}, None, "dns.bind.ttl", "from 1 to 86400"),
        ({"bad/name": {"type": "exec", "command": ["/bin/true"]}}, {"type": "dns-01"},
         "dns.\"bad/name\"", "[dns.<name>]"),
    ],
)  # fmt: skip
def test_each_mistake_is_reported_at_its_path(
    tmp_path: Path, dns: dict[str, Any], challenge: dict[str, Any] | None, where: str, says: str
) -> None:
    """Each mistake in a dns section or a dns-01 challenge gives one problem at its path."""
    key_file(tmp_path)
    path, message = only(config(tmp_path, dns, challenge), tmp_path)
    assert (path, says in message) == (where, True), message


def test_exec_env_values_never_reach_a_message(tmp_path: Path) -> None:
    """A hook environment holding an API token: a mistake beside it does not echo the value."""
    dns = {"h": {"type": "exec", "command": ["/bin/true"], "env": {"TOKEN": "s3cr3t", "X": 1}}}
    found = problems(config(tmp_path, dns, {"type": "dns-01"}), tmp_path)
    assert [p.path for p in found] == ["dns.h.env.X"]
    assert "s3cr3t" not in repr(found)


def test_example_config_dns_block_parses_when_uncommented(tmp_path: Path) -> None:
    """The commented [dns.bind]/[dns.hook] example in config/rotatord.example.toml is valid:
    uncommented, beside a wildcard service, it parses to what its comments promise."""
    text = (Path(__file__).resolve().parent.parent / "config" / "rotatord.example.toml").read_text()
    block = text.split("# -- dns-01 example begin")[1].split("# -- dns-01 example end")[0]
    lines = [
        line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.splitlines()[1:]
    ]
    key_file(tmp_path)
    source = tmp_path / "rotatord.toml"
    source.write_text(
        '[acme.a]\ndirectory = "https://127.0.0.1:14000/dir"\n'
        + "\n".join(lines)
        + '\n[services.s]\ndomains = ["*.example.com", "example.com"]\n'
        '[services.s.challenge]\ntype = "dns-01"\nprovider = "bind"\n'
        '[services.h]\ndomains = ["h.example.com"]\n'
        '[services.h.challenge]\ntype = "dns-01"\nprovider = "hook"\n'
    )
    config = load_config(source)
    bind, hook = config.services["s"].challenge, config.services["h"].challenge
    assert isinstance(bind, Dns01) and isinstance(hook, Dns01)
    assert bind.provider == Rfc2136(("192.0.2.53", 53), tmp_path / "tsig.key", None, 60, 10.0)
    assert bind.lookup == DnsLookup(resolvers=(("192.0.2.53", 53),))
    assert isinstance(hook.provider, ExecHook) and hook.provider.argv == (
        "/usr/local/bin/dns-hook",
    )
    assert hook.provider.env == {"DNS_API_TOKEN_FILE": "/etc/rotatord/dns-api.token"}


def test_exec_env_is_not_in_the_specs_repr() -> None:
    """A spec printed in a traceback or debug line does not show the hook's API token."""
    spec = Dns01("h", ExecHook(argv=("/bin/hook",), env={"TOKEN": "s3cr3t"}))
    assert "s3cr3t" not in repr(spec) and "/bin/hook" in repr(spec)
