"""When to renew and when to retry: pure decisions that take ``now``.

Rules: no clock reads, no I/O, no randomness drawn here (callers pass ``jitter`` in [0, 1)), so
every function is a table- and property-testable fact about its arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotatord.core.model import DEFAULT_RETRY_LADDER, CertInfo, IssuedMeta, ServiceSpec

SHORT_LIFETIME = timedelta(days=10)
# Jitter spreads renewals of many certificates over a slice of the renewal window so that a fleet
# issued together does not hit the CA together. It only ever moves renewal *earlier*, which keeps
# "once due, stays due" true.
JITTER_FRACTION = 0.1
RETRY_LADDER = DEFAULT_RETRY_LADDER
ARI_MIN_RECHECK = timedelta(minutes=1)
ARI_MAX_RECHECK = timedelta(days=1)
ARI_ERROR_RECHECK = timedelta(hours=6)


@dataclass(frozen=True)
class Decision:
    """Whether to rotate now, when otherwise, and why (shown by ``status``)."""

    due: bool
    at: datetime
    reason: str


def renew_threshold(lifetime: timedelta, renew_before: timedelta | None = None) -> timedelta:
    """Remaining lifetime at which renewal becomes due: ⅓ of it, ½ for ≤ 10-day certificates."""
    if renew_before is not None:
        return renew_before
    if lifetime <= SHORT_LIFETIME:
        return lifetime / 2
    return lifetime / 3


def renewal_time(
    info: CertInfo, renew_before: timedelta | None = None, jitter: float = 0.0
) -> datetime:
    """The moment renewal of ``info`` becomes due under the lifetime rule (before any ARI)."""
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter must be in [0, 1)")
    threshold = renew_threshold(info.lifetime, renew_before)
    start = info.not_after - threshold
    return start - threshold * (JITTER_FRACTION * jitter)


def emergency_time(info: CertInfo) -> datetime:
    """Renew regardless of what the CA suggests once 1/20 of the lifetime remains."""
    return info.not_after - info.lifetime / 20


def config_drift(meta: IssuedMeta, spec: ServiceSpec, directory: str) -> tuple[str, ...]:
    """Why the installed certificate no longer matches the service's config (empty if it does)."""
    reasons: list[str] = []
    if sorted(meta.names) != sorted(spec.domains):
        reasons.append("names")
    if meta.key_type != spec.key_type:
        reasons.append("key_type")
    if meta.account != spec.account or meta.directory != directory:
        reasons.append("account")
    return tuple(reasons)


def decide(
    info: CertInfo | None,
    now: datetime,
    *,
    renew_before: timedelta | None = None,
    jitter: float = 0.0,
    drift: Sequence[str] = (),
    ari_time: datetime | None = None,
) -> Decision:
    """Decide whether a service needs a new certificate at ``now``.

    ``ari_time`` is the moment the CA's renewal window suggests (already drawn uniformly inside it
    by the caller); when given it replaces the lifetime rule, except that the emergency point
    (1/20 of the lifetime left) and expiry always win.
    """
    if info is None:
        return Decision(True, now, "missing")
    if drift:
        return Decision(True, now, "config_change:" + ",".join(drift))
    if now >= info.not_after:
        return Decision(True, now, "expired")
    if ari_time is not None:
        at, reason = min(ari_time, emergency_time(info)), "ari_window"
        if at == emergency_time(info) and ari_time > at:
            reason = "emergency"
    else:
        at = renewal_time(info, renew_before, jitter)
        reason = "renew_before" if renew_before is not None else "lifetime_fraction"
    return Decision(now >= at, at, reason)


def renewal_due(
    info: CertInfo | None, now: datetime, renew_before: timedelta | None = None
) -> bool:
    """True when the lifetime rule says renew (no jitter, no ARI): what a one-shot CLI run uses."""
    return decide(info, now, renew_before=renew_before).due


def next_attempt(
    failures: int,
    now: datetime,
    not_after: datetime | None,
    retry_after: datetime | None = None,
    ladder: Sequence[timedelta] = RETRY_LADDER,
) -> datetime:
    """When to try again after ``failures`` consecutive failures (``failures >= 1``).

    The ladder is 1 min, 10 min, 100 min, then every 6 h; the CA's Retry-After moves it later; and
    while the current certificate is still valid the retry always falls before its expiry (half way
    to it if the ladder or the CA would overshoot), because an expired certificate is the outage
    the whole daemon exists to prevent.
    """
    if failures < 1:
        raise ValueError("failures must be >= 1")
    step = ladder[min(failures, len(ladder)) - 1]
    at = now + step
    if retry_after is not None and retry_after > at:
        at = retry_after
    if not_after is not None and now < not_after and at >= not_after:
        at = max(now + (not_after - now) / 2, now + timedelta(microseconds=1))
    return at


def jitter_for(service: str, serial: int) -> float:
    """A stable jitter in [0, 1) per (service, certificate): restarts do not redraw it, and
    services issued in the same second still spread out."""
    digest = hashlib.sha256(f"{service}:{serial:x}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def ari_recheck(now: datetime, retry_after: datetime | None) -> datetime:
    """When to ask the CA's renewalInfo again: its Retry-After clamped to [1 min, 1 day]."""
    if retry_after is None:
        return now + ARI_ERROR_RECHECK
    delay = min(max(retry_after - now, ARI_MIN_RECHECK), ARI_MAX_RECHECK)
    return now + delay


def ari_pick(start: datetime, end: datetime, u: float) -> datetime:
    """The moment inside the CA's window ``[start, end]`` given a uniform draw ``u`` in [0, 1)."""
    if end <= start:
        return start
    return start + (end - start) * u
