"""When to renew and when to retry: pure decisions that take ``now``.

Rules: no clock reads, no I/O, no randomness drawn here (callers pass ``jitter`` in [0, 1)), so
every function is a table- and property-testable fact about its arguments.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotatord.core.model import (
    DEFAULT_RETRY_LADDER,
    BudgetLimits,
    CertInfo,
    IssuedMeta,
    ServiceSpec,
)

SHORT_LIFETIME = timedelta(days=10)
# Jitter spreads renewals of many certificates over a slice of the renewal window so that a fleet
# issued together does not hit the CA together. It only ever moves renewal *earlier*, which keeps
# "once due, stays due" true.
JITTER_FRACTION = 0.1
RETRY_LADDER = DEFAULT_RETRY_LADDER
ARI_MIN_RECHECK = timedelta(minutes=1)
ARI_MAX_RECHECK = timedelta(days=1)
ARI_ERROR_RECHECK = timedelta(hours=6)
# Loop invariants (see ``plan_next``): the floor between two automatic orders of one service, and
# the share of a certificate's lifetime that must pass after its issuance before another one.
MIN_ORDER_INTERVAL = timedelta(minutes=1)
MIN_INTERVAL_FRACTION = 0.1
# While a service has no valid certificate, waiting longer than this is never right: the CA's
# Retry-After and the ladder's long steps are both cut to it.
INVALID_RETRY_CAP = timedelta(hours=1)
RETRY_AFTER_CAP = timedelta(days=1)
# Reasons a certificate must be replaced although one was issued moments ago: there is none on
# disk, the operator changed what it must be issued for, or the CA itself asks (an ARI window in
# the past: an incident, a mass revocation). Reasons our own clock computes wait out the minimum
# interval after an issuance (a clock that jumped ahead makes a new certificate look expired:
# re-ordering at once would only repeat that). The floor and the budget bind every reason.
URGENT_REASONS = ("missing", "config_change", "ari_window")


@dataclass(frozen=True)
class Decision:
    """Whether to rotate now, when otherwise, and why (shown by ``status``)."""

    due: bool
    at: datetime
    reason: str


def renew_threshold(lifetime: timedelta, renew_before: timedelta | None = None) -> timedelta:
    """Remaining lifetime at which renewal becomes due: ⅓ of it, ½ for ≤ 10-day certificates.

    A ``renew_before`` that would leave less than the minimum interval (a tenth of the lifetime)
    between issuance and renewal is clamped to the default rule: otherwise a certificate is due
    again the moment it is issued, and the loop orders certificates as fast as the CA answers.
    """
    if renew_before is not None and not renew_before_clamped(lifetime, renew_before):
        return renew_before
    if lifetime <= SHORT_LIFETIME:
        return lifetime / 2
    return lifetime / 3


def renew_before_clamped(lifetime: timedelta, renew_before: timedelta | None) -> bool:
    """True when ``renew_before`` is too long for a certificate of ``lifetime`` (see above)."""
    return renew_before is not None and renew_before > lifetime * (1 - MIN_INTERVAL_FRACTION)


def clamp_message(renew_before: timedelta | None, lifetime: timedelta) -> str:
    """What an operator reads when ``renew_before`` is clamped for a ``lifetime`` certificate."""
    return (
        f"renew_before = {renew_before} is longer than 9/10 of a {lifetime} certificate's "
        f"lifetime: it would be due again as soon as it is issued; renewing with "
        f"{renew_threshold(lifetime)} left instead (the default rule)"
    )


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
    # With CA fallback a certificate from any listed account is current: its renewal timing
    # follows that certificate, not the first account (``directory`` is the issuing one's).
    if meta.account not in spec.accounts or meta.directory != directory:
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
        if renew_before is not None and not renew_before_clamped(info.lifetime, renew_before):
            reason = "renew_before"
        elif renew_before is not None:
            reason = "renew_before_clamped"
        else:
            reason = "lifetime_fraction"
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
    floor: timedelta = MIN_ORDER_INTERVAL,
) -> datetime:
    """When to try again after ``failures`` consecutive failures (``failures >= 1``).

    - The ladder (default 1 min, 10 min, 100 min, then every 6 h) never steps below ``floor``.
    - The CA's Retry-After moves the retry later, capped at 1 day (1 h without a valid
      certificate): a CA that says "in three years" must not silence a service for three years.
    - Without a valid certificate (missing or expired) no wait exceeds 1 h: that is the outage.
    - While the certificate is valid the retry falls before its expiry when it can: half way to
      it, but never sooner than ``floor`` (halving without a floor collapses to a hot loop).
    """
    if failures < 1:
        raise ValueError("failures must be >= 1")
    step = max(ladder[min(failures, len(ladder)) - 1], floor)
    valid = not_after is not None and now < not_after
    if not valid:
        step = min(step, max(INVALID_RETRY_CAP, floor))
    at = now + step
    if retry_after is not None and retry_after > at:
        cap = RETRY_AFTER_CAP if valid else max(INVALID_RETRY_CAP, floor)
        at = min(retry_after, now + cap)
    if valid and not_after is not None and at >= not_after:
        at = max(now + floor, now + (not_after - now) / 2)
    return at


def min_order_interval(
    lifetime: timedelta | None, floor: timedelta = MIN_ORDER_INTERVAL
) -> timedelta:
    """Least time between an issuance and the next automatic order: a tenth of the lifetime."""
    if lifetime is None:
        return floor
    return max(floor, lifetime * MIN_INTERVAL_FRACTION)


@dataclass(frozen=True)
class Plan:
    """When a service's next automatic order may go out, and why then (``status`` shows it)."""

    at: datetime
    why: str
    ari_time: datetime | None = None


@dataclass(frozen=True)
class History:
    """What the loop remembers about a service's past orders (from its status)."""

    failures: int = 0
    retry_at: datetime | None = None
    last_order_at: datetime | None = None
    last_issued_at: datetime | None = None
    issued_lifetime: timedelta | None = None


def plan_next(
    decision: Decision,
    history: History,
    now: datetime,
    *,
    floor: timedelta = MIN_ORDER_INTERVAL,
    budget_free_at: datetime | None = None,
    ignore_retry: bool = False,
) -> Plan:
    """The one place the loop's invariants meet: when may the next *automatic* order go out.

    A due certificate waits for the latest of: its retry time after failures (unless
    ``ignore_retry``: the operator changed the config), ``floor`` after the last order of any
    kind, a tenth of the lifetime after the last issuance (unless nothing is installed or the
    config changed), and the issuance budget's next free slot. Past timestamps from a clock that
    went backwards count as "now", so a jump back never blocks a service for longer than the
    interval itself.
    """
    # Not due yet: the same constraints apply from the moment it becomes due, so the plan (and
    # what ``status`` shows) is when the order will really go out, not when it merely may.
    start = now if decision.due else decision.at
    candidates: list[tuple[datetime, str]] = [(start, decision.reason)]
    if history.failures and history.retry_at is not None and not ignore_retry:
        candidates.append((history.retry_at, "retry"))
    if history.last_order_at is not None:
        candidates.append((min(history.last_order_at, now) + floor, "min_interval"))
    urgent = decision.reason.startswith(URGENT_REASONS)
    if history.last_issued_at is not None and not urgent:
        gap = min_order_interval(history.issued_lifetime, floor)
        candidates.append((min(history.last_issued_at, now) + gap, "min_interval"))
    if budget_free_at is not None:
        candidates.append((budget_free_at, "budget_exhausted"))
    at, why = max(candidates, key=lambda c: c[0])
    if at <= start:
        return Plan(max(start, now) if decision.due else start, decision.reason)
    return Plan(at, why)


def budget_free_at(
    orders: Sequence[datetime],
    certificates: Sequence[datetime],
    limits: BudgetLimits,
    now: datetime,
) -> datetime | None:
    """None when one more order (that may yield one more certificate) fits the budget; else the
    moment the oldest counted event leaves its window and a slot frees up."""
    waits: list[datetime] = []
    for events, limit, window in (
        (orders, limits.orders, limits.orders_window),
        (certificates, limits.certificates, limits.certificates_window),
    ):
        # An event stamped in the future (the clock went back) counts as now: it still uses a
        # slot, but never blocks for longer than one window.
        recent = sorted(min(t, now) for t in events if min(t, now) > now - window)
        if len(recent) >= limit:
            waits.append(recent[len(recent) - limit] + window)
    return max(waits) if waits else None


@functools.lru_cache(maxsize=65_536)  # pure; planning asks it of every service every day
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
