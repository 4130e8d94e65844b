"""Per-consumer outputs rendered from a version: fixed-path PEM/DER/PKCS#12 files and versioned
directories, each with its own owner, group and mode from the first byte.

Single files are replaced with one rename (temp file O_EXCL in the same directory, owner and mode
set before any byte, fsync, rename, fsync the directory). A consumer that reads a key and a
certificate as two files gets a ``directory`` output: a complete version directory and a
``current`` symlink flipped in one rename, so it can never pair a new certificate with an old key.

Rules: never write through a planted symlink or into a hard-linked file; never log a key or a
PKCS#12 password.
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
from rotatord.fsutil import (
    DEFAULT_OPS,
    TEMP_PREFIX,
    FsOps,
    atomic_write,
    ensure_tree,
    read_file_nofollow,
    temp_name,
    write_new_file,
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
    spec: OutputSpec, bundle: Bundle, version: str, uid: int, gid: int, ops: FsOps
) -> None:
    root = spec.path
    ensure_tree(root, 0o755, ops)
    target = root / version
    if os.path.lexists(target) and not _is_real_dir(target):
        raise StoreError(f"{target}: exists and is not a real directory; refusing to use it")
    if not _is_real_dir(target):
        tmp = root / temp_name()
        try:
            # The version directory stays ours (so we can prune it); only the files inside get
            # the consumer's owner. 0755 lets the consumer traverse it.
            ops.mkdir(tmp, 0o755)
            files = (
                ("privkey.pem", bundle.key_pem, spec.mode),
                ("cert.pem", bundle.cert_pem, 0o644),
                ("chain.pem", bundle.chain_pem, 0o644),
                ("fullchain.pem", bundle.fullchain_pem, 0o644),
            )
            for name, data, mode in files:
                write_new_file(tmp / name, data, mode, ops, uid, gid)
            ops.fsync_dir(tmp)
            ops.rename(tmp, target)
            ops.fsync_dir(root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"{root}: cannot publish version: {exc.strerror or exc}") from exc
    link = root / "current"
    if os.path.lexists(link) and not os.path.islink(link):
        raise StoreError(f"{link}: is not a symlink; refusing to replace it")
    tmp_link = root / temp_name(".current" + TEMP_PREFIX)
    try:
        ops.symlink(version, tmp_link)
        ops.replace(tmp_link, link)
        ops.fsync_dir(root)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_link)
        raise StoreError(f"{link}: cannot switch: {exc.strerror or exc}") from exc
    _prune_directory(root, version)


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _prune_directory(root: Path, current: str) -> None:
    versions = sorted(e for e in os.listdir(root) if VERSION_RE.match(e) and _is_real_dir(root / e))
    keep = set(versions[-DIRECTORY_KEEP:]) | {current}
    for name in versions:
        if name not in keep:
            zero_file(root / name, "privkey.pem")
            shutil.rmtree(root / name, ignore_errors=True)


def publish(
    outputs: Sequence[OutputSpec], bundle: Bundle, version: str, ops: FsOps = DEFAULT_OPS
) -> list[str]:
    """Publish every output of one version; returns the paths written. StoreError on failure
    (outputs already replaced stay replaced: the caller rolls back by publishing the old one)."""
    written: list[str] = []
    for spec in outputs:
        uid, gid = owner_ids(spec)
        if spec.format is OutputFormat.DIRECTORY:
            _publish_directory(spec, bundle, version, uid, gid, ops)
        else:
            if not spec.path.parent.exists():
                ensure_tree(spec.path.parent, 0o755, ops)
            try:
                atomic_write(spec.path, render(spec, bundle), spec.mode, ops, uid, gid)
            except OSError as exc:
                raise StoreError(f"{spec.path}: cannot write: {exc.strerror or exc}") from exc
        written.append(str(spec.path))
    return written
