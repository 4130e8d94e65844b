"""Reading what is installed: the store of a service and its current version, parsed.

Rules: read-only; never reads a private key unless asked (planning and status run for every
service and need no secret).
"""

from __future__ import annotations

import dataclasses
import grp
import os
import threading

from rotatord.core import keys
from rotatord.core.errors import StoreError, VerificationError
from rotatord.core.model import Config, ServiceSpec
from rotatord.fsutil import DEFAULT_OPS, FsOps
from rotatord.rotation.state import Installed
from rotatord.store import CERT_FILE, CertStore, ServiceStore, Version


def service_store(config: Config, spec: ServiceSpec, ops: FsOps = DEFAULT_OPS) -> ServiceStore:
    key_mode, key_gid = 0o600, -1
    if spec.key_group is not None:
        try:
            key_gid = grp.getgrnam(spec.key_group).gr_gid
        except KeyError as exc:
            raise StoreError(
                f"services.{spec.name}.key_group: no group {spec.key_group!r}"
            ) from exc
        key_mode = 0o640
    return ServiceStore(
        config.daemon.state_dir, spec.name, ops=ops, key_mode=key_mode, key_gid=key_gid
    )


def read_version(store: CertStore, version: Version, *, with_key: bool = True) -> Installed | None:
    """``version`` with its parsed leaf, or None if unreadable."""
    try:
        bundle = store.read(version, with_key=with_key)
        leaf = keys.split_pem_chain(bundle.cert_pem)[0]
    except (StoreError, VerificationError, IndexError, OSError):
        return None
    return Installed(version, bundle, keys.cert_info(leaf))


def with_key(store: CertStore, installed: Installed) -> Installed | None:
    """``installed`` with its private key (read now if it was read without), or None."""
    if installed.bundle.key_pem:
        return installed
    return read_version(store, installed.version)


class PublicCache:
    """Key-less reads of versions, parsed once.

    A version directory is immutable once staged (the store's contract), so its parsed
    certificate and metadata are reused while the certificate file keeps its identity (inode,
    size, mtime, ctime): planning and status for 10,000 services every few hours then cost a few
    ``stat`` calls each, not three reads and two certificate parses. Never holds a private key.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[tuple[int, ...], Installed]] = {}
        # By service directory: the identity of its ``current`` link when last read, and what
        # it pointed to. Replacing the link (activation, rollback, recovery, another process)
        # is a rename of a new symlink over it: a new inode, so one lstat tells.
        self._current: dict[str, tuple[tuple[int, ...], Installed]] = {}

    @staticmethod
    def _identity(version: Version) -> tuple[int, ...] | None:
        # The certificate file stands for the version: meta.json is written with it, in the
        # same staging directory, before the rename that makes the version exist.
        try:
            st = os.lstat(f"{os.fspath(version.path)}/{CERT_FILE}")
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def read(self, store: CertStore, version: Version) -> Installed | None:
        key = str(version.path)
        ident = self._identity(version)
        if ident is None:
            return read_version(store, version, with_key=False)
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] == ident:
            return hit[1]
        found = read_version(store, version, with_key=False)
        if found is not None:
            with self._lock:
                if len(self._entries) >= self._limit:
                    self._entries.clear()  # rare (more versions than services × 5): start over
                self._entries[key] = (ident, found)
        return found


    def current(self, store: CertStore) -> Installed | None:
        """``store``'s current version without its key: one ``lstat`` while nothing changed."""
        link = os.fspath(store.current_link)
        try:
            st = os.lstat(link)
        except OSError:
            return read_installed(store, with_key=False, cache=self)
        ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            hit = self._current.get(link)
        if hit is not None and hit[0] == ident:
            return hit[1]
        found = read_installed(store, with_key=False, cache=self)
        if found is not None:
            with self._lock:
                if len(self._current) >= self._limit:
                    self._current.clear()
                self._current[link] = (ident, found)
        return found


    def seed(self, store: CertStore, installed: Installed) -> None:
        """Remember ``installed`` (just activated by us) as ``store``'s current version, so the
        next plan does not parse again the certificate the rotation has just parsed."""
        link = os.fspath(store.current_link)
        try:
            st = os.lstat(link)
            live = store.current_version()
        except OSError:
            return
        if live is None or live.name != installed.version.name:
            return  # someone flipped it since: the next read finds out
        plain = Installed(
            installed.version, dataclasses.replace(installed.bundle, key_pem=b""), installed.info
        )
        ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if len(self._current) >= self._limit:
                self._current.clear()
            self._current[link] = (ident, plain)


def read_installed(
    store: CertStore, *, with_key: bool = True, cache: PublicCache | None = None
) -> Installed | None:
    """The current version with its parsed leaf, or None if absent or unreadable.

    ``cache`` serves key-less reads (``with_key=False``) of a version already parsed."""
    try:
        version = store.current_version()
    except OSError:
        return None
    if version is None:
        return None
    if cache is not None and not with_key:
        return cache.read(store, version)
    return read_version(store, version, with_key=with_key)
