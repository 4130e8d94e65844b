"""The ACME account's files: ``key.json`` (the account key, 0600 from creation),
``regr.json`` (the account URL, the directory it belongs to, the contacts last sent, and
``status: deactivated`` once deactivated), ``key.pending.json`` (a rollover's new key, written
durably *before* the key-change request and promoted over ``key.json`` only once the CA
confirmed it), ``.lock`` (flock held by whoever changes the key), and the new-account message.

Rules: the account key and the EAB secret are never logged or put in an error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwk import JWK, JWKEC

from rotatord.core.errors import IssuanceError
from rotatord.core.model import AcmeSpec
from rotatord.fsutil import DEFAULT_OPS, atomic_write, ensure_tree, read_file_nofollow

KEY_NAME = "key.json"
PENDING_NAME = "key.pending.json"
REGR_NAME = "regr.json"


def account_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "accounts" / name


def load_key(path: Path) -> JWKEC:
    key = JWK.json_loads(read_file_nofollow(path))
    if not isinstance(key, JWKEC):
        raise IssuanceError(f"{path}: account key is not an EC key", retryable=False)
    return key


def new_key() -> JWKEC:
    return JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def key_stamp(account_dir: Path) -> tuple[int, int] | None:
    """Identity of ``key.json`` (inode, mtime): a rollover by another process changes it."""
    try:
        st = os.stat(account_dir / KEY_NAME, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def write_pending(account_dir: Path, key: JWKEC) -> None:
    atomic_write(account_dir / PENDING_NAME, key.json_dumps().encode(), 0o600)


def load_pending(account_dir: Path) -> JWKEC | None:
    try:
        return load_key(account_dir / PENDING_NAME)
    except FileNotFoundError:
        return None


def promote_pending(account_dir: Path) -> None:
    """The CA knows the pending key: it becomes ``key.json`` in one rename (old key gone)."""
    os.replace(account_dir / PENDING_NAME, account_dir / KEY_NAME)
    DEFAULT_OPS.fsync_dir(account_dir)


def drop_pending(account_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(account_dir / PENDING_NAME)
    DEFAULT_OPS.fsync_dir(account_dir)


@contextlib.contextmanager
def locked(account_dir: Path) -> Iterator[None]:
    """Exclusive flock on the account: one key change (or pending resolution) at a time,
    between the daemon and ``rotatord account`` commands."""
    ensure_tree(account_dir, 0o700)
    fd = os.open(
        account_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_or_create_key(account_dir: Path) -> JWKEC:
    ensure_tree(account_dir, 0o700)
    path = account_dir / KEY_NAME
    try:
        return load_key(path)
    except FileNotFoundError:
        key = new_key()
        atomic_write(path, key.json_dumps().encode(), 0o600)
        return key


def load_doc(account_dir: Path, directory: str) -> dict[str, Any] | None:
    """``regr.json`` when it belongs to ``directory``, else None (another CA: register anew)."""
    try:
        doc = json.loads(read_file_nofollow(account_dir / REGR_NAME))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("directory") != directory:
        return None
    return doc


def load_uri(account_dir: Path, directory: str) -> str | None:
    doc = load_doc(account_dir, directory)
    if doc is not None and doc.get("status") == "deactivated":
        # Deactivation is final (RFC 8555 7.3.6): never register a replacement behind the
        # operator's back.
        raise IssuanceError(
            f"the account in {account_dir} was deactivated; move that directory away to "
            "register a new account",
            retryable=False,
        )
    uri = doc.get("uri") if doc is not None else None
    return uri if isinstance(uri, str) else None


def save_uri(
    account_dir: Path,
    uri: str,
    directory: str,
    contact: tuple[str, ...] | None = None,
    status: str | None = None,
) -> None:
    doc: dict[str, Any] = {"uri": uri, "directory": directory}
    if contact is not None:
        doc["contact"] = list(contact)
    if status is not None:
        doc["status"] = status
    atomic_write(account_dir / REGR_NAME, (json.dumps(doc) + "\n").encode(), 0o600)


def new_registration(
    spec: AcmeSpec, key: JWKEC, directory: messages.Directory
) -> messages.NewRegistration:
    eab = None
    if spec.eab is not None:
        hmac_key = read_file_nofollow(spec.eab.hmac_key_file).decode().strip()
        eab = messages.ExternalAccountBinding.from_data(
            account_public_key=key.public_key(),
            kid=spec.eab.kid,
            hmac_key=hmac_key,
            directory=directory,
        )
    return messages.NewRegistration.from_data(
        email=emails(spec.contact),
        terms_of_service_agreed=True,
        external_account_binding=eab,
    )


def emails(contact: tuple[str, ...]) -> str | None:
    return ",".join(c.removeprefix("mailto:") for c in contact) or None
