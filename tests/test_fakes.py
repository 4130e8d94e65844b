"""Tests of the fakes in ``tests/fakes.py``: a fake that lies makes every test built on it lie."""

from __future__ import annotations

import errno
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from rotatord import fsutil
from rotatord.clock import FakeClock
from rotatord.core import keys
from rotatord.core.errors import IssuanceError, ReloadError, VerificationError
from rotatord.core.model import CommandReload, Http01Standalone, KeyType, ProbeSpec
from rotatord.deploy.probe import Prober
from rotatord.deploy.reload import Reloader
from rotatord.fsutil import FsOps
from rotatord.issuing import Issuer
from tests.certs import T0, cert_to_pem
from tests.fakes import (
    BadMode,
    FakeCA,
    FakeProber,
    FaultyFsOps,
    RecordingReloader,
    served_from_reloader,
)

NAMES = ("example.test", "www.example.test")
CHALLENGE = Http01Standalone(port=5002)
ACME = "urn:ietf:params:acme:error:"
ACTION = CommandReload(("nginx", "-s", "reload"))
SPEC = ProbeSpec(host="127.0.0.1", port=443)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def ca(clock: FakeClock) -> FakeCA:
    return FakeCA(clock)


def order(ca: FakeCA) -> tuple[keys.PrivateKey, list[x509.Certificate]]:
    """Issue for a fresh key; return the key and the parsed leaf + chain."""
    key = keys.generate_key(KeyType.ECDSA_P256)
    issued = ca.issue(keys.make_csr(key, NAMES), NAMES, CHALLENGE)
    return key, keys.split_pem_chain(issued.cert_pem + issued.chain_pem)


def test_fakes_implement_the_ports(clock: FakeClock) -> None:
    """Each fake structurally implements its rotatord port (mypy checks these assignments)."""
    ports: tuple[Issuer, Reloader, Prober, FsOps] = (
        FakeCA(clock),
        RecordingReloader(),
        FakeProber(lambda spec, sni: None),
        FaultyFsOps(),
    )
    assert len(ports) == 4


# --------------------------------------------------------------------------------------------
# FakeCA
# --------------------------------------------------------------------------------------------


def test_issued_bundle_verifies(ca: FakeCA, clock: FakeClock) -> None:
    """A good order yields leaf + intermediate that verify_bundle accepts for the CSR's key."""
    key, chain = order(ca)
    keys.verify_bundle(key, chain, NAMES, clock.now())
    assert chain[1] == ca.ca.cert
    assert ca.issued == [chain[0]]
    assert [(o.outcome, o.serial, o.names) for o in ca.orders] == [
        ("issued", chain[0].serial_number, NAMES)
    ]


def test_validity_follows_clock_lifetime_and_backdate(clock: FakeClock) -> None:
    """notBefore is the fake clock's now minus backdate; notAfter is notBefore plus lifetime."""
    clock.advance(timedelta(days=3))
    ca = FakeCA(clock, lifetime=timedelta(minutes=5), backdate=timedelta(seconds=30))
    leaf = order(ca)[1][0]
    assert leaf.not_valid_before_utc == T0 + timedelta(days=3, seconds=-30)
    assert leaf.not_valid_after_utc == leaf.not_valid_before_utc + timedelta(minutes=5)


def test_concurrent_orders_get_unique_serials(ca: FakeCA) -> None:
    """Orders from several threads at once are all issued and recorded, with distinct serials."""
    threads = [threading.Thread(target=order, args=(ca,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    serials = {c.serial_number for c in ca.issued}
    assert ca.order_count == ca.issued_count == len(serials) == 8
    assert len({s & 0xFFFFFFFF for s in serials}) == 8  # the store names dirs by the low 32 bits
    assert sorted(o.number for o in ca.orders) == list(range(1, 9))


def test_csr_names_must_match_order(ca: FakeCA) -> None:
    """A CSR for other names than the order's is refused as a non-retryable badCSR."""
    key = keys.generate_key(KeyType.ECDSA_P256)
    with pytest.raises(IssuanceError) as info:
        ca.issue(keys.make_csr(key, ["other.test"]), NAMES, CHALLENGE)
    assert (info.value.retryable, info.value.problem_type) == (False, ACME + "badCSR")
    assert ca.orders[0].outcome == "failed" and ca.orders[0].error is info.value
    assert ca.issued_count == 0


def test_down_raises_retryable_and_is_recorded(ca: FakeCA) -> None:
    """down=True fails orders and revocations with a retryable, status-less IssuanceError."""
    ca.down = True
    with pytest.raises(IssuanceError) as info:
        order(ca)
    err = info.value
    assert (str(err), err.retryable, err.status) == ("CA unreachable", True, None)
    with pytest.raises(IssuanceError):
        ca.revoke(cert_to_pem(ca.ca.cert), 0)
    ca.down = False
    order(ca)
    assert [o.outcome for o in ca.orders] == ["failed", "issued"]


def test_rate_limit_until_retry_after(ca: FakeCA, clock: FakeClock) -> None:
    """rate_limit gives 429 rateLimited with retry_after until the clock reaches that instant."""
    until = T0 + timedelta(hours=1)
    ca.rate_limit(until)
    with pytest.raises(IssuanceError) as info:
        order(ca)
    err = info.value
    assert (err.retryable, err.problem_type, err.status, err.retry_after) == (
        True,
        ACME + "rateLimited",
        429,
        until,
    )
    clock.advance(timedelta(hours=1))
    order(ca)
    assert ca.issued_count == 1


def test_fail_next_fails_exactly_n_orders(ca: FakeCA) -> None:
    """fail_next(n, e) raises e for the next n orders only, and records each failure."""
    boom = IssuanceError("server error", retryable=True, status=500)
    ca.fail_next(2, boom)
    for _ in range(2):
        with pytest.raises(IssuanceError) as info:
            order(ca)
        assert info.value is boom
    order(ca)
    assert [o.outcome for o in ca.orders] == ["failed", "failed", "issued"]


def test_delay_advances_fake_clock(ca: FakeCA, clock: FakeClock) -> None:
    """A slow CA moves the fake clock by delay and dates the certificate after it."""
    ca.delay = timedelta(seconds=40)
    leaf = order(ca)[1][0]
    assert clock.now() == T0 + timedelta(seconds=40) == leaf.not_valid_before_utc
    assert ca.orders[0].at == T0


def test_before_issue_hook_sees_order_number(ca: FakeCA) -> None:
    """before_issue gets the 1-based order number first; what it raises fails that order."""
    seen: list[int] = []

    def hook(n: int) -> None:
        seen.append(n)
        if n == 2:
            raise RuntimeError("crash at order 2")

    ca.before_issue = hook
    order(ca)
    with pytest.raises(RuntimeError):
        order(ca)
    assert seen == [1, 2]
    assert [o.outcome for o in ca.orders] == ["issued", "failed"]


@pytest.mark.parametrize("mode", ["wrong_key", "wrong_names", "expired"])
def test_bad_response_fails_verification_once(ca: FakeCA, clock: FakeClock, mode: BadMode) -> None:
    """Each bad mode spoils the next certificate so verify_bundle rejects it, then resets."""
    ca.bad = mode
    key, chain = order(ca)
    with pytest.raises(VerificationError):
        keys.verify_bundle(key, chain, NAMES, clock.now())
    assert ca.orders[0].bad == mode and ca.bad is None
    key, chain = order(ca)
    keys.verify_bundle(key, chain, NAMES, clock.now())


def test_unrelated_ca_signs_with_another_issuer(ca: FakeCA) -> None:
    """bad='unrelated_ca' returns a self-consistent chain from a CA other than ca.ca."""
    ca.bad = "unrelated_ca"
    _, chain = order(ca)
    assert chain[0].issuer != ca.ca.cert.subject
    chain[0].verify_directly_issued_by(ca.unrelated_ca.cert)
    with pytest.raises(ValueError):
        chain[0].verify_directly_issued_by(ca.ca.cert)


def test_ari(ca: FakeCA, clock: FakeClock) -> None:
    """No ARI by default; set_window advertises it; replaces is accepted once, and only with ARI."""
    _, chain = order(ca)
    cert_id = keys.ari_cert_id(chain[0])
    assert cert_id is not None
    assert not ca.ari_supported() and ca.renewal_info(cert_id) is None
    csr = keys.make_csr(keys.generate_key(KeyType.ECDSA_P256), NAMES)

    def renew() -> str | None:
        return ca.issue(csr, NAMES, CHALLENGE, replaces=cert_id).replaces

    assert renew() is None
    ca.set_window(T0, T0 + timedelta(days=1), retry_after=T0 + timedelta(hours=6))
    info = ca.renewal_info(cert_id)
    assert ca.ari_supported() and info is not None and info.end == T0 + timedelta(days=1)
    assert renew() == cert_id
    assert renew() is None  # already replaced
    assert ca.ari_queries == [cert_id, cert_id]
    assert ca.orders[1].replaces == cert_id
    ca.window = None  # ARI without a scripted window: the last part of the cert's lifetime
    default = ca.renewal_info(cert_id)
    assert default is not None and default.start == T0 + timedelta(days=60)
    with pytest.raises(IssuanceError):
        ca.renewal_info("unknown.id")


def test_revoke_records_and_refuses_twice(ca: FakeCA) -> None:
    """revoke records (serial, reason); a second revocation is alreadyRevoked."""
    _, chain = order(ca)
    ca.revoke(cert_to_pem(chain[0]), 1)
    assert ca.revoked == [(chain[0].serial_number, 1)]
    with pytest.raises(IssuanceError) as info:
        ca.revoke(cert_to_pem(chain[0]), 1)
    assert info.value.problem_type == ACME + "alreadyRevoked"


# --------------------------------------------------------------------------------------------
# RecordingReloader and FakeProber
# --------------------------------------------------------------------------------------------


def env_for(version: str, directory: str = "/v") -> dict[str, str]:
    return {
        "ROTATORD_SERVICE": "web",
        "ROTATORD_DOMAINS": ",".join(NAMES),
        "ROTATORD_VERSION": version,
        "ROTATORD_VERSION_DIR": directory,
    }


def test_reloader_records_and_serves() -> None:
    """A successful run is recorded with a copy of env and moves the served version."""
    reloader = RecordingReloader()
    env = env_for("v1")
    result = reloader.run(ACTION, env)
    env["ROTATORD_VERSION"] = "mutated"
    assert result.returncode == 0
    call = reloader.calls[0]
    assert (call.action, call.version, call.env["ROTATORD_VERSION"]) == (
        "command:nginx -s reload",
        "v1",
        "v1",
    )
    assert reloader.served_version == {"web": "v1"} and reloader.served_dir == {"web": "/v"}


def test_reloader_scripted_failures_then_success() -> None:
    """fail_next and timeout_next raise ReloadError in order and leave the served state alone."""
    reloader = RecordingReloader()
    reloader.fail_next(1, returncode=3, stderr="bad config")
    reloader.timeout_next(1)
    with pytest.raises(ReloadError) as first:
        reloader.run(ACTION, env_for("v1"))
    assert (first.value.returncode, first.value.stderr_tail) == (3, "bad config")
    with pytest.raises(ReloadError) as second:
        reloader.run(ACTION, env_for("v1"))
    assert second.value.timed_out
    assert reloader.served_version == {}
    reloader.run(ACTION, env_for("v1"))
    assert [c.error is None for c in reloader.calls] == [False, False, True]


def test_reloader_stuck_and_hook() -> None:
    """A stuck server reports success but keeps serving the old version; on_run sees each run."""
    reloader = RecordingReloader()
    seen: list[str | None] = []
    reloader.on_run = lambda action, env: seen.append(env.get("ROTATORD_VERSION"))
    reloader.run(ACTION, env_for("v1"))
    reloader.stuck = True
    reloader.run(ACTION, env_for("v2"))
    assert seen == ["v1", "v2"] and reloader.served_version == {"web": "v1"}


def test_prober_ok_only_on_matching_fingerprint() -> None:
    """FakeProber is ok exactly when served() returns the expected fingerprint, and records it."""
    served: dict[str, str | None] = {"example.test": "aa"}
    prober = FakeProber(lambda spec, sni: served[sni])
    assert prober.probe(SPEC, "example.test", "aa", 5.0).ok
    bad = prober.probe(SPEC, "example.test", "bb", 5.0)
    assert not bad.ok and bad.served_fingerprint == "aa" and bad.endpoint == "127.0.0.1:443"
    served["example.test"] = None
    assert prober.probe(SPEC, "example.test", "aa", 5.0).error == "nothing served"
    assert [c.expected for c in prober.calls] == ["aa", "bb", "aa"]


def test_served_from_reloader_reads_the_loaded_version(ca: FakeCA, tmp_path: Path) -> None:
    """Through served_from_reloader the probe sees the reloaded dir's cert.pem, not a stuck one."""
    _, chain = order(ca)
    (tmp_path / "cert.pem").write_bytes(cert_to_pem(chain[0]))
    reloader = RecordingReloader()
    prober = FakeProber(served_from_reloader(reloader))
    fingerprint = keys.cert_fingerprint(chain[0])
    assert not prober.probe(SPEC, "www.example.test", fingerprint, 1.0).ok
    reloader.run(ACTION, env_for("v1", str(tmp_path)))
    assert prober.probe(SPEC, "www.example.test", fingerprint, 1.0).ok


# --------------------------------------------------------------------------------------------
# FaultyFsOps
# --------------------------------------------------------------------------------------------


def test_faulty_ops_overrides_every_fsops_method() -> None:
    """Every public FsOps method is overridden, so no syscall bypasses the fault injection."""
    public = {n for n, v in vars(FsOps).items() if callable(v) and not n.startswith("_")}
    assert public <= set(vars(FaultyFsOps))


def test_no_fault_behaves_like_fsops(tmp_path: Path) -> None:
    """Without faults atomic_write works and each syscall is counted."""
    ops = FaultyFsOps()
    fsutil.atomic_write(tmp_path / "f", b"data", 0o600, ops)
    assert (tmp_path / "f").read_bytes() == b"data"
    assert ops.calls == {"open_excl": 1, "write": 1, "fsync": 1, "rename": 1, "fsync_dir": 1}


def test_full_disk_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    """full=True makes atomic_write raise ENOSPC and leaves the old file and no temp file."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(OSError) as info:
        fsutil.atomic_write(target, b"new", 0o600, FaultyFsOps(full=True))
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["f"] and target.read_bytes() == b"old"


def test_fail_once_mid_write_cleans_up(tmp_path: Path) -> None:
    """A one-shot ENOSPC on write (temp file already created) fires once and leaves no temp."""
    ops = FaultyFsOps()
    ops.fail_once("write", errno.ENOSPC, path_contains=".f")
    with pytest.raises(OSError) as info:
        fsutil.atomic_write(tmp_path / "f", b"new", 0o600, ops)
    assert info.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []
    fsutil.atomic_write(tmp_path / "f", b"new", 0o600, ops)
    assert (tmp_path / "f").read_bytes() == b"new" and len(ops.fired) == 1


def test_open_lock_on_read_only_and_full(tmp_path: Path) -> None:
    """read_only makes open_lock fail with EROFS even for an existing file; full does not."""
    lock = tmp_path / "lock"
    lock.touch()
    with pytest.raises(OSError) as info:
        FaultyFsOps(read_only=True).open_lock(lock)
    assert info.value.errno == errno.EROFS
    os.close(FaultyFsOps(full=True).open_lock(lock))
    with pytest.raises(OSError) as full:
        FaultyFsOps(full=True).open_lock(tmp_path / "new-lock")
    assert full.value.errno == errno.ENOSPC


def test_eio_at_fails_every_call(tmp_path: Path) -> None:
    """eio_at fails the named method with EIO on every call, and counts each attempt."""
    ops = FaultyFsOps(eio_at={"fsync_dir"})
    for _ in range(2):
        with pytest.raises(OSError) as info:
            ops.fsync_dir(tmp_path)
        assert info.value.errno == errno.EIO
    assert ops.calls["fsync_dir"] == 2
