"""Reading what is installed: the store of a service and its current version, parsed.

Rules: read-only; never reads a private key unless asked (planning and status run for every
service and need no secret).
"""

from __future__ import annotations

import grp

from rotatord.core import keys
from rotatord.core.errors import StoreError, VerificationError
from rotatord.core.model import Config, ServiceSpec
from rotatord.fsutil import DEFAULT_OPS, FsOps
from rotatord.rotation.state import Installed
from rotatord.store import CertStore, ServiceStore, Version


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


def read_installed(store: CertStore, *, with_key: bool = True) -> Installed | None:
    """The current version with its parsed leaf, or None if absent or unreadable."""
    try:
        version = store.current_version()
    except OSError:
        return None
    if version is None:
        return None
    return read_version(store, version, with_key=with_key)
