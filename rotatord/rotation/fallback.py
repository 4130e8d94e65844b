"""CA fallback: which of a service's accounts the next order goes to.

A service lists accounts in order (``account = ["primary", "backup"]``). Orders go to the
account in use (the first, at start and after every success); after ``fallback_at`` consecutive
failures *at the CA* on it the next one is tried, at once on problems another CA may not share
(``unauthorized``, ``rejectedIdentifier``, CAA, a profile the CA does not offer, ...). After the
last account the first is tried again. Each switch is audited (``account_switched``) with its
reason.

The switch changes only *where* the next attempt goes, never *when*: the failure count that
drives the retry ladder, the minimum interval between orders and each account's budget are
untouched, so the loop's invariants hold across a switch.

Rules: decides from the status and the error only (no I/O); the caller audits and records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rotatord.core.errors import IssuanceError
from rotatord.core.model import ServiceSpec
from rotatord.issuing import PROFILE_NOT_OFFERED
from rotatord.store import ServiceStatus

ERROR_PREFIX = "urn:ietf:params:acme:error:"

#: Problems that say "this CA will not issue this", which the next CA may well not share.
SWITCH_AT_ONCE = frozenset(
    {
        "unauthorized",
        "rejectedIdentifier",
        "unsupportedIdentifier",
        "caa",
        "externalAccountRequired",
        "userActionRequired",
        "accountDoesNotExist",
        PROFILE_NOT_OFFERED,
    }
)


@dataclass(frozen=True)
class Switch:
    """A move from one account to the next, and why (for the audit record)."""

    from_account: str
    to_account: str
    reason: str
    failures: int


def in_use(spec: ServiceSpec, status: ServiceStatus) -> str:
    """The account the next order of ``spec`` goes to."""
    return status.account if status.account in spec.accounts else spec.account


def _code(exc: BaseException) -> str | None:
    typ = getattr(exc, "problem_type", None)
    if not isinstance(typ, str):
        return None
    return typ.removeprefix(ERROR_PREFIX)


def after_failure(
    spec: ServiceSpec, status: ServiceStatus, account: str | None, exc: BaseException
) -> tuple[dict[str, Any], Switch | None]:
    """Status changes after a failed rotation that asked ``account`` (None: the CA was not
    asked, e.g. a reload failed), and the switch to audit if there is one."""
    if account is None or not isinstance(exc, IssuanceError):
        return {}, None
    count = status.account_failures + 1 if status.account in (account, None) else 1
    code = _code(exc)
    at_once = code in SWITCH_AT_ONCE
    if len(spec.accounts) < 2 or not (at_once or count >= spec.fallback_after):
        return {"account": account, "account_failures": count}, None
    index = spec.accounts.index(account) if account in spec.accounts else -1
    nxt = spec.accounts[(index + 1) % len(spec.accounts)]
    reason = f"{code} (switch at once)" if at_once else f"{count} consecutive failures"
    return {"account": nxt, "account_failures": 0}, Switch(account, nxt, reason, count)


AFTER_SUCCESS: dict[str, Any] = {"account": None, "account_failures": 0}
"""A success resets to the first account: the next renewal prefers it again."""
