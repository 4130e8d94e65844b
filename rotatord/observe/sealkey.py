"""Key files of the audit log's forward-secure sealing: the host's evolving key, the operator's
verification key.

The host's key file (``<state_dir>/audit/seal.key``, 0600, in a 0700 directory) holds the current
epoch's number, its key and when the epoch opened. ``evolve`` replaces it with the next epoch's
key in one rename and then overwrites the old file's inode with zeros and fsyncs it, so the old
key is gone from this host (best effort on journaling or copy-on-write filesystems, where an old
block may survive: see the README). The operator's verification key file holds ``k_0`` and is
meant to leave the host at once.

Rules: every key file is created O_EXCL|O_NOFOLLOW in its target directory with mode 0600 before
the first byte (``fsutil``); a key file that is a symlink, has several links or is readable by
group or others is refused; no key byte ever goes into a message, a log line or an audit record.
Callers hold the audit log's flock while loading or evolving the host key (one writer at a time).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rotatord.core.errors import AuditError, StoreError
from rotatord.fsutil import (
    atomic_write,
    ensure_tree,
    read_file_nofollow,
    remove_temp_files,
    zero_file,
)
from rotatord.observe.record import KEY_BYTES, evolve, key_id

HOST_KEY_KIND = "rotatord-audit-seal-key"
VERIFY_KEY_KIND = "rotatord-audit-verification-key"


def host_key_path(state_dir: Path) -> Path:
    """Where the daemon's evolving sealing key lives: a fixed place in the state directory."""
    return state_dir / "audit" / "seal.key"


@dataclass(frozen=True)
class SealState:
    """The current epoch: its number, its key, the sealing run's key id, when it opened."""

    epoch: int
    key: bytes
    key_id: str
    opened: datetime

    def __repr__(self) -> str:  # never print the key, even in a traceback's locals
        return f"SealState(epoch={self.epoch}, key_id={self.key_id}, opened={self.opened})"


def _parse(raw: bytes, kind: str, path: Path) -> dict[str, object]:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("kind") != kind or doc.get("v") != 1:
        raise AuditError(f"{path}: not a {kind} file")
    key = doc.get("key")
    if not isinstance(key, str) or len(key) != 2 * KEY_BYTES:
        raise AuditError(f"{path}: malformed key")
    try:
        doc["key"] = bytes.fromhex(key)
    except ValueError as exc:
        raise AuditError(f"{path}: malformed key") from exc
    return doc


def _read_private(path: Path) -> bytes:
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            raise AuditError(f"{path}: key file is accessible to group or others; refusing it")
        if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
            raise AuditError(f"{path}: key file has {st.st_nlink} links; refusing it")
        return read_file_nofollow(path, 4096)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise AuditError(f"{path}: cannot read key file: {exc.strerror}") from exc
    except StoreError as exc:
        raise AuditError(str(exc)) from exc


def load_host_key(path: Path) -> SealState | None:
    """The current epoch's state, or None when there is no key file (sealing not started)."""
    try:
        doc = _parse(_read_private(path), HOST_KEY_KIND, path)
    except FileNotFoundError:
        return None
    epoch, kid, opened = doc.get("epoch"), doc.get("key_id"), doc.get("opened")
    if not isinstance(epoch, int) or epoch < 0 or not isinstance(kid, str):
        raise AuditError(f"{path}: malformed seal key file")
    try:
        when = datetime.fromisoformat(str(opened))
    except ValueError as exc:
        raise AuditError(f"{path}: malformed seal key file") from exc
    if when.tzinfo is None:
        raise AuditError(f"{path}: malformed seal key file (opened has no time zone)")
    key = doc["key"]
    assert isinstance(key, bytes)
    return SealState(epoch, key, kid, when)


def _state_dir_owner(path: Path) -> tuple[int, int]:
    """When root starts sealing for a daemon that runs as another user, the key must belong
    to that user (the owner of the state dir), or the daemon could not read it."""
    try:
        st = os.stat(path.parent.parent)
    except OSError:
        return -1, -1
    if os.geteuid() != 0 or st.st_uid == 0:
        return -1, -1
    return st.st_uid, st.st_gid


def _write_host_key(path: Path, state: SealState, owner: tuple[int, int] = (-1, -1)) -> None:
    doc = {
        "kind": HOST_KEY_KIND,
        "v": 1,
        "key_id": state.key_id,
        "epoch": state.epoch,
        "opened": state.opened.isoformat(),
        "key": state.key.hex(),
    }
    try:
        ensure_tree(path.parent, 0o700)
        if owner[0] != -1 and os.lstat(path.parent).st_uid != owner[0]:
            os.chown(path.parent, *owner, follow_symlinks=False)
        # Only this module writes here, and only under the audit flock: a temp file here is
        # one a kill left behind. Zero it (it holds a key) before it goes.
        for entry in os.listdir(path.parent):
            if entry.startswith(f".{path.name}.tmp-"):
                zero_file(path.parent, entry)
        remove_temp_files(path.parent)
        atomic_write(path, (json.dumps(doc) + "\n").encode(), 0o600, uid=owner[0], gid=owner[1])
    except (OSError, StoreError) as exc:
        raise AuditError(f"{path}: cannot write seal key: {exc}") from exc


def evolve_host_key(path: Path, state: SealState, now: datetime) -> SealState:
    """Replace the host key with the next epoch's and destroy the old one; returns the new."""
    new = SealState(state.epoch + 1, evolve(state.key), state.key_id, now)
    try:
        old_fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AuditError(f"{path}: cannot open seal key: {exc.strerror}") from exc
    try:
        st = os.fstat(old_fd)
        # Root (a `rotate --local` run) evolving the daemon user's key keeps it that user's.
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else (-1, -1)
        _write_host_key(path, new, owner)
        # The old key's inode has no name now; overwrite its bytes so the disk forgets them.
        os.pwrite(old_fd, b"\0" * st.st_size, 0)
        os.fsync(old_fd)
    except OSError as exc:
        raise AuditError(f"{path}: cannot destroy the previous seal key: {exc.strerror}") from exc
    finally:
        os.close(old_fd)
    return new


def create_host_key(path: Path, initial: bytes, now: datetime) -> SealState:
    """Start sealing: write epoch 0 (key ``k_0``). Refuses when a key file already exists."""
    if os.path.lexists(path):
        raise AuditError(
            f"{path}: a seal key already exists (sealing has started); to start over with a "
            "new key, move it aside first"
        )
    state = SealState(0, initial, key_id(initial), now)
    _write_host_key(path, state, _state_dir_owner(path))
    return state


def new_initial_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def verification_key_text(initial: bytes, now: datetime) -> str:
    doc = {
        "kind": VERIFY_KEY_KIND,
        "v": 1,
        "key_id": key_id(initial),
        "created": now.isoformat(),
        "key": initial.hex(),
    }
    return json.dumps(doc) + "\n"


def write_verification_key(out: Path, initial: bytes, now: datetime) -> None:
    """Write the operator's copy of ``k_0`` to a new file ``out`` (0600 from creation)."""
    if os.path.lexists(out):
        raise AuditError(f"{out}: already exists; refusing to overwrite it")
    try:
        atomic_write(out, verification_key_text(initial, now).encode(), 0o600)
    except (OSError, StoreError) as exc:
        raise AuditError(f"{out}: cannot write verification key: {exc}") from exc


def load_verification_key(path: Path) -> tuple[bytes, str]:
    """``(k_0, key_id)`` from the operator's verification key file."""
    try:
        raw = read_file_nofollow(path, 4096)
    except (OSError, StoreError) as exc:
        raise AuditError(f"{path}: cannot read verification key: {exc}") from exc
    doc = _parse(raw, VERIFY_KEY_KIND, path)
    key = doc["key"]
    assert isinstance(key, bytes)
    return key, key_id(key)
