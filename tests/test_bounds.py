"""Bounds on outside input that need no CA: clipped error text and the config file size cap."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pebble.hostile_front import forge_leaf, make_foreign_ca
from rotatord.clock import FakeClock
from rotatord.config import MAX_CONFIG_BYTES, load_config, parse_config
from rotatord.core import keys
from rotatord.core.errors import ConfigError, IssuanceError
from rotatord.core.model import AcmeSpec, KeyType
from rotatord.core.text import MAX_ERROR_CHARS, clip, quote
from rotatord.issuing.acme_net import UrlPolicy, read_bounded
from rotatord.issuing.trust import TrustAnchors, parse_chain
from rotatord.rotation.failure import error_fields


def test_clip_keeps_short_text_and_marks_cut_text() -> None:
    """Short text is unchanged; long text keeps its head and says how much was cut."""
    assert clip("abc", 10) == "abc"
    out = clip("x" * 1000, 10)
    assert out.startswith("x" * 10) and out.endswith("…[truncated 990 chars]")


def test_quote_clips_outside_values() -> None:
    """A quoted outside value (a URL) is bounded too."""
    out = quote("h" * 10_000)
    assert len(out) < 300 and "truncated 9800 chars" in out


def test_an_8_mib_issuance_error_reaches_audit_fields_clipped() -> None:
    """An IssuanceError quoting 8 MiB and the audit/status fields built from it stay small."""
    exc = IssuanceError("bad url " + "u" * (8 << 20), retryable=True, problem_type="p" * 9999)
    assert len(str(exc)) < MAX_ERROR_CHARS + 64
    fields = error_fields(exc)
    assert "[truncated" in fields["error"] and len(fields["error"]) < MAX_ERROR_CHARS + 64
    assert len(fields["problem_type"]) < 600
    plain = error_fields(RuntimeError("y" * 100_000))
    assert len(plain["error"]) < MAX_ERROR_CHARS + 64


def test_an_oversized_config_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A config larger than the cap is refused with one problem naming the file."""
    path = tmp_path / "huge.toml"
    path.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert "larger than 8 MiB" in problem.message


# --------------------------------------------------------------------------- trust config


def _acme_config(**acme: object) -> dict[str, Any]:
    return {
        "daemon": {"state_dir": "/var/lib/rotatord"},
        "acme": {"ca": {"directory": "https://ca.example/dir", **acme}},
        "services": {"web": {"domains": ["web.example.test"]}},
    }


def test_trust_roots_url_and_allowed_hosts_are_parsed(tmp_path: Path) -> None:
    """trust_roots (a file), trust_roots_url (https) and allowed_hosts reach the AcmeSpec."""
    roots = tmp_path / "roots.pem"
    roots.write_text("not read at load time")
    data = _acme_config(
        trust_roots="roots.pem",
        trust_roots_url="https://127.0.0.1:15000/roots/0",
        allowed_hosts=["Cdn.CA.example"],
    )
    spec = parse_config(data, tmp_path / "r.toml").acme["ca"]
    assert spec.trust_roots == roots
    assert spec.trust_roots_url == "https://127.0.0.1:15000/roots/0"
    assert spec.allowed_hosts == ("cdn.ca.example",)
    default = parse_config(_acme_config(), tmp_path / "r.toml").acme["ca"]
    assert (default.trust_roots, default.trust_roots_url, default.allowed_hosts) == (None, None, ())


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("trust_roots", "missing.pem", "does not exist"),
        ("trust_roots_url", "http://127.0.0.1:15000/roots/0", "must be an https:// URL"),
        ("allowed_hosts", ["https://x.example/"], "expected a bare host name"),
        ("allowed_hosts", "x.example", "expected an array"),
    ],
)
def test_bad_trust_settings_are_reported_by_path(
    tmp_path: Path, key: str, value: object, fragment: str
) -> None:
    """Each bad trust setting is one problem at its dotted path."""
    with pytest.raises(ConfigError) as info:
        parse_config(_acme_config(**{key: value}), tmp_path / "r.toml")
    (problem,) = info.value.problems
    assert problem.path.startswith(f"acme.ca.{key}")
    assert fragment in problem.message


# --------------------------------------------------------------------------- URLs and anchors


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://ca.example/new-order", "must be https://"),
        ("https://evil.example/new-order", "is not the directory's host"),
        ("https://ca.example/" + "a" * (8 << 20), "refusing a URL of"),
        ("https://ca.example:99999/x", "malformed URL"),
    ],
)
def test_url_policy_refuses_off_host_plain_and_huge_urls(url: str, fragment: str) -> None:
    """A CA's URL must be https, on the directory's host, and of sane length; errors are short."""
    policy = UrlPolicy("https://ca.example/dir", ("cdn.example",))
    with pytest.raises(IssuanceError) as info:
        policy.check(url)
    assert fragment in str(info.value)
    assert len(str(info.value)) < 1000


def test_url_policy_allows_the_directory_host_allowed_hosts_and_loopback_http() -> None:
    """Same host, an allowed host, and plain http on loopback (a test CA) pass."""
    UrlPolicy("https://ca.example/dir", ("cdn.example",)).check("https://CA.example/order/1")
    UrlPolicy("https://ca.example/dir", ("cdn.example",)).check("https://cdn.example/cert/1")
    UrlPolicy("http://127.0.0.1:14000/dir").check("http://127.0.0.1:14000/order/1")


def _spec(tmp_path: Path, roots: list[x509.Certificate]) -> AcmeSpec:
    path = tmp_path / "roots.pem"
    path.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in roots))
    return AcmeSpec("ca", "https://ca.example/dir", trust_roots=path)


def test_a_chain_from_the_configured_root_verifies_and_a_foreign_one_is_refused(
    tmp_path: Path,
) -> None:
    """A leaf signed under the configured root passes; the same leaf (same key and names)
    signed by an unrelated CA is refused, whether or not that CA's certificates are sent."""
    now = datetime.now(UTC)
    ours, foreign = make_foreign_ca("ours"), make_foreign_ca("foreign")
    key = keys.generate_key(KeyType.ECDSA_P256).public_key()
    names = ["web.example.test"]
    trust = TrustAnchors(_spec(tmp_path, [ours.root]), FakeClock(now))
    valid = (now - timedelta(hours=1), now + timedelta(days=1))
    good = forge_leaf(ours, key, names, *valid)
    trust.verify([good, ours.intermediate], names)
    bad = forge_leaf(foreign, key, names, *valid)
    for chain in ([bad], [bad, foreign.intermediate], [bad, foreign.intermediate, foreign.root]):
        with pytest.raises(IssuanceError, match="does not verify to a trust anchor"):
            trust.verify(chain, names)
    with pytest.raises(IssuanceError, match="does not verify"):
        trust.verify([good, ours.intermediate], ["other.example.test"])


def test_garbage_pem_is_a_clear_issuance_error() -> None:
    """A download that is not a PEM chain says so, briefly."""
    with pytest.raises(IssuanceError, match="not a PEM certificate chain") as info:
        parse_chain(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n" * 1000)
    assert len(str(info.value)) < 400


# --------------------------------------------------------------------------- bounded bodies


def _response(body: bytes, headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.headers.update(headers)
    response.raw = urllib3.HTTPResponse(
        body=io.BytesIO(body), headers=headers, preload_content=False
    )
    return response


def test_a_body_past_the_cap_is_refused_while_streaming() -> None:
    """Without a Content-Length the body is read in pieces and refused once past the cap."""
    clock = FakeClock()
    with pytest.raises(IssuanceError, match="exceeds 1000 bytes; refused"):
        read_bounded(_response(b"x" * 5000, {}), "GET x", 10.0, clock, cap=1000)
    assert read_bounded(_response(b"ok", {}), "GET x", 10.0, clock, cap=1000) == b"ok"


def test_a_declared_oversize_or_compressed_body_is_refused_unread() -> None:
    """A Content-Length past the cap, or any Content-Encoding, is refused before reading."""
    clock = FakeClock()
    with pytest.raises(IssuanceError, match="answer of 5000 bytes exceeds"):
        read_bounded(_response(b"", {"Content-Length": "5000"}), "GET x", 10.0, clock, cap=1000)
    with pytest.raises(IssuanceError, match="gzip"):
        read_bounded(_response(b"", {"Content-Encoding": "gzip"}), "GET x", 10.0, clock)


def test_a_body_past_its_deadline_is_refused() -> None:
    """Once the monotonic deadline has passed, the read stops with a deadline error."""
    clock = FakeClock()
    clock.advance(timedelta(seconds=11))
    with pytest.raises(IssuanceError, match="did not arrive before the deadline"):
        read_bounded(_response(b"slow", {}), "GET x", 10.0, clock)
