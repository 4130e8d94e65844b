"""The status view: what ``rotatord status`` shows for one service.

Rules: read-only, no lock, no private key read; status comes from memory first (the book), so a
failure the disk could not record is still shown, together with the fact that it is unsaved.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rotatord.core import policy
from rotatord.rotation import fallback

if TYPE_CHECKING:
    from rotatord.rotation.rotator import Rotator


def service_status(rotator: Rotator, name: str, now: datetime) -> dict[str, Any]:
    spec = rotator.spec(name)
    store = rotator.plain_store(name)
    installed = rotator.installed(name)
    decision = rotator.decision(spec, installed, now)
    doc: dict[str, Any] = {"service": name, "domains": list(spec.domains), "account": spec.account}
    if installed is not None:
        info = installed.info
        doc.update(
            serial=info.serial_hex,
            names=list(info.names),
            key_type=installed.bundle.meta.key_type.value,
            not_before=info.not_before.isoformat(),
            not_after=info.not_after.isoformat(),
            days_left=round((info.not_after - now).total_seconds() / 86400, 3),
            seconds_left=int((info.not_after - now).total_seconds()),
            version=installed.version.name,
            issued_by=installed.bundle.meta.account,
            issuer_directory=installed.bundle.meta.directory,
        )
        if policy.renew_before_clamped(info.lifetime, spec.renew_before):
            doc["warning"] = policy.clamp_message(spec.renew_before, info.lifetime)
    else:
        doc.update(serial=None, version=None, not_after=None, days_left=None, seconds_left=None)
    entry = rotator.book.entry(store)
    status = entry.status
    doc["renewal_due_at"] = decision.at.isoformat()
    doc["due_now"] = decision.due
    doc["reason"] = decision.reason
    if status.failures and status.next_attempt:
        doc["next_action"] = {"at": status.next_attempt.isoformat(), "why": "retry"}
    elif status.deferred and status.next_attempt:
        doc["next_action"] = {"at": status.next_attempt.isoformat(), "why": status.deferred}
    else:
        doc["next_action"] = {"at": decision.at.isoformat(), "why": decision.reason}
    doc["last_result"] = status.last_result
    doc["last_error"] = status.last_error
    doc["failures"] = status.failures
    doc["last_attempt"] = status.last_attempt.isoformat() if status.last_attempt else None
    doc["last_success"] = status.last_success.isoformat() if status.last_success else None
    doc["deferred"] = status.deferred
    doc["status_persisted"] = entry.persisted
    if not entry.persisted:
        doc["status_error"] = entry.persist_error
    account = fallback.in_use(spec, status)
    if len(spec.accounts) > 1:
        doc.update(accounts=list(spec.accounts), account_in_use=account)
        doc["account_failures"] = status.account_failures
    limits = rotator.config.acme[account].budget
    doc["budget"] = rotator.ledger.usage(account, spec.domains, limits, now)
    return doc
