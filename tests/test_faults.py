"""Fault injection: storage faults and ACME faults never cost the pair that is in service.

Storage: a state dir on a tiny tmpfs (real ENOSPC), EIO injected at every step of staging and
activation through the store's ``FsOps`` seam, and once into the real syscalls by strace's fault
injection. Each time the old pair stays current and intact, ``rotation_failed`` is audited with
the error, the retry ladder's next attempt is recorded, and no temp entry is left behind.

ACME: a CA rejecting half of all nonces, a CA killed mid-order and restarted with a new
identity, and a CA front answering 503, hanging up or stalling: every issuance eventually
succeeds, after the retries the design promises.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pebble import AriProxy, PebbleFactory, PebbleServer, roots_url_for
from pebble.ari_proxy import DROP
from rotatord.clock import SystemClock
from rotatord.config import load_config
from rotatord.core.model import DEFAULT_RETRY_LADDER, Config
from rotatord.core.text import serial_text
from rotatord.daemon import IssuerCache, build_rotator
from rotatord.deploy.reload import SubprocessReloader
from rotatord.fsutil import FsOps
from rotatord.observe.audit import AuditLog
from rotatord.rotation import Rotator
from tests.daemon_harness import (
    DaemonProcess,
    Record,
    events,
    read_audit,
    run_cli,
    service,
    wait_for,
)
from tests.daemon_harness import write_config as harness_config
from tests.unavailable import unavailable

PAGE: Final = 4096
EIO_TEXT: Final = os.strerror(errno.EIO)  # "Input/output error"
ENOSPC_TEXT: Final = os.strerror(errno.ENOSPC)  # "No space left on device"


# --------------------------------------------------------------------------------------------
# Config, store inspection and audit helpers
# --------------------------------------------------------------------------------------------


def write_config(
    path: Path,
    *,
    directory: str,
    ca_bundle: Path,
    state: Path,
    audit: Path,
    services: str,
    daemon_extra: str = "",
    acme_extra: str = "",
) -> Path:
    """A config whose audit log and control socket may live outside ``state``."""
    path.write_text(
        f"""
[daemon]
state_dir = "{state}"
audit_log = "{audit}"
control_socket = "{audit.parent}/ctl.sock"
{daemon_extra}

[acme.pebble]
directory = "{directory}"
ca_bundle = "{ca_bundle}"
trust_roots_url = "{roots_url_for(ca_bundle)}"
{acme_extra}

[acme.pebble.budget]
orders = 1000000
certificates = 1000000

{services}
"""
    )
    return path


@dataclass(frozen=True)
class Snapshot:
    """What ``current`` pointed to, and every byte of the files it held."""

    target: str
    files: dict[str, bytes]
    serial: int
    versions: frozenset[str]


def snapshot(service_dir: Path) -> Snapshot:
    """The service's current pair as it is now."""
    target = os.readlink(service_dir / "current")
    current = service_dir / "current"
    files = {p.name: p.read_bytes() for p in sorted(current.iterdir())}
    leaf = x509.load_pem_x509_certificate(files["cert.pem"])
    versions = frozenset(os.listdir(service_dir / "versions"))
    return Snapshot(target, files, leaf.serial_number, versions)


def key_matches_cert(version_dir: Path) -> bool:
    """True when the directory's private key is the one its certificate certifies."""
    key = serialization.load_pem_private_key((version_dir / "privkey.pem").read_bytes(), None)
    leaf = x509.load_pem_x509_certificate((version_dir / "cert.pem").read_bytes())
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki) == leaf.public_key().public_bytes(der, spki)


def temp_leftovers(root: Path) -> list[str]:
    """Every temp entry (``.tmp-*``, ``.current.tmp-*``, ``.status.json.tmp-*``) under root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in itertools.chain(dirnames, filenames):
            if ".tmp-" in name:
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def read_status(service_dir: Path) -> dict[str, Any]:
    doc = json.loads((service_dir / "status.json").read_text())
    assert isinstance(doc, dict)
    return doc


def assert_old_pair_survived(service_dir: Path, before: Snapshot) -> None:
    """``current`` still names the old version, whose files are byte-for-byte unchanged."""
    assert os.readlink(service_dir / "current") == before.target, "current moved"
    after = snapshot(service_dir)
    assert after.files == before.files, "the old pair's files changed"
    assert key_matches_cert(service_dir / "current")


def assert_failure_recorded(
    records: list[Record],
    service_dir: Path,
    rotation_id: str | None,
    error_text: str,
    ladder_step: timedelta,
) -> Record:
    """One ``rotation_failed`` with ``error_text``, failures=1 and the ladder's first step, the
    same in status.json; no ``certificate_activated`` for that rotation."""
    failed = events(records, "rotation_failed", "web")
    if rotation_id is not None:
        failed = [r for r in failed if r["rotation_id"] == rotation_id]
    assert len(failed) == 1, failed
    record = failed[0]
    assert error_text in record["error"], record
    assert record["retryable"] is True
    assert record["failures"] == 1
    attempt = datetime.fromisoformat(record["attempt_at"])
    next_at = datetime.fromisoformat(record["next_attempt"])
    assert next_at - attempt == ladder_step
    rid = record["rotation_id"]
    assert not [r for r in events(records, "certificate_activated") if r["rotation_id"] == rid]
    status = read_status(service_dir)
    assert status["failures"] == 1
    assert status["last_result"] == "failed"
    assert error_text in status["last_error"]
    assert status["next_attempt"] == record["next_attempt"]
    return record


def make_rotator(config: Config, ops: FsOps) -> Rotator:
    """What ``build_rotator`` builds (less the TLS prober: no probes are configured), with
    ``ops`` as the store's syscall seam."""
    clock = SystemClock()
    issuers = IssuerCache(config, clock)
    return Rotator(
        config,
        clock=clock,
        audit=AuditLog(config.daemon.audit_log, clock, echo=False),
        issuer_for=issuers,
        reloader=SubprocessReloader(),
        ops=ops,
        on_close=issuers.close,
    )


# --------------------------------------------------------------------------------------------
# EIO through the store's FsOps seam
# --------------------------------------------------------------------------------------------

PathTest = Callable[[Path], bool]


def _staged_file(name: str) -> PathTest:
    def test(path: Path) -> bool:
        return (
            path.name == name
            and path.parent.name.startswith(".tmp-")
            and path.parent.parent.name == "versions"
        )

    return test


def _staging_dir(path: Path) -> bool:
    return path.name.startswith(".tmp-") and path.parent.name == "versions"


def _versions_dir(path: Path) -> bool:
    return path.name == "versions"


def _current_temp(path: Path) -> bool:
    return path.name.startswith(".current.tmp-")


def _service_dir(path: Path) -> bool:
    return path.parent.name == "services"


@dataclass(frozen=True)
class Site:
    """Where to fail: the first call of ``method`` whose path passes ``touches``."""

    name: str
    method: str
    touches: PathTest
    # Only once this method has been called since arming (the service dir is also fsynced by
    # status and journal writes before the flip; this site is the fsync *after* it).
    after: str | None = None


#: Every step of stage() and activate(), in the order they run.
SITES: Final = [
    Site("mkdir-staging-dir", "mkdir", _staging_dir),
    Site("open_excl-privkey", "open_excl", _staged_file("privkey.pem")),
    Site("write-privkey", "write", _staged_file("privkey.pem")),
    Site("write-chain", "write", _staged_file("chain.pem")),
    Site("fsync-cert", "fsync", _staged_file("cert.pem")),
    Site("fsync-meta", "fsync", _staged_file("meta.json")),
    Site("fsync_dir-staging-dir", "fsync_dir", _staging_dir),
    Site("rename-into-versions", "rename", _staging_dir),
    Site("fsync_dir-versions", "fsync_dir", _versions_dir),
    Site("symlink-current-temp", "symlink", _current_temp),
    Site("replace-current", "replace", _current_temp),
    Site("fsync_dir-after-replace", "fsync_dir", _service_dir, after="replace"),
]


class FaultyOps(FsOps):
    """FsOps that, once armed, fails one chosen call with EIO (then behaves again)."""

    def __init__(self) -> None:
        self.site: Site | None = None
        self.fired: list[str] = []
        self._fd_paths: dict[int, Path] = {}
        self._lock = threading.Lock()

    def arm(self, site: Site) -> None:
        self.site = site
        self.seen: set[str] = set()

    def _maybe_fail(self, method: str, path: Path | None) -> None:
        with self._lock:
            site = self.site
            if site is not None:
                self.seen.add(method)
            if site is None or site.method != method or path is None or not site.touches(path):
                return
            if site.after is not None and site.after not in getattr(self, "seen", set()):
                return
            self.site = None  # one shot: status.json and the retry must still be writable
            self.fired.append(f"{method} {path}")
        raise OSError(errno.EIO, EIO_TEXT, str(path))

    def mkdir(self, path: Path, mode: int) -> None:
        self._maybe_fail("mkdir", path)
        super().mkdir(path, mode)

    def open_excl(self, path: Path, mode: int, uid: int = -1, gid: int = -1) -> int:
        self._maybe_fail("open_excl", path)
        fd = super().open_excl(path, mode, uid, gid)
        with self._lock:
            self._fd_paths[fd] = path
        return fd

    def write(self, fd: int, data: bytes) -> None:
        self._maybe_fail("write", self._fd_paths.get(fd))
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync", self._fd_paths.get(fd))
        super().fsync(fd)

    def fsync_dir(self, path: Path) -> None:
        self._maybe_fail("fsync_dir", path)
        super().fsync_dir(path)

    def rename(self, src: Path, dst: Path) -> None:
        self._maybe_fail("rename", src)
        super().rename(src, dst)

    def symlink(self, target: str, path: Path) -> None:
        self._maybe_fail("symlink", path)
        super().symlink(target, path)

    def replace(self, src: Path, dst: Path) -> None:
        self._maybe_fail("replace", src)
        super().replace(src, dst)


@pytest.fixture
def faulty_rotator(
    pebble_server: PebbleServer, short_tmp: Path
) -> Iterator[tuple[Rotator, FaultyOps, Path]]:
    """An in-process Rotator over FaultyOps (disarmed) with a first pair already current."""
    state = short_tmp / "state"
    config = load_config(
        harness_config(
            short_tmp / "r.toml", pebble_server, state, service("web", pebble_server.http_port)
        )
    )
    ops = FaultyOps()
    rotator = make_rotator(config, ops)
    try:
        first = rotator.rotate("web")
        assert first.outcome == "rotated", first.error
        yield rotator, ops, state
    finally:
        rotator.close()


@pytest.mark.pebble
@pytest.mark.parametrize("site", SITES, ids=[s.name for s in SITES])
def test_io_error_at_any_store_step_keeps_the_old_pair(
    faulty_rotator: tuple[Rotator, FaultyOps, Path], site: Site
) -> None:
    """EIO at any step of staging or activation: the old pair stays current and intact, the error
    is audited as rotation_failed with the ladder's first retry, no temp entry is left, and the
    next attempt on a healthy disk rotates."""
    rotator, ops, state = faulty_rotator
    service_dir = state / "services" / "web"
    before = snapshot(service_dir)
    ops.arm(site)

    result = rotator.rotate("web", force=True)

    assert len(ops.fired) == 1, f"the fault at {site.name} was never reached"
    assert result.outcome == "failed", result
    assert result.retryable is True
    assert EIO_TEXT in (result.error or "")
    assert_old_pair_survived(service_dir, before)
    assert temp_leftovers(state) == []
    records = read_audit(state / "audit.jsonl")
    assert_failure_recorded(
        records, service_dir, result.rotation_id, EIO_TEXT, DEFAULT_RETRY_LADDER[0]
    )

    again = rotator.rotate("web", force=True)
    assert again.outcome == "rotated", again.error
    assert read_status(service_dir)["failures"] == 0
    assert key_matches_cert(service_dir / "current")


@pytest.mark.pebble
@pytest.mark.parametrize("site", SITES, ids=[s.name for s in SITES])
def test_failed_rotation_leaves_no_key_of_its_own(
    faulty_rotator: tuple[Rotator, FaultyOps, Path], site: Site
) -> None:
    """After EIO at any store step, the failed rotation's new key is not left on disk: versions/
    holds exactly what it held before (a never-activated key is a secret nobody audits)."""
    rotator, ops, state = faulty_rotator
    service_dir = state / "services" / "web"
    before = snapshot(service_dir)
    ops.arm(site)

    result = rotator.rotate("web", force=True)

    assert len(ops.fired) == 1
    assert result.outcome == "failed"
    assert frozenset(os.listdir(service_dir / "versions")) == before.versions


# --------------------------------------------------------------------------------------------
# ENOSPC on a real, tiny tmpfs
# --------------------------------------------------------------------------------------------

_NOT_PERMITTED: Final = ("permission denied", "not permitted", "must be superuser", "only root")


@pytest.fixture
def tiny_tmpfs(short_tmp: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at ``short_tmp/state`` for the test, unmounted at teardown."""
    mountpoint = short_tmp / "state"
    mountpoint.mkdir()
    if shutil.which("mount") is None:
        unavailable("mount(8) is not installed")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        why = f"cannot mount a tmpfs: {proc.stderr.strip()}"
        if os.geteuid() != 0 or any(s in proc.stderr.lower() for s in _NOT_PERMITTED):
            unavailable(why + " (EPERM: needs root or CAP_SYS_ADMIN)")
        pytest.fail(why)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill_leaving(mountpoint: Path, free_pages: int) -> Path:
    """Fill the filesystem with one file, then give back exactly ``free_pages`` pages."""
    filler = mountpoint / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = b"\0" * PAGE
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        size = os.fstat(fd).st_size // PAGE * PAGE
        os.ftruncate(fd, size - free_pages * PAGE)
    finally:
        os.close(fd)
    assert os.statvfs(mountpoint).f_bavail == free_pages
    return filler


@pytest.mark.pebble
def test_enospc_while_staging_keeps_the_old_pair(
    pebble_server: PebbleServer, short_tmp: Path, tiny_tmpfs: Path
) -> None:
    """With the state dir's tmpfs full, `rotate --force` exits 1: the old pair stays current and
    intact, rotation_failed says "No space left", status.json records the retry, no temp entry is
    left; once space is back the next rotation succeeds."""
    state = tiny_tmpfs
    audit = short_tmp / "log" / "audit.jsonl"  # outside the full filesystem
    config = write_config(
        short_tmp / "r.toml",
        directory=pebble_server.directory_url,
        ca_bundle=pebble_server.ca_bundle,
        state=state,
        audit=audit,
        services=service("web", pebble_server.http_port),
    )
    first = run_cli(config, "rotate", "web")
    assert first.returncode == 0, first.stderr
    service_dir = state / "services" / "web"
    before = snapshot(service_dir)
    # Two pages: the new key and certificate fit, the chain does not. The staged files are
    # removed again, which leaves room to record the failure in status.json.
    filler = fill_leaving(state, free_pages=2)

    failed = run_cli(config, "rotate", "web", "--force")

    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert ENOSPC_TEXT in failed.stderr
    assert_old_pair_survived(service_dir, before)
    assert temp_leftovers(state) == []
    assert frozenset(os.listdir(service_dir / "versions")) == before.versions
    assert_failure_recorded(
        read_audit(audit), service_dir, None, ENOSPC_TEXT, DEFAULT_RETRY_LADDER[0]
    )

    filler.unlink()
    again = run_cli(config, "rotate", "web", "--force")
    assert again.returncode == 0, again.stderr
    assert read_status(service_dir)["failures"] == 0
    assert os.readlink(service_dir / "current") != before.target


# --------------------------------------------------------------------------------------------
# EIO in the real syscalls, injected by strace
# --------------------------------------------------------------------------------------------

_TRACE_LINE: Final = re.compile(r"^(\d+)\s+(fsync|fdatasync|rename|renameat|renameat2)\((.*)$")
SYSCALL_SETS: Final = {"fsync": "fsync,fdatasync", "rename": "rename,renameat,renameat2"}


def _strace(*args: str | Path, log: str | Path) -> list[str]:
    return ["strace", "-f", "-qq", *map(str, args), "-o", str(log)]


def _rotatord_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "rotatord", "-c", str(config), "rotate", "web", "--force"]


def first_staging_call(trace: str) -> tuple[str, int]:
    """(syscall, its ordinal in its own thread) of the first traced call on a staged entry.

    strace counts ``when=`` per syscall and per tracee, so the ordinal is per (tid, syscall).
    """
    counts: dict[tuple[str, str], int] = {}
    for line in trace.splitlines():
        match = _TRACE_LINE.match(line)
        if match is None:
            continue
        tid, name, args = match.groups()
        counts[tid, name] = counts.get((tid, name), 0) + 1
        if "/versions/.tmp-" in args:
            return name, counts[tid, name]
    raise AssertionError(f"no staging call in the trace:\n{trace[-3000:]}")


@pytest.mark.pebble
@pytest.mark.parametrize("syscall", list(SYSCALL_SETS))
def test_strace_injected_eio_keeps_the_old_pair(
    pebble_server: PebbleServer, short_tmp: Path, syscall: str
) -> None:
    """EIO injected by strace into the real fsync/rename of a staged version: `rotate --force`
    exits 1, the old pair stays current and intact, the error is audited, no temp entry is left."""
    if shutil.which("strace") is None:
        unavailable("strace is not installed ('apt-get install -y strace')")
    state = short_tmp / "state"
    config = harness_config(
        short_tmp / "r.toml", pebble_server, state, service("web", pebble_server.http_port)
    )
    assert run_cli(config, "rotate", "web").returncode == 0
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no .pyc renames in the count

    # A traced, successful rotation tells which call number is the first one on a staged entry;
    # the next rotation makes the same calls in the same order up to there.
    log = short_tmp / "trace.log"
    traced = subprocess.run(
        [*_strace("-y", "-e", f"trace={SYSCALL_SETS[syscall]}", log=log), *_rotatord_argv(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert traced.returncode == 0, traced.stderr
    name, when = first_staging_call(log.read_text())

    service_dir = state / "services" / "web"
    before = snapshot(service_dir)
    injected = subprocess.run(
        [
            # strace 6.1 injects only into traced calls: "-e trace=none" would inject nothing.
            *_strace(
                "-y", "-e", f"trace={name}", "-e", f"inject={name}:error=EIO:when={when}", log=log
            ),
            *_rotatord_argv(config),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    hits = [line for line in log.read_text().splitlines() if "(INJECTED)" in line]
    assert len(hits) == 1 and "/versions/.tmp-" in hits[0], hits  # it hit staging, once
    assert injected.returncode == 1, (injected.stdout, injected.stderr)
    assert EIO_TEXT in injected.stderr
    assert_old_pair_survived(service_dir, before)
    assert temp_leftovers(state) == []
    assert_failure_recorded(
        read_audit(state / "audit.jsonl"), service_dir, None, EIO_TEXT, DEFAULT_RETRY_LADDER[0]
    )


# --------------------------------------------------------------------------------------------
# ACME faults
# --------------------------------------------------------------------------------------------

NONCE_SERVICES: Final = 20
#: POSTs one order needs when no nonce is rejected (newOrder, authz, challenge, authz poll,
#: finalize, order poll, certificate); at 50 % rejection each takes two tries on average.
CLEAN_POSTS_PER_ORDER: Final = 7


@pytest.mark.pebble
def test_half_of_all_nonces_rejected_still_issues_every_certificate(
    pebble_factory: PebbleFactory, short_tmp: Path
) -> None:
    """With Pebble rejecting 50 % of good nonces (PEBBLE_WFE_NONCEREJECT=50), 20 of 20 issuances
    succeed: badNonce is retried with a fresh nonce."""
    pebble = pebble_factory(nonce_reject=50)
    names = [f"s{i:02d}" for i in range(NONCE_SERVICES)]
    state = short_tmp / "state"
    config = harness_config(
        short_tmp / "r.toml", pebble, state, "".join(service(n, pebble.http_port) for n in names)
    )
    rotator = build_rotator(load_config(config))
    try:
        results = rotator.rotate_batch(names, force=True)
    finally:
        rotator.close()

    failed = {r.service: r.error for r in results if r.outcome != "rotated"}
    assert not failed, failed
    finished = events(read_audit(state / "audit.jsonl"), "rotation_finished")
    assert sorted(r["service"] for r in finished if r["outcome"] == "rotated") == names
    # The fault was real: Pebble saw far more POSTs than 20 clean orders need.
    posts = (pebble.workdir / "pebble.log").read_text().count(" POST /")
    assert posts > 1.3 * CLEAN_POSTS_PER_ORDER * NONCE_SERVICES, posts


def _regr(state: Path) -> dict[str, Any]:
    doc = json.loads((state / "accounts" / "pebble" / "regr.json").read_text())
    assert isinstance(doc, dict)
    return doc


class KillPebbleAtChallenge:
    """AriProxy hook: at the first challenge response POST, stop Pebble and hang up, as a CA
    that dies mid-order does; every other request passes."""

    def __init__(self, pebble: PebbleServer) -> None:
        self.pebble = pebble
        self.killed_at: str | None = None
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> int | None:
        with self._lock:
            if self.killed_at is not None or method != "POST" or not path.startswith("/chalZ/"):
                return None
            self.killed_at = path
        self.pebble.pause()
        return DROP


@pytest.mark.pebble
def test_ca_killed_mid_order_then_restarted_reregisters_and_rotates(
    pebble_factory: PebbleFactory, short_tmp: Path
) -> None:
    """Pebble killed while the order waits on its challenge fails the rotation retryably ("cannot
    reach the CA") with the old pair kept; restarted with a new CA that forgot the account, the
    next attempt of the same long-lived issuer re-registers the account and rotates."""
    pebble = pebble_factory()
    state = short_tmp / "state"
    with AriProxy(pebble) as proxy:
        config = harness_config(
            short_tmp / "r.toml",
            proxy.directory_url,
            state,
            service("web", pebble.http_port),
            ca_bundle=proxy.ca_bundle,
        )
        rotator = build_rotator(load_config(config))
        try:
            assert rotator.rotate("web").outcome == "rotated"
            service_dir = state / "services" / "web"
            before = snapshot(service_dir)
            account_before = _regr(state)
            kill = KillPebbleAtChallenge(pebble)
            proxy.before_forward = kill

            failed = rotator.rotate("web", force=True)

            assert kill.killed_at is not None, "the order never reached its challenge"
            assert failed.outcome == "failed"
            assert failed.retryable is True
            assert "cannot reach the CA" in (failed.error or ""), failed.error
            assert_old_pair_survived(service_dir, before)
            assert temp_leftovers(state) == []

            pebble.resume()  # same ports, new CA: the account and the order are gone
            retried = rotator.rotate("web", force=True)
        finally:
            rotator.close()

    assert retried.outcome == "rotated", retried.error
    assert retried.old_serial == serial_text(before.serial)
    account_after = _regr(state)
    assert account_after["uri"] != account_before["uri"], "the account was not registered again"
    assert account_after["directory"] == account_before["directory"]
    leaf = x509.load_pem_x509_certificate((service_dir / "current" / "cert.pem").read_bytes())
    intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem())
    assert leaf.issuer == intermediate.subject, "the new pair comes from the restarted CA"
    records = read_audit(state / "audit.jsonl")
    [failure] = events(records, "rotation_failed", "web")
    assert failure["rotation_id"] == failed.rotation_id and failure["retryable"] is True
    assert read_status(service_dir)["failures"] == 0


class FailNewOrders:
    """AriProxy hook: the first ``times`` newOrder POSTs get a 503, a hang-up, or a stall longer
    than the client's timeout (then pass); everything else passes. Counts the newOrder POSTs."""

    def __init__(self, proxy: AriProxy, fault: str, times: int, stall: float) -> None:
        self.proxy = proxy
        self.fault = fault
        self.left = times
        self.stall = stall
        self.new_orders = 0
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> int | None:
        if method != "POST" or path != self.proxy.new_order_path:
            return None
        with self._lock:
            self.new_orders += 1
            if self.left == 0:
                return None
            self.left -= 1
        if self.fault == "503":
            return 503
        if self.fault == "hang-up":
            return DROP
        time.sleep(self.stall)  # "timeout": the client gives up first; Pebble still answers
        return None


FAULT_ERRORS: Final = {
    "503": "serverInternal",
    "hang-up": "cannot reach the CA",
    "timeout": "cannot reach the CA",
}


@pytest.mark.pebble
@pytest.mark.parametrize("fault", list(FAULT_ERRORS))
def test_ca_5xx_hangups_and_timeouts_are_retried_on_the_ladder(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess], fault: str
) -> None:
    """The first two new orders fail (503, hang-up, or a stall past the 1 s client timeout):
    the daemon audits each as a retryable rotation_failed, waits 1 s then 2 s as its
    retry_ladder says, and the third attempt rotates."""
    ladder = [timedelta(seconds=5), timedelta(seconds=5)]
    state = short_tmp / "state"
    audit = state / "audit.jsonl"
    with AriProxy(pebble_server) as proxy:
        hook = FailNewOrders(proxy, fault, times=2, stall=2.5)
        proxy.before_forward = hook
        config = write_config(
            short_tmp / "r.toml",
            directory=proxy.directory_url,
            ca_bundle=proxy.ca_bundle,
            state=state,
            audit=audit,
            services=service("web", pebble_server.http_port),
            daemon_extra='retry_ladder = ["5s", "5s"]\nmin_order_interval = "5s"',
            acme_extra="timeout = 1",
        )
        daemon = DaemonProcess(config, short_tmp)
        daemons.append(daemon)
        daemon.start()
        records = wait_for(
            audit,
            lambda rs: any(r["outcome"] == "rotated" for r in events(rs, "rotation_finished")),
            60,
            "a rotation after two failures",
            daemon,
        )
        assert daemon.stop() == 0

    failures = events(records, "rotation_failed", "web")
    assert [r["failures"] for r in failures] == [1, 2], failures
    for record, step in zip(failures, ladder, strict=True):
        assert record["retryable"] is True
        assert FAULT_ERRORS[fault] in record["error"], record["error"]
        attempt = datetime.fromisoformat(record["attempt_at"])
        assert datetime.fromisoformat(record["next_attempt"]) - attempt == step
    # Each retry starts no earlier than the ladder allows, and without dawdling after it.
    starts = [datetime.fromisoformat(r["ts"]) for r in events(records, "rotation_started", "web")]
    assert len(starts) == 3, starts
    for record, start in zip(failures, starts[1:], strict=True):
        due = datetime.fromisoformat(record["next_attempt"])
        assert due <= start < due + timedelta(seconds=5), (due, start)
    finished = events(records, "rotation_finished", "web")
    assert [r["outcome"] for r in finished] == ["failed", "failed", "rotated"]
    assert [r["trigger"] for r in finished] == ["startup", "schedule", "schedule"]
    assert hook.new_orders >= 3  # a badNonce retry (Pebble rejects 5 % by default) adds one
    assert key_matches_cert(state / "services" / "web" / "current")
    assert read_status(state / "services" / "web")["failures"] == 0
