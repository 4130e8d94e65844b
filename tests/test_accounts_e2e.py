"""Accounts end to end against a real Pebble: EAB, key rollover (and SIGKILL in the middle of
it), contact update, ``account show`` and ``account deactivate``, through the ``rotatord`` CLI."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest

from pebble import AriProxy, PebbleFactory, PebbleServer
from pebble.ari_proxy import DROP
from rotatord import cli
from rotatord.clock import SystemClock
from rotatord.config import load_config
from rotatord.core import keys
from rotatord.core.model import Http01Standalone, KeyType
from rotatord.issuing.account import account_dir
from rotatord.issuing.acme_issuer import AcmeIssuer
from rotatord.issuing.challenges.http01 import StandalonePool
from rotatord.issuing.challenges.solver import Solvers

pytestmark = pytest.mark.pebble

KEY_CHANGE_PATH = "/rollover-account-key"


def account_block(name: str, directory: str, pebble: PebbleServer, extra: str = "") -> str:
    return f"""
[acme.{name}]
directory = "{directory}"
ca_bundle = "{pebble.ca_bundle}"
trust_roots_url = "{pebble.roots_url}"
{extra}
[acme.{name}.budget]
orders = 1000000
certificates = 1000000
"""


def service_block(name: str, account: str, port: int, extra: str = "") -> str:
    return f"""
[services.{name}]
domains = ["{name}.example.test"]
account = {account}
{extra}
[services.{name}.challenge]
listen = "127.0.0.1:{port}"
"""


def write_config(path: Path, state: Path, body: str) -> Path:
    path.write_text(
        f"""
[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
control_socket = "{state}/control.sock"
{body}
"""
    )
    return path


def argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "rotatord", "-c", str(config), *args]


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (a subprocess costs ~1.5 s of imports; the kill tests use one)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["-c", str(config), *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def audit(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]


def show(config: Path, name: str) -> dict[str, Any]:
    res = run(config, "account", "show", name, "--json")
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)["accounts"][0]
    return doc


def regr(state: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((state / "accounts" / name / "regr.json").read_text())
    return doc


def test_eab_rollover_contacts_deactivate(pebble_factory: PebbleFactory, short_tmp: Path) -> None:
    """With EAB required, an account binds with its kid and HMAC (never written to any log or
    output), rolls its key over and keeps issuing with the new key, sends changed contacts, and
    once deactivated is refused rather than silently replaced."""
    hmac = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    pebble = pebble_factory(eab_keys={"kid-1": hmac})
    key_file = short_tmp / "eab.key"
    key_file.write_text(hmac + "\n")
    key_file.chmod(0o600)
    state = short_tmp / "state"
    eab = f'[acme.ca.eab]\nkid = "kid-1"\nhmac_key_file = "{key_file}"\n'

    def config(contact: str) -> Path:
        return write_config(
            short_tmp / "r.toml",
            state,
            account_block("ca", pebble.directory_url, pebble, f"contact = [{contact}]\n{eab}")
            + account_block("plain", pebble.directory_url, pebble)
            + service_block("web", '"ca"', pebble.http_port)
            + service_block("other", '"plain"', pebble.http_port),
        )

    cfg = config('"mailto:ops@example.test"')
    outputs: list[str] = []

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        res = run(cfg, *args)
        outputs.extend([res.stdout, res.stderr])
        assert res.returncode == 0, res.stderr
        return res

    ok("rotate", "web", "--force")
    no_eab = run(cfg, "rotate", "other", "--force")
    assert no_eab.returncode == 1
    assert "externalAccountRequired" in no_eab.stderr

    before = show(cfg, "ca")
    assert before["ca_status"] == "valid" and before["eab_kid"] == "kid-1"
    assert before["ca_contact"] == ["mailto:ops@example.test"]

    rolled = ok("account", "rollover", "ca")
    after = show(cfg, "ca")
    assert after["key_thumbprint"] != before["key_thumbprint"]
    assert after["uri"] == before["uri"], "a rollover keeps the account"
    assert after["ca_status"] == "valid" and not after["pending_key"]
    assert f"{before['key_thumbprint']} -> {after['key_thumbprint']}" in rolled.stdout
    rolled_events = [r for r in audit(state) if r["event"] == "account_key_rolled"]
    assert [(r["account"], r["old_key"], r["new_key"]) for r in rolled_events] == [
        ("ca", before["key_thumbprint"], after["key_thumbprint"])
    ]
    ok("rotate", "web", "--force")  # a rotation signed with the new key
    assert regr(state, "ca")["uri"] == before["uri"]

    cfg = config('"mailto:new@example.test", "mailto:two@example.test"')
    ok("rotate", "web", "--force")
    contacts = ["mailto:new@example.test", "mailto:two@example.test"]
    assert regr(state, "ca")["contact"] == contacts
    assert show(cfg, "ca")["ca_contact"] == contacts

    unconfirmed = run(cfg, "account", "deactivate", "ca")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    ok("account", "deactivate", "ca", "--yes")
    assert regr(state, "ca")["status"] == "deactivated"
    refused = run(cfg, "rotate", "web", "--force")
    assert refused.returncode == 1 and "deactivated" in refused.stderr
    assert regr(state, "ca")["uri"] == before["uri"], "no replacement account registered"

    seen = "".join(outputs) + no_eab.stderr + refused.stderr
    for path in [state / "audit.jsonl", *state.rglob("*.json")]:
        seen += path.read_text()
    assert hmac not in seen


def killed_rollover(
    cfg: Path, proxy: AriProxy, point: Literal["before_ca", "after_ca"]
) -> list[str]:
    """Run ``account rollover`` in a subprocess and SIGKILL it when its key-change request
    reaches the front: before Pebble sees it, or after Pebble answered (not relayed)."""
    proc = subprocess.Popen(
        argv(cfg, "account", "rollover", "ca"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    hits: list[str] = []

    def kill_before(method: str, path: str) -> int | None:
        if method == "POST" and path == KEY_CHANGE_PATH:
            hits.append(path)
            os.kill(proc.pid, signal.SIGKILL)
            return DROP
        return None

    def kill_after(
        method: str, path: str, body: bytes, status: int, headers: object, data: bytes
    ) -> bytes | None:
        # Only once Pebble took the key: a badNonce (Pebble rejects 5 % of nonces) is relayed.
        if method == "POST" and path == KEY_CHANGE_PATH and status == 200:
            hits.append(f"{path} {status}")
            os.kill(proc.pid, signal.SIGKILL)
            return None
        return data

    if point == "before_ca":
        proxy.before_forward = kill_before
    else:
        proxy.after_forward = kill_after
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proxy.before_forward = proxy.after_forward = None
    return hits


@pytest.mark.parametrize("point", ["before_ca", "after_ca"])
def test_sigkill_during_rollover_leaves_a_usable_account(
    pebble_server: PebbleServer, short_tmp: Path, point: Literal["before_ca", "after_ca"]
) -> None:
    """A rollover killed with SIGKILL as its key-change request reaches the CA (before the CA
    acts, or after the CA switched keys but before the client heard) leaves the pending key on
    disk; the next rotation asks the CA which key it knows, keeps that one, issues, and the
    account is the same one."""
    state = short_tmp / "state"
    with AriProxy(pebble_server) as proxy:
        cfg = write_config(
            short_tmp / "r.toml",
            state,
            account_block("ca", proxy.directory_url, pebble_server)
            + service_block("web", '"ca"', pebble_server.http_port),
        )
        first = run(cfg, "rotate", "web", "--force")
        assert first.returncode == 0, first.stderr
        old = show(cfg, "ca")

        hits = killed_rollover(cfg, proxy, point)
        assert len(hits) == 1, hits
        if point == "after_ca":
            assert hits == [f"{KEY_CHANGE_PATH} 200"], "Pebble took the new key"
        adir = state / "accounts" / "ca"
        assert (adir / "key.pending.json").exists(), "the new key was durable before the request"
        assert (adir / "key.pending.json").stat().st_mode & 0o777 == 0o600

        again = run(cfg, "rotate", "web", "--force")
        assert again.returncode == 0, again.stderr
        now = show(cfg, "ca")
        assert not (adir / "key.pending.json").exists()
        assert now["uri"] == old["uri"] and now["ca_status"] == "valid"
        if point == "before_ca":
            assert now["key_thumbprint"] == old["key_thumbprint"], "the CA never saw the new key"
        else:
            assert now["key_thumbprint"] != old["key_thumbprint"], "the CA's key was kept"
        # And the resolved account rolls over cleanly afterwards.
        final = run(cfg, "account", "rollover", "ca")
        assert final.returncode == 0, final.stderr


def test_a_running_issuer_settles_a_rollover_killed_after_the_ca_took_it(
    pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """The daemon's issuer, already bound to the account, finds the pending key a killed
    ``account rollover`` left after the CA switched keys, and signs its next order with the key
    the CA knows: same account, no re-registration."""
    state = short_tmp / "state"
    port = pebble_server.http_port
    with AriProxy(pebble_server) as proxy:
        cfg = write_config(
            short_tmp / "r.toml",
            state,
            account_block("ca", proxy.directory_url, pebble_server)
            + service_block("web", '"ca"', port),
        )
        spec = load_config(cfg).acme["ca"]
        pool = StandalonePool(linger=0)
        issuer = AcmeIssuer(spec, account_dir(state, "ca"), SystemClock(), Solvers(pool))
        challenge = Http01Standalone("127.0.0.1", port)
        csr = keys.make_csr(keys.generate_key(KeyType.ECDSA_P256), ["web.example.test"])
        try:
            issuer.issue(csr, ["web.example.test"], challenge)
            before = show(cfg, "ca")
            assert killed_rollover(cfg, proxy, "after_ca") == [f"{KEY_CHANGE_PATH} 200"]
            issuer.issue(csr, ["web.example.test"], challenge)
        finally:
            issuer.close()
        after = show(cfg, "ca")
        assert after["uri"] == before["uri"] and after["ca_status"] == "valid"
        assert after["key_thumbprint"] != before["key_thumbprint"]
        assert not after["pending_key"]
