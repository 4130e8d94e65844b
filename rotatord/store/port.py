"""The store port: what the rotation layer may assume of any certificate store.

``CertStore`` is the contract (certmagic's ``Storage``/``Locker`` docs are the model: the
guarantees matter more than the method list). The filesystem store (``store.fs``) implements it
today; a fleet store (etcd) will be a second implementation of the same port.

Rules: data types here are plain and frozen; no I/O in this module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from rotatord.core.model import IssuedMeta


@dataclass(frozen=True)
class Bundle:
    """Everything one version holds. ``key_pem`` is secret: never log or repr it."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    chain_pem: bytes
    meta: IssuedMeta

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


@dataclass(frozen=True)
class Version:
    name: str
    path: Path


@dataclass(frozen=True)
class RecoveryReport:
    removed_temp: tuple[str, ...] = ()
    removed_incomplete: tuple[str, ...] = ()
    repointed_current: str | None = None
    current: str | None = None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ServiceStatus:
    """What the loop remembers about one service between rotations (``status.json``).

    ``last_order_at`` and ``last_issued_at`` are the loop's own memory for its invariants (the
    minimum interval between orders); ``deferred`` says why an order was held back (e.g.
    ``budget_exhausted``) while ``next_attempt`` says until when.
    """

    last_result: str | None = None
    current_version: str | None = None
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_retryable: bool | None = None
    failures: int = 0
    next_attempt: datetime | None = None
    last_rotation_id: str | None = None
    last_order_at: datetime | None = None
    last_issued_at: datetime | None = None
    issued_lifetime_s: float | None = None
    deferred: str | None = None
    #: CA fallback: the account in use (None: the service's first) and its failures in a row.
    account: str | None = None
    account_failures: int = 0

    @property
    def issued_lifetime(self) -> timedelta | None:
        return timedelta(seconds=self.issued_lifetime_s) if self.issued_lifetime_s else None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ServiceStatus:
        """Tolerant: a field of the wrong type reads as its default, never as an exception."""
        out: dict[str, Any] = {}
        for f in fields(cls):
            value = doc.get(f.name)
            if f.name in (
                "last_attempt",
                "last_success",
                "next_attempt",
                "last_order_at",
                "last_issued_at",
            ):
                out[f.name] = _time(value)
            elif f.name in ("failures", "account_failures"):
                out[f.name] = value if isinstance(value, int) and value >= 0 else 0
            elif f.name == "issued_lifetime_s":
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                out[f.name] = float(value) if isinstance(value, int | float) and ok else None
                if out[f.name] is not None and out[f.name] <= 0:
                    out[f.name] = None
            elif f.name == "last_error_retryable":
                out[f.name] = value if isinstance(value, bool) else None
            else:
                out[f.name] = value if isinstance(value, str) else None
        return cls(**out)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            doc[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return doc


class CertStore(Protocol):
    """The versioned store of one service's key/certificate pairs.

    Contract:
    - ``lock()`` is exclusive across processes and threads for one service. Whoever takes it
      must read the current state again afterwards: another holder may have rotated while we
      waited ("check again under the lock"). Failing to take it raises ``StoreError``, never
      a bare ``OSError``.
    - ``stage(bundle)`` writes a complete version or nothing visible: on return every file is
      durable with its final mode (the key 0600, or 0640 with the key group, from its first
      byte); on ``StoreError`` no partial version and no unused key remain.
    - ``activate(version)`` switches ``current`` in one atomic step: every reader at every
      instant sees the old complete pair or the new one, never a mix. It returns the previous
      version. On ``StoreError`` the switch may or may not have happened: callers re-read
      ``current_version()``.
    - ``current_version()`` is cheap and never raises for a missing or foreign ``current``.
      ``current_link`` is only ever replaced (a new link renamed over it), never changed in
      place: a reader that finds its identity (``lstat``) unchanged may reuse what it read.
    - ``prune(keep)`` never removes the current version or the one before it (a rollback
      target); ``destroy_version`` overwrites the key before removing it.
    - ``read_status``/``read_journal`` return ``{}`` for anything missing or unreadable;
      ``write_status``/``write_journal`` replace the document atomically or raise ``StoreError``.
    - ``recover()`` may run at every start and after any crash; it only removes what no
      complete version needs and repairs ``current`` to the newest complete version.
    - Nothing written here is ever read through a symlink someone else planted.
    """

    service: str
    dir: Path
    current_link: Path

    def lock(self, *, blocking: bool = True) -> contextlib.AbstractContextManager[None]: ...

    def current_version(self) -> Version | None: ...

    def versions(self) -> list[Version]: ...

    def read(self, version: Version, *, with_key: bool = True) -> Bundle: ...

    def read_current(self, *, with_key: bool = True) -> tuple[Version, Bundle] | None: ...

    def stage(self, bundle: Bundle, *, extra_meta: dict[str, Any] | None = None) -> Version: ...

    def activate(self, version: Version) -> Version | None: ...

    def prune(self, keep: int) -> list[Version]: ...

    def destroy_version(self, version: Version) -> None: ...

    def read_status(self) -> dict[str, Any]: ...

    def write_status(self, doc: dict[str, Any]) -> None: ...

    def read_journal(self) -> dict[str, Any]: ...

    def write_journal(self, doc: dict[str, Any]) -> None: ...

    def recover(self, now: datetime | None = None, *, thorough: bool = True) -> RecoveryReport: ...
