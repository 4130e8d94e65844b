"""Tests of the versioned store (``rotatord.store``) and its file primitives (``rotatord.fsutil``).

Real files in a temp directory; failures are injected through the ``FsOps`` seam.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rotatord import fsutil
from rotatord.core.errors import LockBusyError, StoreError
from rotatord.store import (
    CERT_FILE,
    CHAIN_FILE,
    FULLCHAIN_FILE,
    KEY_FILE,
    META_FILE,
    VERSION_FILES,
    Bundle,
    ServiceStore,
    Version,
    meta_from_json,
)
from tests.certs import T0, key_to_pem, make_bundle

SERVICE = "web"
TEMP_PREFIXES = (".tmp-", ".current.tmp-")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ServiceStore:
    """A store for service ``web`` under a fresh state dir."""
    return ServiceStore(tmp_path / "state", SERVICE)


def bundle_at(day: int, serial: int | None = None) -> Bundle:
    """A bundle issued ``day`` days after T0: later days give later version names."""
    start = T0 + timedelta(days=day)
    return make_bundle(
        ["example.test", "www.example.test"],
        not_before=start,
        serial=serial if serial is not None else 0x1000 + day,
    )


def install(store: ServiceStore, bundle: Bundle) -> Version:
    """Stage ``bundle`` and make it current."""
    version = store.stage(bundle)
    store.activate(version)
    return version


def _spki(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def independent_pair_check(version_dir: Path) -> x509.Certificate:
    """Check with plain ``cryptography`` (not rotatord) that a version dir holds a matching key,
    leaf and chain; return the leaf."""
    files = {name: (version_dir / name).read_bytes() for name in VERSION_FILES}
    key = serialization.load_pem_private_key(files[KEY_FILE], password=None)
    leaf = x509.load_pem_x509_certificate(files[CERT_FILE])
    chain = x509.load_pem_x509_certificates(files[CHAIN_FILE])
    full = x509.load_pem_x509_certificates(files[FULLCHAIN_FILE])
    assert full == [leaf, *chain]
    assert _spki(key.public_key()) == _spki(leaf.public_key())
    leaf.verify_directly_issued_by(chain[0])
    assert meta_from_json(files[META_FILE]).serial == leaf.serial_number
    return leaf


def resolve_current(store: ServiceStore) -> Path:
    """Where ``current`` really points; it must be a relative link to a dir under versions/."""
    target = os.readlink(store.current_link)
    assert not os.path.isabs(target)
    resolved = store.current_link.resolve(strict=True)
    assert resolved.parent == store.versions_dir.resolve()
    return resolved


def temp_leftovers(root: Path) -> list[str]:
    """Every entry under ``root`` whose name marks it as a temp entry."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name.startswith(TEMP_PREFIXES):
                found.append(os.path.join(dirpath, name))
    return found


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run the test under umask 000 (the worst case for file modes), then restore the old one."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------------------
# stage + activate
# --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
def test_stage_activate_layout_and_modes(store: ServiceStore) -> None:
    """Under umask 000 a staged version has 0600 key, 0644 public files, and ``current`` is a
    relative symlink ``versions/<stamp>-<serial8>``."""
    bundle = bundle_at(0, serial=0xABCDEF0123456789)
    version = store.stage(bundle)
    assert store.current_version() is None  # staging alone never touches current
    previous = store.activate(version)

    assert previous is None
    assert version.name == "20260101T000000.000Z-23456789"
    assert os.readlink(store.current_link) == f"versions/{version.name}"
    assert store.current_version() == version
    assert stat.S_IMODE(os.lstat(version.path).st_mode) == 0o755
    for name in VERSION_FILES:
        st = os.lstat(version.path / name)
        assert stat.S_ISREG(st.st_mode)
        want = 0o600 if name == KEY_FILE else 0o644
        assert stat.S_IMODE(st.st_mode) == want, name
    assert (version.path / FULLCHAIN_FILE).read_bytes() == bundle.cert_pem + bundle.chain_pem
    assert store.read(version) == bundle
    assert store.is_complete(version)


@pytest.mark.usefixtures("umask_zero")
def test_key_group_gives_0640_and_group(tmp_path: Path) -> None:
    """With a key group the private key is 0640 and owned by that group, even under umask 000."""
    gid = os.getgid()
    store = ServiceStore(tmp_path / "state", SERVICE, key_mode=0o640, key_gid=gid)
    version = install(store, bundle_at(0))
    st = os.lstat(version.path / KEY_FILE)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == gid
    assert stat.S_IMODE(os.lstat(version.path / CERT_FILE).st_mode) == 0o644


def test_activate_returns_previous_and_switches(store: ServiceStore) -> None:
    """Activating a second version returns the first and leaves both on disk."""
    v1 = install(store, bundle_at(0))
    v2 = store.stage(bundle_at(1))
    assert store.activate(v2) == v1
    assert store.current_version() == v2
    assert store.versions() == [v1, v2]
    assert store.previous_version() == v1


def test_same_stamp_and_serial_get_distinct_names(store: ServiceStore) -> None:
    """Two bundles with the same issue time and serial never overwrite each other's version."""
    a = store.stage(bundle_at(0, serial=7))
    b = store.stage(bundle_at(0, serial=7))
    assert a.name != b.name
    assert store.versions() == [a, b]


def test_activate_refuses_foreign_version(store: ServiceStore, tmp_path: Path) -> None:
    """A Version outside this service's versions/ dir cannot be activated."""
    store.ensure_layout()
    stray = Version("20260101T000000Z-00000001", tmp_path / "20260101T000000Z-00000001")
    with pytest.raises(StoreError):
        store.activate(stray)
    assert not os.path.lexists(store.current_link)


# --------------------------------------------------------------------------------------------
# crash injection
# --------------------------------------------------------------------------------------------


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so no ``except OSError`` cleanup runs."""


INJECTED_OPS = ("mkdir", "open_excl", "write", "fsync", "fsync_dir", "rename", "symlink", "replace")


class InjectingOps(fsutil.FsOps):
    """FsOps that counts every call and fails call number ``fail_at`` (0-based).

    ``mode``: ``eio`` raises OSError(EIO) instead of the call; ``eio-after`` performs the call and
    then raises OSError(EIO) (the syscall's effect happened but the caller sees a failure);
    ``kill`` raises ``Killed`` instead of the call.
    """

    def __init__(self, fail_at: int, mode: str) -> None:
        self.fail_at = fail_at
        self.mode = mode
        self.calls: list[str] = []
        self.fired: str | None = None

    def _step(self, op: str) -> bool:
        """Record a call; raise now if it is to fail before acting; say if it fails after."""
        index = len(self.calls)
        self.calls.append(op)
        if index != self.fail_at:
            return False
        self.fired = op
        if self.mode == "kill":
            raise Killed(op)
        if self.mode == "eio":
            raise OSError(errno.EIO, f"injected EIO before {op}")
        return True

    def _after(self, fail: bool, op: str) -> None:
        if fail:
            raise OSError(errno.EIO, f"injected EIO after {op}")

    def mkdir(self, path: Path, mode: int) -> None:
        fail = self._step("mkdir")
        super().mkdir(path, mode)
        self._after(fail, "mkdir")

    def open_excl(self, path: Path, mode: int, uid: int = -1, gid: int = -1) -> int:
        fail = self._step("open_excl")
        fd = super().open_excl(path, mode, uid, gid)
        if fail:
            os.close(fd)
        self._after(fail, "open_excl")
        return fd

    def write(self, fd: int, data: bytes) -> None:
        fail = self._step("write")
        super().write(fd, data)
        self._after(fail, "write")

    def fsync(self, fd: int) -> None:
        fail = self._step("fsync")
        super().fsync(fd)
        self._after(fail, "fsync")

    def fsync_dir(self, path: Path) -> None:
        fail = self._step("fsync_dir")
        super().fsync_dir(path)
        self._after(fail, "fsync_dir")

    def rename(self, src: Path, dst: Path) -> None:
        fail = self._step("rename")
        super().rename(src, dst)
        self._after(fail, "rename")

    def symlink(self, target: str, path: Path) -> None:
        fail = self._step("symlink")
        super().symlink(target, path)
        self._after(fail, "symlink")

    def replace(self, src: Path, dst: Path) -> None:
        fail = self._step("replace")
        super().replace(src, dst)
        self._after(fail, "replace")


def assert_current_is_one_of(store: ServiceStore, allowed: dict[int, Bundle]) -> int:
    """``current`` resolves to a complete matching pair that is one of ``allowed`` (by serial);
    return its serial."""
    resolved = resolve_current(store)
    version = store.current_version()
    assert version is not None
    assert store.is_complete(version)
    leaf = independent_pair_check(resolved)
    assert leaf.serial_number in allowed
    assert store.read(version) == allowed[leaf.serial_number]
    return leaf.serial_number


@pytest.mark.parametrize("mode", ["eio", "eio-after", "kill"])
def test_failure_at_every_step_leaves_a_complete_current(tmp_path: Path, mode: str) -> None:
    """A failure injected at every FsOps call of stage+activate leaves ``current`` on the old or
    the new complete pair, and recovery removes every leftover while keeping it."""
    old = bundle_at(0)
    new = bundle_at(1)
    allowed = {old.meta.serial: old, new.meta.serial: new}
    fired_ops: list[str] = []
    outcomes: set[int] = set()
    k = 0
    while True:
        state = tmp_path / f"k{k}"
        install(ServiceStore(state, SERVICE), old)
        ops = InjectingOps(k, mode)
        faulty = ServiceStore(state, SERVICE, ops=ops)
        try:
            install(faulty, new)
        except (StoreError, Killed):
            assert ops.fired is not None
        if ops.fired is None:
            # Every call went through: this is the clean run that ends the loop.
            assert assert_current_is_one_of(faulty, allowed) == new.meta.serial
            break
        fired_ops.append(ops.fired)

        outcomes.add(assert_current_is_one_of(faulty, allowed))

        clean = ServiceStore(state, SERVICE)
        before = clean.current_version()
        clean.recover()
        assert temp_leftovers(clean.dir) == [], (k, ops.fired)
        for version in clean.versions():
            assert clean.is_complete(version), (k, version)
            independent_pair_check(version.path)
        assert clean.current_version() == before
        assert assert_current_is_one_of(clean, allowed) in allowed
        k += 1
        assert k < 200, "stage+activate never completed"

    # 5 files x (open, write, fsync) + mkdir + 2 dir fsyncs + rename + symlink + replace + fsync.
    assert len(fired_ops) >= 15
    assert set(fired_ops) == set(INJECTED_OPS)
    assert fired_ops.count("open_excl") == len(VERSION_FILES)
    assert outcomes == set(allowed)  # both the "still old" and the "already new" states occur


# --------------------------------------------------------------------------------------------
# recovery
# --------------------------------------------------------------------------------------------


def test_recover_state_removes_interrupted_writes_beside_the_services(tmp_path: Path) -> None:
    """A kill inside ``atomic_write`` of a budget ledger or account file leaves ``.NAME.tmp-*``;
    the state sweep removes exactly those, unlinking a planted symlink without touching its
    target, and keeps the real files and any directory."""
    from rotatord.rotation import recover_state

    state = tmp_path / "state"
    (state / "budget").mkdir(parents=True)
    (state / "accounts" / "pebble").mkdir(parents=True)
    (state / "budget" / "pebble.json").write_text("{}")
    (state / "budget" / ".pebble.json.tmp-0123456789ab").write_text("{")
    (state / "accounts" / "pebble" / "key.pem").write_text("key")
    (state / "accounts" / "pebble" / ".key.pem.tmp-ba9876543210").write_text("half")
    outside = tmp_path / "victim"
    outside.write_text("keep me")
    (state / "budget" / ".x.json.tmp-symlink00000").symlink_to(outside)
    (state / "budget" / ".dir.tmp-000000000000").mkdir()

    removed = recover_state(state)

    assert sorted(removed) == [
        "accounts/pebble/.key.pem.tmp-ba9876543210",
        "budget/.pebble.json.tmp-0123456789ab",
        "budget/.x.json.tmp-symlink00000",
    ]
    assert sorted(os.listdir(state / "budget")) == [".dir.tmp-000000000000", "pebble.json"]
    assert os.listdir(state / "accounts" / "pebble") == ["key.pem"]
    assert outside.read_text() == "keep me"
    assert recover_state(state) == []
    assert recover_state(tmp_path / "absent") == []


def test_recover_repoints_dangling_current(store: ServiceStore) -> None:
    """A ``current`` whose target is gone is repointed to the newest complete version."""
    v1 = install(store, bundle_at(0))
    v2 = store.stage(bundle_at(1))
    store.current_link.unlink()
    store.current_link.symlink_to("versions/20990101T000000Z-0000dead")
    assert store.current_version() is None

    report = store.recover()

    assert report.repointed_current == v2.name
    assert report.current == v2.name
    assert os.readlink(store.current_link) == f"versions/{v2.name}"
    assert store.versions() == [v1, v2]


@pytest.mark.parametrize("kind", ["absolute-to-version", "outside-dir", "dotdot"])
def test_recover_treats_foreign_current_as_absent(
    store: ServiceStore, tmp_path: Path, kind: str
) -> None:
    """A ``current`` pointing anywhere but ``versions/<name>`` is ignored and repaired, and what it
    pointed to is left alone."""
    v1 = install(store, bundle_at(0))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / KEY_FILE).write_bytes(b"not ours")
    targets = {
        "absolute-to-version": str(v1.path),
        "outside-dir": str(outside),
        "dotdot": "../../../elsewhere",
    }
    store.current_link.unlink()
    store.current_link.symlink_to(targets[kind])
    assert store.current_version() is None

    report = store.recover()

    assert report.repointed_current == v1.name
    assert os.readlink(store.current_link) == f"versions/{v1.name}"
    assert (outside / KEY_FILE).read_bytes() == b"not ours"


def test_recover_removes_incomplete_versions(store: ServiceStore) -> None:
    """Version dirs missing the key or holding a key that does not match are removed."""
    v1 = install(store, bundle_at(0))
    missing_key = store.stage(bundle_at(1))
    (missing_key.path / KEY_FILE).unlink()
    mismatched = store.stage(bundle_at(2))
    other = make_bundle(["example.test", "www.example.test"])
    (mismatched.path / KEY_FILE).write_bytes(other.key_pem)

    report = store.recover()

    assert set(report.removed_incomplete) == {missing_key.name, mismatched.name}
    assert store.versions() == [v1]
    assert store.current_version() == v1
    assert not missing_key.path.exists()
    assert not mismatched.path.exists()


def test_recover_replaces_incomplete_current(store: ServiceStore) -> None:
    """When ``current`` itself is incomplete it is repointed to the newest complete version and the
    broken version is removed in the same pass (recovery is idempotent)."""
    v1 = install(store, bundle_at(0))
    v2 = install(store, bundle_at(1))
    broken = install(store, bundle_at(2))
    (broken.path / KEY_FILE).write_bytes(key_to_pem(ec.generate_private_key(ec.SECP256R1())))

    report = store.recover()

    assert report.repointed_current == v2.name
    assert store.current_version() == v2
    assert broken.name in report.removed_incomplete
    assert store.versions() == [v1, v2]
    again = store.recover()
    assert again.removed_incomplete == ()
    assert again.removed_temp == ()
    assert again.repointed_current is None


def test_recover_removes_temp_entries(store: ServiceStore) -> None:
    """Leftover temp dirs, temp symlinks and status temp files are removed; real ones stay."""
    v1 = install(store, bundle_at(0))
    (store.versions_dir / ".tmp-abc").mkdir()
    (store.versions_dir / ".tmp-abc" / KEY_FILE).write_bytes(b"half")
    (store.versions_dir / ".tmp-file").write_bytes(b"x")
    (store.dir / ".current.tmp-abc").symlink_to(f"versions/{v1.name}")
    (store.dir / ".status.json.tmp-abc").write_bytes(b"{")

    report = store.recover()

    assert len(report.removed_temp) == 4
    assert temp_leftovers(store.dir) == []
    assert not (store.dir / ".status.json.tmp-abc").exists()
    assert store.current_version() == v1
    assert report.repointed_current is None


def test_recover_without_complete_versions_removes_current(store: ServiceStore) -> None:
    """With no complete version left, a dangling ``current`` is removed rather than kept."""
    store.ensure_layout()
    store.current_link.symlink_to("versions/20260101T000000Z-00000001")
    report = store.recover()
    assert report.current is None
    assert not os.path.lexists(store.current_link)


def test_recover_missing_dir_is_noop(tmp_path: Path) -> None:
    """Recovery of a service that was never stored does nothing and creates nothing."""
    store = ServiceStore(tmp_path / "state", SERVICE)
    report = store.recover()
    assert report.removed_temp == ()
    assert report.removed_incomplete == ()
    assert report.current is None
    assert not (tmp_path / "state").exists()


# --------------------------------------------------------------------------------------------
# pruning
# --------------------------------------------------------------------------------------------


def _stage_days(store: ServiceStore, days: range) -> list[Version]:
    return [store.stage(bundle_at(d)) for d in days]


def test_prune_keeps_newest(store: ServiceStore) -> None:
    """prune(keep) leaves the newest ``keep`` versions and returns the removed ones."""
    vs = _stage_days(store, range(6))
    store.activate(vs[-1])
    removed = store.prune(3)
    assert removed == vs[:3]
    assert store.versions() == vs[3:]
    assert all(not v.path.exists() for v in removed)


def test_prune_keep_one_still_keeps_current_and_previous(store: ServiceStore) -> None:
    """keep=1 is raised to 2: the current version and the one before it survive."""
    vs = _stage_days(store, range(4))
    store.activate(vs[-1])
    store.prune(1)
    assert store.versions() == vs[2:]
    assert store.current_version() == vs[-1]


def test_prune_protects_older_current_and_its_previous(store: ServiceStore) -> None:
    """After a rollback to an older version, that version and the one before it are kept."""
    vs = _stage_days(store, range(6))
    store.activate(vs[2])
    removed = store.prune(1)
    assert store.versions() == [vs[1], vs[2], vs[4], vs[5]]
    assert removed == [vs[0], vs[3]]
    assert store.current_version() == vs[2]
    assert store.is_complete(vs[2])


def test_destroy_version_zeroes_key_and_removes_dir(store: ServiceStore, tmp_path: Path) -> None:
    """destroy_version overwrites the key's bytes (seen through a hard link) and removes the dir."""
    bundle = bundle_at(0)
    version = store.stage(bundle)
    witness = tmp_path / "witness"
    os.link(version.path / KEY_FILE, witness)

    store.destroy_version(version)

    assert not version.path.exists()
    assert witness.read_bytes() == b"\0" * len(bundle.key_pem)
    assert store.versions() == []


# --------------------------------------------------------------------------------------------
# locking
# --------------------------------------------------------------------------------------------


def test_lock_nested_non_blocking_is_busy(store: ServiceStore) -> None:
    """A second non-blocking lock in the same thread fails while the first is held."""
    with store.lock(), pytest.raises(LockBusyError), store.lock(blocking=False):
        pytest.fail("second lock acquired")
    with store.lock(blocking=False):
        pass  # released: acquirable again


def test_lock_other_thread_is_busy(store: ServiceStore) -> None:
    """Another thread's non-blocking lock fails while this thread holds the lock."""
    errors: list[BaseException] = []

    def try_lock() -> None:
        try:
            with store.lock(blocking=False):
                pass
        except LockBusyError as exc:
            errors.append(exc)

    with store.lock():
        worker = threading.Thread(target=try_lock)
        worker.start()
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert len(errors) == 1
    with store.lock(blocking=False):
        pass


_CHILD_LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_lock_held_by_other_process_is_busy(store: ServiceStore) -> None:
    """While another process holds the flock, lock(blocking=False) raises; after it exits, not."""
    store.ensure_layout()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_LOCKER, str(store.lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LockBusyError), store.lock(blocking=False):
            pytest.fail("lock acquired while the child holds it")
        child.stdin.close()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    with store.lock(blocking=False):
        pass


# --------------------------------------------------------------------------------------------
# planted symlinks and hard links
# --------------------------------------------------------------------------------------------


def test_activate_refuses_regular_file_current(store: ServiceStore) -> None:
    """A regular file planted at ``current`` is not replaced: activate raises StoreError."""
    store.ensure_layout()
    store.current_link.write_bytes(b"planted")
    version = store.stage(bundle_at(0))
    with pytest.raises(StoreError):
        store.activate(version)
    assert store.current_link.read_bytes() == b"planted"
    assert temp_leftovers(store.dir) == []


def test_versions_symlink_is_refused(store: ServiceStore, tmp_path: Path) -> None:
    """A ``versions`` dir that is a symlink makes ensure_layout and stage raise StoreError."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.dir.mkdir(parents=True)
    store.versions_dir.symlink_to(elsewhere)
    with pytest.raises(StoreError):
        store.ensure_layout()
    with pytest.raises(StoreError):
        store.stage(bundle_at(0))
    assert list(elsewhere.iterdir()) == []


def test_service_dir_symlink_is_refused(store: ServiceStore, tmp_path: Path) -> None:
    """A service dir that is a symlink makes ensure_layout raise StoreError."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.dir.parent.mkdir(parents=True)
    store.dir.symlink_to(elsewhere)
    with pytest.raises(StoreError):
        store.ensure_layout()


def test_atomic_write_refuses_symlink(tmp_path: Path) -> None:
    """atomic_write onto a symlink raises StoreError and leaves the link and its target alone."""
    target = tmp_path / "target"
    target.write_bytes(b"original")
    link = tmp_path / "out.pem"
    link.symlink_to(target)
    with pytest.raises(StoreError):
        fsutil.atomic_write(link, b"new", 0o644)
    assert target.read_bytes() == b"original"
    assert link.is_symlink()
    assert temp_leftovers(tmp_path) == []


def test_atomic_write_refuses_hard_linked_target(tmp_path: Path) -> None:
    """atomic_write onto a file with another hard link raises StoreError; both names keep data."""
    target = tmp_path / "out.pem"
    target.write_bytes(b"original")
    other = tmp_path / "other"
    os.link(target, other)
    with pytest.raises(StoreError):
        fsutil.atomic_write(target, b"new", 0o644)
    assert target.read_bytes() == b"original"
    assert other.read_bytes() == b"original"


@pytest.mark.usefixtures("umask_zero")
def test_atomic_write_replaces_with_mode(tmp_path: Path) -> None:
    """atomic_write replaces a regular file with the new bytes and exact mode, leaving no temp."""
    target = tmp_path / "out.pem"
    target.write_bytes(b"old")
    fsutil.atomic_write(target, b"new", 0o640)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(os.lstat(target).st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pem"]


def test_atomic_write_failure_leaves_old_file(tmp_path: Path) -> None:
    """An fsync failure during atomic_write leaves the old file whole and no temp behind."""
    target = tmp_path / "out.pem"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="injected"):
        fsutil.atomic_write(target, b"new", 0o644, InjectingOps(2, "eio"))  # open, write, fsync
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pem"]


# --------------------------------------------------------------------------------------------
# status.json
# --------------------------------------------------------------------------------------------


def test_status_round_trip(store: ServiceStore) -> None:
    """write_status then read_status returns the same document; the file is 0644."""
    doc = {"failures": 2, "last_result": "failed", "next_attempt": "2026-01-01T00:10:00+00:00"}
    store.write_status(doc)
    assert store.read_status() == doc
    assert stat.S_IMODE(os.lstat(store.status_path).st_mode) == 0o644
    store.write_status({"failures": 0})
    assert store.read_status() == {"failures": 0}


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_status_garbage_reads_empty(store: ServiceStore, content: bytes) -> None:
    """An unreadable or non-object status.json reads as {}."""
    store.ensure_layout()
    store.status_path.write_bytes(content)
    assert store.read_status() == {}


def test_status_missing_reads_empty(store: ServiceStore) -> None:
    """A missing status.json (or service dir) reads as {}."""
    assert store.read_status() == {}


def test_status_symlink_not_followed(store: ServiceStore, tmp_path: Path) -> None:
    """A status.json planted as a symlink is neither read through nor written through."""
    secret = tmp_path / "secret.json"
    secret.write_bytes(b'{"leak": true}')
    store.ensure_layout()
    store.status_path.symlink_to(secret)
    assert store.read_status() == {}
    with pytest.raises(StoreError):
        store.write_status({"failures": 1})
    assert secret.read_bytes() == b'{"leak": true}'


def test_versions_in_the_same_second_sort_in_time_order(tmp_path: Path) -> None:
    """Two versions staged within one second sort by issue time, whatever their serials."""
    store = ServiceStore(tmp_path, "web")
    first = make_bundle(serial=0xFFFFFFF0, issued_at=T0.replace(microsecond=100_000))
    second = make_bundle(serial=0x00000001, issued_at=T0.replace(microsecond=900_000))
    a = store.stage(first)
    b = store.stage(second)
    assert [v.name for v in store.versions()] == [a.name, b.name]
