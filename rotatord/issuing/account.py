"""The ACME account's files: ``key.json`` (the account key, 0600 from creation) and
``regr.json`` (the account URL and the directory it belongs to), and the new-account message.

Rules: the account key and the EAB secret are never logged or put in an error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwk import JWK, JWKEC

from rotatord.core.errors import IssuanceError
from rotatord.core.model import AcmeSpec
from rotatord.fsutil import atomic_write, ensure_tree, read_file_nofollow


def load_or_create_key(account_dir: Path) -> JWKEC:
    ensure_tree(account_dir, 0o700)
    path = account_dir / "key.json"
    try:
        key = JWK.json_loads(read_file_nofollow(path))
    except FileNotFoundError:
        key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        atomic_write(path, key.json_dumps().encode(), 0o600)
    if not isinstance(key, JWKEC):
        raise IssuanceError(f"{path}: account key is not an EC key", retryable=False)
    return key


@contextlib.contextmanager
def registration_lock(account_dir: Path) -> Iterator[None]:
    """Held while one process looks for the account and registers it if there is none, so a
    daemon and a one-shot CLI run on a fresh state dir register one account, not two (an
    flock on the account directory itself: no lock file to leave behind)."""
    ensure_tree(account_dir, 0o700)
    fd = os.open(account_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_uri(account_dir: Path, directory: str) -> str | None:
    try:
        doc = json.loads(read_file_nofollow(account_dir / "regr.json"))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("directory") != directory:
        return None  # the account belongs to another CA: register anew
    uri = doc.get("uri")
    return uri if isinstance(uri, str) else None


def save_uri(account_dir: Path, uri: str, directory: str) -> None:
    doc = {"uri": uri, "directory": directory}
    atomic_write(account_dir / "regr.json", (json.dumps(doc) + "\n").encode(), 0o600)


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
    emails = [c.removeprefix("mailto:") for c in spec.contact]
    return messages.NewRegistration.from_data(
        email=",".join(emails) if emails else None,
        terms_of_service_agreed=True,
        external_account_binding=eab,
    )
