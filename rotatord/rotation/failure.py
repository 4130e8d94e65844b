"""Bookkeeping at the end of a rotation: the canonical ``rotation_finished`` line, the status
entry, and for failures the next attempt from the retry ladder.

Every outcome ends here, whatever raised: a failure is always audited and always in status
(memory first; disk when it can be written, and status says when it could not).

Rules: decides nothing itself: the next attempt comes from ``core.policy``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rotatord.clock import Clock
from rotatord.core import policy
from rotatord.core.errors import AuditError, StoreError
from rotatord.core.model import DaemonSpec
from rotatord.core.text import clip
from rotatord.observe.logging import get_logger
from rotatord.rotation import fallback
from rotatord.rotation.book import StatusBook
from rotatord.rotation.state import Ctx, Outcome, RotationResult

log = get_logger("rotatord.rotation")


def error_fields(exc: BaseException) -> dict[str, Any]:
    return {
        # Clipped: this goes into the audit log, status.json and the control reply.
        "error": clip(str(exc) or type(exc).__name__),
        "error_type": type(exc).__name__,
        "retryable": getattr(exc, "retryable", True),
        "problem_type": _clip_opt(getattr(exc, "problem_type", None)),
    }


def _clip_opt(value: object) -> str | None:
    return None if value is None else clip(str(value), 512)


def record_failure(
    ctx: Ctx,
    exc: BaseException,
    outcome: Outcome,
    *,
    clock: Clock,
    book: StatusBook,
    daemon: DaemonSpec,
) -> RotationResult:
    now = clock.now()
    fields = error_fields(exc)
    retry_after = getattr(exc, "retry_after", None)
    previous = book.get(ctx.store)
    failures = previous.failures + 1
    not_after = ctx.old.info.not_after if ctx.old else None
    next_at = policy.next_attempt(
        failures,
        now,
        not_after,
        retry_after if isinstance(retry_after, datetime) else None,
        daemon.retry_ladder,
        daemon.min_order_interval,
    )
    duration = (clock.monotonic() - ctx.started) * 1000
    changes, switch = fallback.after_failure(ctx.spec, previous, ctx.extra.get("account"), exc)
    try:
        if switch is not None:
            ctx.audit.emit(
                "account_switched",
                from_account=switch.from_account,
                to_account=switch.to_account,
                reason=switch.reason,
                account_failures=switch.failures,
                next_attempt=next_at.isoformat(),
            )
        ctx.audit.emit(
            "rotation_failed",
            **fields,
            failures=failures,
            attempt_at=now.isoformat(),
            next_attempt=next_at.isoformat(),
        )
        ctx.audit.emit(
            "rotation_finished",
            outcome=outcome.value,
            reason=ctx.reason,
            old_serial=ctx.old_serial,
            new_serial=ctx.new_serial,
            next_attempt=next_at.isoformat(),
            duration_ms=round(duration, 1),
            resumed=ctx.resumed,
            **fields,
        )
    except AuditError as audit_exc:
        log.error("audit_unwritable", service=ctx.spec.name, error=str(audit_exc))
    try:
        current = ctx.store.current_version()
    except OSError:
        current = None
    book.update(
        ctx.store,
        last_result=outcome.value,
        current_version=current.name if current else previous.current_version,
        last_attempt=now,
        last_error=fields["error"],
        last_error_retryable=bool(fields["retryable"]),
        failures=failures,
        next_attempt=next_at,
        last_rotation_id=ctx.rotation_id,
        deferred=None,
        **changes,
    )
    return RotationResult(
        ctx.spec.name,
        ctx.rotation_id,
        outcome,
        ctx.reason,
        ctx.old_serial,
        ctx.new_serial,
        ctx.new.version.name if ctx.new else None,
        error=fields["error"],
        retryable=bool(fields["retryable"]),
        next_attempt=next_at,
        duration_ms=duration,
        resumed=ctx.resumed,
    )


def record_success(ctx: Ctx, *, clock: Clock, book: StatusBook) -> RotationResult:
    assert ctx.new is not None
    now = ctx.now or clock.now()
    duration = (clock.monotonic() - ctx.started) * 1000
    result = RotationResult(
        ctx.spec.name,
        ctx.rotation_id,
        Outcome.ROTATED,
        ctx.reason,
        ctx.old_serial,
        ctx.new_serial,
        ctx.new.version.name,
        duration_ms=duration,
        resumed=ctx.resumed,
    )
    book.update(
        ctx.store,
        last_result=Outcome.ROTATED.value,
        current_version=ctx.new.version.name,
        last_attempt=now,
        last_success=now,
        last_error=None,
        last_error_retryable=None,
        failures=0,
        next_attempt=None,
        last_rotation_id=ctx.rotation_id,
        deferred=None,
        # Only an installed certificate starts the "a tenth of its lifetime" interval: one the
        # CA issued but we could not install must be retried on the ladder, not days later.
        last_issued_at=ctx.extra.get("issued_at", now),
        issued_lifetime_s=ctx.new.info.lifetime.total_seconds(),
        **fallback.AFTER_SUCCESS,
    )
    try:
        ctx.audit.emit(
            "rotation_finished",
            outcome=Outcome.ROTATED.value,
            reason=ctx.reason,
            old_serial=ctx.old_serial,
            new_serial=ctx.new_serial,
            version=ctx.new.version.name,
            not_after=ctx.new.info.not_after.isoformat(),
            duration_ms=round(duration, 1),
            resumed=ctx.resumed,
        )
    except AuditError as exc:
        log.error("rotation_finish_unrecorded", service=ctx.spec.name, error=str(exc))
    return result


def record_deferred(
    ctx: Ctx, why: str, until: datetime, *, clock: Clock, book: StatusBook, detail: str = ""
) -> RotationResult:
    """Due, but held back by an invariant: nothing was asked of the CA."""
    book.update(ctx.store, deferred=why, next_attempt=until)
    duration = (clock.monotonic() - ctx.started) * 1000
    return RotationResult(
        ctx.spec.name,
        ctx.rotation_id,
        Outcome.DEFERRED,
        why,
        ctx.old_serial,
        ctx.old_serial,
        ctx.old.version.name if ctx.old else None,
        error=detail or None,
        next_attempt=until,
        duration_ms=duration,
    )


def prune_versions(ctx: Ctx, default_keep: int) -> None:
    """Remove versions beyond the service's ``keep_versions`` (their keys destroyed, audited);
    a failure to prune is logged, never a failed rotation."""
    keep = ctx.spec.keep_versions or default_keep
    try:
        removed = ctx.store.prune(keep)
    except (OSError, StoreError) as exc:
        log.warning("prune_failed", service=ctx.spec.name, error=str(exc))
        return
    for v in removed:
        ctx.audit.emit("key_destroyed", version=v.name, why="pruned")
