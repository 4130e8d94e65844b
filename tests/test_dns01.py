"""The DNS-01 solver's parts that need no DNS server: the TXT value, the TSIG key file, and the
exec hook's contract (argv, environment, timeout, clean-up after a failed ``present``).

Hooks here are real shell scripts run as subprocesses; resolvers are never asked
(``follow_cname = false``, and the exec provider needs no zone to write).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from acme import challenges
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwk import JWKEC

from rotatord.clock import FakeClock
from rotatord.core.dns01 import Dns01, DnsLookup, ExecHook
from rotatord.core.errors import IssuanceError
from rotatord.issuing.challenges.dns01 import Dns01Solver, load_tsig_key, txt_value
from rotatord.issuing.challenges.solver import ChallengeTask, solving

WHERE = "/etc/rotatord.toml: dns.hook"
NO_LOOKUPS = DnsLookup(resolvers=(("127.0.0.1", 9),), follow_cname=False)


def task(
    identifier: str = "example.test",
    token: str = "tok-1",  # noqa: S107 - an ACME token, no secret
    wildcard: bool = False,
) -> ChallengeTask:
    return ChallengeTask(identifier, "dns", wildcard, "dns-01", token, f"{token}.thumbprint")


def hook(tmp_path: Path, body: str = "") -> Path:
    """A hook script logging its argv and environment as one JSON line per call."""
    script = tmp_path / "hook.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"python3 -c 'import json,os,sys; print(json.dumps([sys.argv[1:], dict(os.environ)]))' "
        f'"$@" >> {tmp_path}/calls.jsonl\n' + body
    )
    script.chmod(0o755)
    return script


def calls(tmp_path: Path) -> list[tuple[list[str], dict[str, str]]]:
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    return [(argv, env) for argv, env in map(json.loads, lines)]


def solver(
    tmp_path: Path,
    *,
    body: str = "",
    raw: bool = False,
    env: dict[str, str] | None = None,
    timeout_seconds: float = 10.0,
) -> Dns01Solver:
    argv = (str(hook(tmp_path, body)),)
    spec = ExecHook(argv=argv, raw=raw, env=env or {}, timeout_seconds=timeout_seconds)
    return Dns01Solver(Dns01("hook", spec, NO_LOOKUPS, WHERE), FakeClock())


def test_txt_value_is_what_the_acme_library_computes() -> None:
    """The TXT value is base64url(SHA-256(key authorization)) exactly as acme's DNS01 has it."""
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    chall = challenges.DNS01(token=b"\x01" * 32)
    assert txt_value(chall.key_authorization(key)) == chall.validation(key)


def test_tsig_key_file_as_tsig_keygen_writes_it(tmp_path: Path) -> None:
    """tsig-keygen's layout (tabs, newlines) parses to the key's name and algorithm."""
    path = tmp_path / "k"
    path.write_text('key "rotatord" {\n\talgorithm hmac-sha512;\n\tsecret "c2VjcmV0";\n};\n')
    key = load_tsig_key(path, WHERE)
    assert (key.name.to_text(), key.algorithm.to_text()) == ("rotatord.", "hmac-sha512.")


@pytest.mark.parametrize(
    "text",
    [
        "secret-only",
        'key "k" { secret "c2VjcmV0"; };',
        'key "k" { algorithm hmac-nope; secret "c2VjcmV0"; };',
    ],
)
def test_bad_tsig_key_file_is_refused_without_quoting_it(tmp_path: Path, text: str) -> None:
    """A file without a usable key statement fails with the config path, not its content."""
    path = tmp_path / "k"
    path.write_text(text)
    with pytest.raises(IssuanceError) as caught:
        load_tsig_key(path, WHERE)
    assert WHERE in str(caught.value) and "c2VjcmV0" not in str(caught.value)
    assert not caught.value.retryable


def test_default_mode_is_lego_exec_contract(tmp_path: Path) -> None:
    """present/cleanup get the FQDN with its trailing dot and the TXT value; the environment is
    a fixed PATH, EXEC_PATH and the configured variables, nothing inherited."""
    s = solver(tmp_path, env={"API_TOKEN": "t0ken"})
    t = task("www.example.test")
    s.present(t)
    s.cleanup(t)
    (present, env), (cleanup, _) = calls(tmp_path)
    value = txt_value(t.key_authorization)
    assert present == ["present", "_acme-challenge.www.example.test.", value]
    assert cleanup == ["cleanup", "_acme-challenge.www.example.test.", value]
    assert env["API_TOKEN"] == "t0ken" and env["EXEC_PATH"] == str(tmp_path / "hook.sh")
    assert "EXEC_MODE" not in env and "HOME" not in env


def test_raw_mode_passes_domain_token_and_key_authorization(tmp_path: Path) -> None:
    """EXEC_MODE=RAW: ``present -- DOMAIN TOKEN KEYAUTH``; a wildcard's domain has no ``*.``."""
    s = solver(tmp_path, raw=True)
    t = task("example.test", token="-starts-with-dash", wildcard=True)
    s.present(t)
    s.cleanup(t)
    (present, env), (cleanup, _) = calls(tmp_path)
    assert present == ["present", "--", "example.test", "-starts-with-dash", t.key_authorization]
    assert cleanup[0] == "cleanup" and cleanup[1:] == present[1:]
    assert env["EXEC_MODE"] == "RAW"


def test_a_hook_that_hangs_is_killed_and_cleaned_up(tmp_path: Path) -> None:
    """A present that outlives its timeout fails the order (retryable, naming the section and
    never the environment), and cleanup is still called in case it wrote the record."""
    s = solver(
        tmp_path,
        env={"API_TOKEN": "t0ken"},
        timeout_seconds=0.3,
        body='[ "$1" = present ] && exec sleep 30\nexit 0\n',
    )
    with pytest.raises(IssuanceError) as caught, solving(s, [task()], deadline=0.0):
        pass
    assert caught.value.retryable
    assert WHERE in str(caught.value) and "timed out" in str(caught.value)
    assert "t0ken" not in str(caught.value)
    assert [argv[0] for argv, _ in calls(tmp_path)] == ["present", "cleanup"]


def test_a_failing_second_present_cleans_up_the_first(tmp_path: Path) -> None:
    """Two names in one order; the hook fails for the second: the first is removed again and
    the error says which name and status."""
    s = solver(
        tmp_path,
        body='[ "$1" = present ] && [ "$2" = _acme-challenge.b.test. ] && '
        "{ echo 'api says no' >&2; exit 3; }\nexit 0\n",
    )
    with (
        pytest.raises(IssuanceError) as caught,
        solving(s, [task("a.test", "t1"), task("b.test", "t2")], 0.0),
    ):
        pass
    assert "status 3" in str(caught.value) and "api says no" in str(caught.value)
    seen = [(argv[0], argv[1]) for argv, _ in calls(tmp_path)]
    assert seen == [
        ("present", "_acme-challenge.a.test."),
        ("present", "_acme-challenge.b.test."),
        ("cleanup", "_acme-challenge.b.test."),
        ("cleanup", "_acme-challenge.a.test."),
    ]


def test_ip_identifier_is_refused(tmp_path: Path) -> None:
    """DNS-01 cannot validate an IP address (RFC 8738 allows only http-01 and tls-alpn-01)."""
    s = solver(tmp_path)
    ip = ChallengeTask("192.0.2.1", "ip", False, "dns-01", "t", "t.k")
    with pytest.raises(IssuanceError, match="cannot validate the ip identifier"):
        s.present(ip)
