"""Versioned on-disk store of key/certificate pairs, with one-rename activation.

Layout per service (``<state>/services/<name>/``)::

    .lock                                   flock target: one rotation per service at a time
    status.json                             last result, failure count, next attempt
    versions/<utc-stamp>-<serial8>/         privkey.pem cert.pem chain.pem fullchain.pem meta.json
    current -> versions/<...>               the ONLY path consumers use

A version directory is staged complete under a temp name (files created O_EXCL with their final
mode, fsynced, directory fsynced), renamed into place, and only then made current by renaming a
temp symlink over ``current`` (Kubernetes' atomic_writer). So at every instant ``current`` resolves
to a complete, matching pair: the old one or the new one.

Rules: no network, no clock reads (``now`` comes from the caller), never follow a planted symlink,
never remove the ``current`` target or the version before it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from rotatord.core import keys
from rotatord.core.errors import LockBusyError, StoreError, VerificationError
from rotatord.core.model import IssuedMeta, KeyType
from rotatord.fsutil import (
    DEFAULT_OPS,
    TEMP_PREFIX,
    FsOps,
    atomic_write,
    ensure_dir,
    ensure_tree,
    read_file_nofollow,
    refuse_symlink,
    temp_name,
    write_new_files,
    zero_file,
)
from rotatord.store.port import Bundle, RecoveryReport, Version

KEY_FILE = "privkey.pem"
CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"
FULLCHAIN_FILE = "fullchain.pem"
META_FILE = "meta.json"
VERSION_FILES = (KEY_FILE, CERT_FILE, CHAIN_FILE, FULLCHAIN_FILE, META_FILE)
PUBLIC_MODE = 0o644
DIR_MODE = 0o755
_TOP_TEMP = (".current" + TEMP_PREFIX, ".status.json.", ".journal.json.")
VERSION_RE = re.compile(r"^\d{8}T\d{6}(?:\.\d{3})?Z-[0-9a-f]{8}(?:\.\d+)?$")
_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def meta_to_json(meta: IssuedMeta, extra: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "names": list(meta.names),
        "key_type": meta.key_type.value,
        "account": meta.account,
        "directory": meta.directory,
        "serial": format(meta.serial, "x"),
        "not_before": meta.not_before.isoformat(),
        "not_after": meta.not_after.isoformat(),
        "issued_at": meta.issued_at.isoformat(),
    }
    if extra:
        doc.update(extra)
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def meta_from_json(data: bytes) -> IssuedMeta:
    try:
        doc = json.loads(data)
        return IssuedMeta(
            names=tuple(doc["names"]),
            key_type=KeyType(doc["key_type"]),
            account=str(doc["account"]),
            directory=str(doc["directory"]),
            serial=int(doc["serial"], 16),
            not_before=datetime.fromisoformat(doc["not_before"]),
            not_after=datetime.fromisoformat(doc["not_after"]),
            issued_at=datetime.fromisoformat(doc["issued_at"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"meta.json is unreadable: {exc}") from exc


class ServiceStore:
    """The versioned store of one service. Thread-safe only under ``lock()``."""

    def __init__(
        self,
        state_dir: Path,
        service: str,
        *,
        ops: FsOps = DEFAULT_OPS,
        key_mode: int = 0o600,
        key_gid: int = -1,
    ) -> None:
        if not _SERVICE_RE.match(service):
            raise StoreError(f"unsafe service name {service!r}")
        self.service = service
        self.dir = state_dir / "services" / service
        self.versions_dir = self.dir / "versions"
        self.current_link = self.dir / "current"
        self.lock_path = self.dir / ".lock"
        self.status_path = self.dir / "status.json"
        self.journal_path = self.dir / "journal.json"
        self._ops = ops
        self._key_mode = key_mode
        self._key_gid = key_gid
        self._layout_made = False  # status/journal writes check the tree once per store object
        self._current_s = os.fspath(self.current_link)
        self._dir_s = os.fspath(self.dir)
        self._versions_s = os.fspath(self.versions_dir)
        self._known: dict[str, Version] = {}  # Version objects by name (immutable)

    # ------------------------------------------------------------------ layout and locking

    def ensure_layout(self) -> None:
        ensure_tree(self.dir.parent, DIR_MODE, self._ops)
        ensure_dir(self.dir, DIR_MODE, self._ops)
        ensure_dir(self.versions_dir, DIR_MODE, self._ops)

    @contextlib.contextmanager
    def lock(self, *, blocking: bool = True) -> Iterator[None]:
        """Hold the service's flock. Works across processes and across threads of one process
        (each call opens its own file description)."""
        try:
            self.ensure_layout()
            fd = self._ops.open_lock(self.lock_path)
        except OSError as exc:
            # EROFS/ENOSPC/EACCES on the lock file is a rotation failure like any other: the
            # caller records it; it must never escape as a bare OSError (a crashed job).
            raise StoreError(f"{self.lock_path}: cannot open lock: {exc.strerror or exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise LockBusyError(f"service {self.service!r} is being rotated") from exc
            yield
        finally:
            os.close(fd)  # closing the description releases the flock

    # ------------------------------------------------------------------ reading

    def current_version(self) -> Version | None:
        """The version ``current`` points to, or None. A link pointing anywhere but one of our
        version directories is treated as absent (recovery repairs it)."""
        try:
            target = os.readlink(self._current_s)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a symlink: something planted a file there
                return None
            raise
        parts = target.split("/")
        if len(parts) != 2 or parts[0] != "versions" or not VERSION_RE.match(parts[1]):
            return None
        try:
            # One call: a real directory, not a symlink to one. Strings, not Paths: planning
            # and status ask this of every service every day.
            st = os.lstat(f"{self._versions_s}/{parts[1]}")
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        known = self._known.get(parts[1])
        if known is None:
            if len(self._known) > 64:
                self._known.clear()
            known = self._known[parts[1]] = Version(parts[1], self.versions_dir / parts[1])
        return known

    def versions(self) -> list[Version]:
        """Complete-looking version directories, oldest first (names sort chronologically)."""
        try:
            names = os.listdir(self.versions_dir)
        except FileNotFoundError:
            return []
        out = []
        for name in sorted(names):
            path = self.versions_dir / name
            if VERSION_RE.match(name) and stat.S_ISDIR(os.lstat(path).st_mode):
                out.append(Version(name, path))
        return out

    def read(self, version: Version, *, with_key: bool = True) -> Bundle:
        """The version's files. ``with_key=False`` leaves ``key_pem`` empty: planning and status
        run for every service and need no secret, so they never read one."""
        try:
            key_pem = read_file_nofollow(version.path / KEY_FILE) if with_key else b""
            cert_pem = read_file_nofollow(version.path / CERT_FILE)
            chain_pem = read_file_nofollow(version.path / CHAIN_FILE)
            meta = meta_from_json(read_file_nofollow(version.path / META_FILE))
        except OSError as exc:
            raise StoreError(f"{version.path}: cannot read version: {exc.strerror}") from exc
        return Bundle(key_pem=key_pem, cert_pem=cert_pem, chain_pem=chain_pem, meta=meta)

    def read_current(self, *, with_key: bool = True) -> tuple[Version, Bundle] | None:
        v = self.current_version()
        if v is None:
            return None
        return v, self.read(v, with_key=with_key)

    def is_complete(self, version: Version, now: datetime | None = None) -> bool:
        """True when the version's key and certificate match and its chain verifies."""
        try:
            b = self.read(version)
            key = keys.load_private_key(b.key_pem)
            chain = keys.split_pem_chain(b.fullchain_pem)
            check_now = now if now is not None else chain[0].not_valid_before_utc
            keys.verify_bundle(key, chain, b.meta.names, check_now)
        except (StoreError, VerificationError, IndexError):
            return False
        return True

    # ------------------------------------------------------------------ writing

    def _version_name(self, meta: IssuedMeta) -> str:
        # Milliseconds: two rotations of one service in the same second must still sort in
        # time order (recovery and pruning pick "newest" and "previous" by name).
        at = meta.issued_at
        base = f"{at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z-{meta.serial & 0xFFFFFFFF:08x}"
        name, n = base, 1
        while os.path.lexists(self.versions_dir / name):
            name = f"{base}.{n}"
            n += 1
        return name

    def stage(self, bundle: Bundle, *, extra_meta: dict[str, Any] | None = None) -> Version:
        """Write a complete version directory and return it; ``current`` is not touched.

        On any failure the temp directory is removed (best effort; recovery removes what a crash
        leaves) and StoreError is raised.
        """
        self.ensure_layout()
        tmp = self.versions_dir / temp_name()
        final: Path | None = None
        try:
            self._ops.mkdir(tmp, DIR_MODE)
            files = (
                (KEY_FILE, bundle.key_pem, self._key_mode, self._key_gid),
                (CERT_FILE, bundle.cert_pem, PUBLIC_MODE, -1),
                (CHAIN_FILE, bundle.chain_pem, PUBLIC_MODE, -1),
                (FULLCHAIN_FILE, bundle.fullchain_pem, PUBLIC_MODE, -1),
                (META_FILE, meta_to_json(bundle.meta, extra_meta), PUBLIC_MODE, -1),
            )
            write_new_files([(tmp / n, d, m, -1, g) for n, d, m, g in files], self._ops)
            self._ops.fsync_dir(tmp)
            final = self.versions_dir / self._version_name(bundle.meta)
            self._ops.rename(tmp, final)
            self._ops.fsync_dir(self.versions_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if final is not None and os.path.isdir(final):
                # Renamed but not durably: never leave an unused key behind.
                with contextlib.suppress(OSError):
                    self.destroy_version(Version(final.name, final))
            raise StoreError(f"{self.dir}: staging failed: {exc.strerror or exc}") from exc
        return Version(final.name, final)

    def activate(self, version: Version) -> Version | None:
        """Point ``current`` at ``version`` with one rename(2); return the previous version."""
        if not VERSION_RE.match(version.name) or version.path.parent != self.versions_dir:
            raise StoreError(f"{version.path}: not a version of service {self.service!r}")
        previous = self.current_version()
        if os.path.lexists(self.current_link) and not os.path.islink(self.current_link):
            raise StoreError(f"{self.current_link}: is not a symlink; refusing to replace it")
        tmp = self.dir / temp_name(".current" + TEMP_PREFIX)
        try:
            self._ops.symlink(f"versions/{version.name}", tmp)
            self._ops.replace(tmp, self.current_link)
            self._ops.fsync_dir(self.dir)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise StoreError(f"{self.dir}: activation failed: {exc.strerror or exc}") from exc
        return previous

    def previous_version(self, current: Version | None = None) -> Version | None:
        """The newest complete-looking version older than ``current`` (what a rollback uses)."""
        cur = current or self.current_version()
        older = [v for v in self.versions() if cur is None or v.name < cur.name]
        return older[-1] if older else None

    def prune(self, keep: int) -> list[Version]:
        """Remove the oldest versions beyond ``keep`` and return them. Never removes the current
        version or the one before it, whatever ``keep`` says."""
        keep = max(keep, 2)
        all_versions = self.versions()
        current = self.current_version()
        protected = {v.name for v in all_versions[-keep:]}
        if current is not None:
            protected.add(current.name)
            prev = self.previous_version(current)
            if prev is not None:
                protected.add(prev.name)
        removed = []
        for v in all_versions:
            if v.name not in protected:
                self.destroy_version(v)
                removed.append(v)
        return removed

    def destroy_version(self, version: Version) -> None:
        """Overwrite the private key with zeros, then remove the directory."""
        zero_file(version.path, KEY_FILE)
        shutil.rmtree(version.path)

    # ------------------------------------------------------------------ status

    def read_status(self) -> dict[str, Any]:
        return self._read_doc(self.status_path)

    def write_status(self, doc: dict[str, Any]) -> None:
        self._write_doc(self.status_path, doc)

    def read_journal(self) -> dict[str, Any]:
        """The persisted phase of the service's last rotation (``rotation.journal``)."""
        return self._read_doc(self.journal_path)

    def write_journal(self, doc: dict[str, Any]) -> None:
        self._write_doc(self.journal_path, doc)

    def _read_doc(self, path: Path) -> dict[str, Any]:
        try:
            doc = json.loads(read_file_nofollow(path))
        except (OSError, ValueError, StoreError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write_doc(self, path: Path, doc: dict[str, Any]) -> None:
        # Compact: written several times per rotation, and without ``indent`` json uses its C
        # encoder (5x faster); ``rotatord status`` is the readable view.
        data = (json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str) + "\n").encode()
        try:
            if not self._layout_made:
                self.ensure_layout()
                self._layout_made = True
            atomic_write(path, data, 0o644, self._ops)
        except OSError as exc:
            self._layout_made = False  # perhaps removed under us: make it again next time
            raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from exc

    # ------------------------------------------------------------------ recovery

    def settled(self) -> tuple[bool, Version | None]:
        """``(True, current)`` when nothing an interrupted stage/activate leaves behind is here:
        no temp entry, and ``current`` complete (or absent with no version at all); else
        ``(False, None)``: recovery has work, or must look closer. Read-only, so it needs no
        lock: a rotation running meanwhile can only make a later look find temp entries.

        A crash can only leave temp entries or a dangling ``current`` (a version directory
        gets its final name only after every file in it is fsynced), which is why start-up
        trusts this and skips the cryptographic check of every version."""
        try:
            st = os.lstat(self._dir_s)
            if not stat.S_ISDIR(st.st_mode):
                return False, None  # a planted symlink or file: the thorough pass refuses it
            if any(e.startswith(_TOP_TEMP) for e in os.listdir(self._dir_s)):
                return False, None
            try:
                if any(e.startswith(TEMP_PREFIX) for e in os.listdir(self._versions_s)):
                    return False, None
            except FileNotFoundError:
                return (not os.path.lexists(self._current_s)), None
            current = self.current_version()
            if current is None:
                return (not os.path.lexists(self._current_s) and not self.versions()), None
            base = f"{self._versions_s}/{current.name}/"
            if all(os.path.isfile(base + f) for f in VERSION_FILES):
                return True, current
        except OSError:
            pass
        return False, None

    def recover(self, now: datetime | None = None, *, thorough: bool = True) -> RecoveryReport:
        """Undo what an interrupted stage/activate left behind.

        Removes temp entries; removes version directories that are not complete (and are not the
        current target); if ``current`` is dangling, not ours, or incomplete, points it at the
        newest complete version. Safe to run at every start.

        ``thorough=False`` is the start-up fast path for thousands of services: a crash can only
        leave temp entries or a dangling ``current`` (a version directory gets its final name
        only after every file in it is fsynced), so when neither is present the cryptographic
        check of every version is skipped. Anything amiss falls back to the thorough pass.
        """
        if not os.path.isdir(self.dir):
            return RecoveryReport()
        refuse_symlink(self.dir)
        if not thorough:
            clean, current = self.settled()
            if clean:
                return RecoveryReport(current=current.name if current else None)
        removed_temp: list[str] = []
        for entry in os.listdir(self.dir):
            if entry.startswith((".current" + TEMP_PREFIX, ".status.json.", ".journal.json.")):
                os.unlink(self.dir / entry)
                removed_temp.append(entry)
        if os.path.isdir(self.versions_dir):
            for entry in os.listdir(self.versions_dir):
                if entry.startswith(TEMP_PREFIX):
                    path = self.versions_dir / entry
                    if os.path.islink(path) or not os.path.isdir(path):
                        os.unlink(path)
                    else:
                        shutil.rmtree(path)
                    removed_temp.append(f"versions/{entry}")
        current = self.current_version()
        current_ok = current is not None and self.is_complete(current)
        repointed: str | None = None
        if not current_ok:
            candidates = [v for v in self.versions() if self.is_complete(v)]
            if candidates:
                repointed = candidates[-1].name
                self.activate(candidates[-1])
            elif os.path.lexists(self.current_link) and os.path.islink(self.current_link):
                os.unlink(self.current_link)
        # Only now remove broken versions: the one `current` pointed to may be among them, and
        # it must go in this same pass or pruning would later protect it over a good version.
        current = self.current_version()
        removed_incomplete: list[str] = []
        for v in self.versions():
            if (current is None or v.name != current.name) and not self.is_complete(v):
                shutil.rmtree(v.path)
                removed_incomplete.append(v.name)
        if removed_temp or removed_incomplete or repointed:
            self._ops.fsync_dir(self.dir)
        final = self.current_version()
        return RecoveryReport(
            removed_temp=tuple(removed_temp),
            removed_incomplete=tuple(removed_incomplete),
            repointed_current=repointed,
            current=final.name if final else None,
        )
