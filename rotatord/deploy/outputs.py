"""Per-consumer outputs rendered from a version: fixed-path PEM/DER/PKCS#12 files and versioned
directories, each with its own owner, group and mode from the first byte.

Single files are replaced with one rename (temp file O_EXCL in the same directory, owner and mode
set before any byte, fsync, rename, fsync the directory). A consumer that reads a key and a
certificate as two files gets a ``directory`` output: a complete version directory and a
``current`` symlink flipped in one rename, so it can never pair a new certificate with an old key.

Every output is reached through ``deploy.paths`` (each component opened relative to the last,
none followed where someone else could have planted it) and only a regular file, or nothing, is
ever replaced; a directory output's root must be ours.

Rules: never write through a planted symlink, into a hard-linked file, or over a FIFO or
device; never log a key or a PKCS#12 password.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from rotatord.core import keys
from rotatord.core.errors import StoreError
from rotatord.core.model import OutputFormat, OutputSpec
from rotatord.deploy.paths import SafeDir, Trust, check_owned_root, check_slot, open_dir
from rotatord.fsutil import (
    DEFAULT_OPS,
    TEMP_PREFIX,
    FsOps,
    read_file_nofollow,
    temp_name,
    write_new_file,
    write_new_files,
    zero_file,
)
from rotatord.store import VERSION_RE, Bundle

DIRECTORY_KEEP = 2  # current + the one before it, for readers that still hold the old path


def owner_ids(spec: OutputSpec) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(spec.owner).pw_uid if spec.owner else -1
        gid = grp.getgrnam(spec.group).gr_gid if spec.group else -1
    except KeyError as exc:
        raise StoreError(f"{spec.path}: unknown owner or group ({exc})") from exc
    return uid, gid


def render(spec: OutputSpec, bundle: Bundle) -> bytes:
    """The bytes of a single-file output. Secret for key, combined and pkcs12 formats."""
    fmt = spec.format
    if fmt is OutputFormat.FULLCHAIN:
        return bundle.fullchain_pem
    if fmt is OutputFormat.CERT:
        return bundle.cert_pem
    if fmt is OutputFormat.CHAIN:
        return bundle.chain_pem
    if fmt is OutputFormat.KEY:
        return bundle.key_pem
    if fmt is OutputFormat.COMBINED:
        return bundle.key_pem + bundle.fullchain_pem
    certs = keys.split_pem_chain(bundle.fullchain_pem)
    if fmt is OutputFormat.DER:
        return certs[0].public_bytes(serialization.Encoding.DER)
    if fmt is OutputFormat.PKCS12:
        if spec.password_file is None:
            raise StoreError(f"{spec.path}: pkcs12 output needs a password_file")
        try:
            password = read_file_nofollow(spec.password_file, limit=4096).rstrip(b"\r\n")
        except OSError as exc:
            raise StoreError(f"{spec.password_file}: cannot read: {exc.strerror}") from exc
        key = keys.load_private_key(bundle.key_pem)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return pkcs12.serialize_key_and_certificates(
            b"rotatord", key, certs[0], certs[1:] or None, encryption
        )
    raise StoreError(f"{spec.path}: format {fmt.value} is not a single file")


def _publish_directory(
    spec: OutputSpec, bundle: Bundle, version: str, uid: int, gid: int, ops: FsOps, trust: Trust
) -> None:
    with _open_created(spec.path, trust, ops, follow_last=False) as root:
        # Whoever can change the root can point ``current`` at a key of their own.
        check_owned_root(root, trust)
        _publish_version(root, spec, bundle, version, uid, gid, ops)
        _switch_current(root, version, ops)
        _prune_directory(root, version)


def _open_created(path: Path, trust: Trust, ops: FsOps, *, follow_last: bool) -> SafeDir:
    found = open_dir(path, trust, create_mode=0o755, follow_last=follow_last, ops=ops)
    if found is None:  # open_dir creates what is missing; None only without create_mode
        raise StoreError(f"{path}: could not be created")
    return found


def _publish_version(
    root: SafeDir, spec: OutputSpec, bundle: Bundle, version: str, uid: int, gid: int, ops: FsOps
) -> None:
    st = root.lstat(version)
    if st is not None and stat.S_ISDIR(st.st_mode):
        return
    if st is not None:
        raise StoreError(
            f"{spec.path / version}: exists and is not a real directory; refusing to use it"
        )
    tmp = temp_name()
    try:
        # The version directory stays ours (so we can prune it); only the files inside get
        # the consumer's owner. 0755 lets the consumer traverse it.
        ops.mkdir(root.at(tmp), 0o755)
        files = (
            ("privkey.pem", bundle.key_pem, spec.mode),
            ("cert.pem", bundle.cert_pem, 0o644),
            ("chain.pem", bundle.chain_pem, 0o644),
            ("fullchain.pem", bundle.fullchain_pem, 0o644),
        )
        write_new_files([(root.at(tmp) / n, d, m, uid, gid) for n, d, m in files], ops)
        ops.fsync_dir(root.at(tmp))
        ops.rename(root.at(tmp), root.at(version))
        ops.fsync(root.fd)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True, dir_fd=root.fd)
        raise StoreError(f"{spec.path}: cannot publish version: {exc.strerror or exc}") from exc


def _switch_current(root: SafeDir, version: str, ops: FsOps) -> None:
    st = root.lstat("current")
    if st is not None and not stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{root.path / 'current'}: is not a symlink; refusing to replace it")
    tmp_link = temp_name(".current" + TEMP_PREFIX)
    try:
        ops.symlink(version, root.at(tmp_link))
        ops.replace(root.at(tmp_link), root.at("current"))
        ops.fsync(root.fd)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_link, dir_fd=root.fd)
        raise StoreError(f"{root.path / 'current'}: cannot switch: {exc.strerror or exc}") from exc


def _is_real_dir(root: SafeDir, name: str) -> bool:
    st = root.lstat(name)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _prune_directory(root: SafeDir, current: str) -> None:
    versions = sorted(
        e for e in os.listdir(root.fd) if VERSION_RE.match(e) and _is_real_dir(root, e)
    )
    keep = set(versions[-DIRECTORY_KEEP:]) | {current}
    for name in versions:
        if name not in keep:
            zero_file(root.at(name), "privkey.pem")
            shutil.rmtree(name, ignore_errors=True, dir_fd=root.fd)


def _publish_file(
    spec: OutputSpec, data: bytes, uid: int, gid: int, ops: FsOps, trust: Trust
) -> None:
    """Replace one file in one rename, in a parent reached by :func:`open_dir`; refuse anything
    but a regular file (a FIFO, a device, a symlink) at the path."""
    name = spec.path.name
    with _open_created(spec.path.parent, trust, ops, follow_last=True) as parent:
        check_slot(parent, name, spec.path)
        tmp = temp_name(f".{name}{TEMP_PREFIX}")
        try:
            write_new_file(parent.at(tmp), data, mode=spec.mode, ops=ops, uid=uid, gid=gid)
            ops.rename(parent.at(tmp), parent.at(name))
            ops.fsync(parent.fd)  # the directory itself: fsync_dir would reopen it by path
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent.fd)
            raise StoreError(f"{spec.path}: cannot write: {exc.strerror or exc}") from exc


def publish(
    outputs: Sequence[OutputSpec],
    bundle: Bundle,
    version: str,
    ops: FsOps = DEFAULT_OPS,
    trust: Trust | None = None,
) -> list[str]:
    """Publish every output of one version; returns the paths written. StoreError on failure,
    naming the refused path (outputs already replaced stay replaced: the caller rolls back by
    publishing the old one). ``trust`` defaults to root and this process's user and group."""
    trust = trust or Trust.of_process()
    written: list[str] = []
    for spec in outputs:
        uid, gid = owner_ids(spec)
        try:
            if spec.format is OutputFormat.DIRECTORY:
                _publish_directory(spec, bundle, version, uid, gid, ops, trust)
            else:
                _publish_file(spec, render(spec, bundle), uid, gid, ops, trust)
        except OSError as exc:  # opening a component (EACCES, ELOOP, ...)
            raise StoreError(f"{spec.path}: cannot publish: {exc.strerror or exc}") from exc
        written.append(str(spec.path))
    return written
