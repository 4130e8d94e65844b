"""Typed rotation state: outcomes and phases as enums, what one rotation learned so far.

Rules: data only; no I/O. ``Phase`` values are what ``journal.json`` persists, so renaming one
is an on-disk format change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rotatord.core.model import CertInfo, ServiceSpec
from rotatord.observe.audit import BoundAudit
from rotatord.store import Bundle, CertStore, Version


class Outcome(enum.StrEnum):
    """How one service's rotation ended (``rotation_finished.outcome``)."""

    ROTATED = "rotated"
    NOT_DUE = "not_due"
    DEFERRED = "deferred"  # due, but an invariant (budget, minimum interval) held it back
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class Phase(enum.StrEnum):
    """Where a rotation is, persisted before each step that changes what consumers see."""

    STAGED = "staged"
    ACTIVATED = "activated"
    PUBLISHED = "published"
    RELOADED = "reloaded"
    PROBED = "probed"
    ROLLING_BACK = "rolling_back"
    FINISHED = "finished"
    ROLLED_BACK = "rolled_back"


# Phases after which the new pair may be live but its consumers may not have caught up yet: a
# rotation found here at start-up is resumed (outputs, reloads, probe, then finished).
UNFINISHED = (Phase.STAGED, Phase.ACTIVATED, Phase.PUBLISHED, Phase.RELOADED, Phase.PROBED)


@dataclass(frozen=True)
class Installed:
    """A version on disk with its bundle and parsed leaf."""

    version: Version
    bundle: Bundle
    info: CertInfo


@dataclass(frozen=True)
class RotationResult:
    service: str
    rotation_id: str
    outcome: Outcome
    reason: str = ""
    old_serial: str | None = None
    new_serial: str | None = None
    version: str | None = None
    error: str | None = None
    retryable: bool | None = None
    next_attempt: datetime | None = None
    duration_ms: float = 0.0
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.ROTATED, Outcome.NOT_DUE)

    def summary(self) -> dict[str, Any]:
        """What the CLI prints and the control socket sends for one rotation."""
        return {
            "service": self.service,
            "outcome": self.outcome.value,
            "old_serial": self.old_serial,
            "new_serial": self.new_serial,
            "version": self.version,
            "reason": self.reason,
            "error": self.error,
            "next_attempt": self.next_attempt.isoformat() if self.next_attempt else None,
        }


class Stage(enum.Enum):
    """Where one context is within the batch (in memory; ``Phase`` is what is persisted)."""

    PENDING = "pending"
    NOT_DUE = "not_due"
    DEFERRED = "deferred"
    FAILED = "failed"
    ACTIVATED = "activated"


@dataclass
class Ctx:
    """What one service's rotation learned so far; turned into its canonical line at the end."""

    spec: ServiceSpec
    audit: BoundAudit
    store: CertStore
    started: float
    rotation_id: str
    trigger: str
    now: datetime | None = None
    stage: Stage = Stage.PENDING
    reason: str = ""
    old: Installed | None = None
    new: Installed | None = None
    new_cert_fp: str | None = None
    error: Exception | None = None
    deploy_error: Exception | None = None
    rolled_back: bool = False
    rollback_ok: bool = False
    rollback_error: str | None = None
    fresh_key: bool = False  # never reuse the old key (revocation for key compromise)
    resumed: bool = False
    deferred_until: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def old_serial(self) -> str | None:
        return self.old.info.serial_hex if self.old else None

    @property
    def new_serial(self) -> str | None:
        return self.new.info.serial_hex if self.new else None


def new_pair(c: Ctx) -> Installed:
    assert c.new is not None
    return c.new


def old_pair(c: Ctx) -> Installed:
    assert c.old is not None
    return c.old
