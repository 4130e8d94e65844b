"""Phase 1 of a rotation, under the service lock: check again, gate, key, order, verify, stage,
journal, activate.

The gate is where the loop's invariants bind every trigger: an automatic rotation goes ahead
only when ``policy.plan_next`` says now (minimum interval after an order and after an issuance,
retry time, budget); a manual one only past the budget (``--force`` included: it is refused
with a clear message when the budget is spent, because the CA's limit would refuse it anyway
and burn the account for a week).

Rules: every order is counted against the budget *before* it is sent.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import TYPE_CHECKING

from rotatord.core import keys, policy
from rotatord.core.errors import IssuanceError, StoreError
from rotatord.core.model import IssuedMeta, Trigger
from rotatord.issuing import PROFILE_NOT_OFFERED, IssuedCertificate, Issuer
from rotatord.observe.logging import get_logger
from rotatord.rotation import fallback, journal
from rotatord.rotation.installed import read_installed
from rotatord.rotation.state import Ctx, Installed, Phase, Stage
from rotatord.store import Bundle, ServiceStatus, Version

if TYPE_CHECKING:
    from rotatord.rotation.rotator import Rotator

log = get_logger("rotatord.rotation")


def history(status: ServiceStatus, last_order: datetime | None = None) -> policy.History:
    """What ``policy.plan_next`` needs from a service's status (and the ledger's record of its
    last order, which survives a crash in the middle of an order that status does not)."""
    last_order_at = status.last_order_at
    if last_order is not None and (last_order_at is None or last_order > last_order_at):
        last_order_at = last_order
    return policy.History(
        failures=status.failures,
        retry_at=status.next_attempt,
        last_order_at=last_order_at,
        last_issued_at=status.last_issued_at,
        issued_lifetime=status.issued_lifetime,
    )


class IssueStep:
    def __init__(self, rotator: Rotator) -> None:
        self._r = rotator

    def run(self, ctx: Ctx, force: bool, ari_time: datetime | None) -> None:
        r = self._r
        spec, audit, store = ctx.spec, ctx.audit, ctx.store
        clock = r.clock
        now = clock.now()
        ctx.now = now
        # Check again under the lock: another process may have rotated while we waited. The
        # old key is read only when it is to be reused (the pair is parsed once, cached).
        ctx.old = (
            read_installed(ctx.store)
            if spec.reuse_key and not ctx.fresh_key
            else r.public.current(ctx.store)
        )
        decision = r.decision(spec, ctx.old, now, ari_time)
        if not force and not decision.due:
            ctx.stage, ctx.reason = Stage.NOT_DUE, decision.reason
            log.info(
                "rotation_not_due",
                service=spec.name,
                renew_at=decision.at.isoformat(),
                reason=decision.reason,
            )
            return
        if r.closing:
            ctx.stage, ctx.reason = Stage.NOT_DUE, "shutting_down"
            return
        account = fallback.in_use(spec, r.book.get(store))
        ctx.extra["account"] = None  # set once the CA is asked
        if self._held_back(ctx, decision, force, now, account):
            return
        ctx.reason = "forced" if force and not decision.due else decision.reason
        audit.emit("rotation_started", reason=ctx.reason, old_serial=ctx.old_serial)
        key = self._key_for(ctx)
        csr = keys.make_csr(key, spec.domains)
        fingerprint = keys.public_key_fingerprint(key)
        audit.emit("csr_created", key_fingerprint=fingerprint, names=list(spec.domains))
        # Barriers (``audit.sync``) where a record must be durable before the step it describes
        # takes effect; between them the records of this rotation share one fsync (the caller
        # runs it inside ``audit.deferred()``). Here: the CSR leaves the process with the order.
        audit.sync()
        issuer = r.issuer(account)
        replaces = self._replaces(ctx, issuer)
        limits = r.config.acme[account].budget
        r.ledger.record_order(account, now, limits, service=spec.name)
        r.book.note(store, last_order_at=now, last_attempt=now)
        ctx.extra["account"] = account
        issued = self._order(ctx, issuer, csr, replaces)
        chain = keys.split_pem_chain(issued.cert_pem + issued.chain_pem)
        info = keys.cert_info(chain[0])
        issued_at = clock.now()
        # Counted once the CA issued it, not with the order: a kill in between must not leave
        # a certificate counted that was never issued (with 6-day certificates and the CA's
        # 5 per week, a few such kills would hold renewals back until expiry).
        r.ledger.record_certificate(account, spec.domains, issued_at, limits)
        ctx.extra["issued_at"] = issued_at
        ctx.new_cert_fp = keys.cert_fingerprint(chain[0])
        audit.emit(
            "certificate_issued",
            serial=info.serial_hex,
            not_before=info.not_before.isoformat(),
            not_after=info.not_after.isoformat(),
            names=list(info.names),
            key_fingerprint=fingerprint,
            cert_fingerprint=ctx.new_cert_fp,
            order_url=issued.order_url,
            replaces=issued.replaces,
            account=account,
            profile=spec.profile,
        )
        keys.verify_bundle(key, chain, spec.domains, clock.now())
        audit.sync()  # the key and its certificate reach the disk next
        bundle = Bundle(
            key_pem=keys.private_key_pem(key),
            cert_pem=issued.cert_pem,
            chain_pem=issued.chain_pem,
            meta=IssuedMeta(
                names=spec.domains,
                key_type=spec.key_type,
                account=account,
                directory=issuer.directory_url,
                serial=info.serial,
                not_before=info.not_before,
                not_after=info.not_after,
                issued_at=now,
            ),
        )
        version = store.stage(
            bundle, extra_meta={"key_fingerprint": fingerprint, "rotation_id": ctx.rotation_id}
        )
        try:
            journal.begin(ctx, version.name, now)
        except StoreError:
            self._discard(ctx, version)
            raise
        previous = self._activate(ctx, version)
        ctx.new = Installed(version, bundle, info)
        r.public.seed(store, ctx.new)
        ctx.stage = Stage.ACTIVATED
        audit.emit(
            "certificate_activated",
            serial=info.serial_hex,
            version=version.name,
            previous_version=previous.name if previous else None,
            key_fingerprint=fingerprint,
        )
        if ctx.old is not None:  # superseded by the same flip: recorded with the activation
            audit.emit(
                "certificate_superseded",
                serial=ctx.old.info.serial_hex,
                version=ctx.old.version.name,
            )
        # Right after its (durable) audit record: a journal past ``staged`` for the live version
        # tells recovery the activation was recorded (a kill before it: recovery records it).
        # Resume goes by which version is live, so ``staged`` with this version live resumes too.
        audit.sync()
        journal.mark(ctx, Phase.ACTIVATED)

    def _order(
        self, ctx: Ctx, issuer: Issuer, csr: bytes, replaces: str | None
    ) -> IssuedCertificate:
        spec = ctx.spec
        try:
            return issuer.issue(
                csr, spec.domains, spec.challenge, replaces=replaces, profile=spec.profile
            )
        except IssuanceError as exc:
            if exc.problem_type != PROFILE_NOT_OFFERED:
                raise
            raise IssuanceError(
                f"{self._r.config.source}: services.{spec.name}.profile: {exc}",
                retryable=False,
                problem_type=exc.problem_type,
            ) from exc

    def _held_back(
        self, ctx: Ctx, decision: policy.Decision, force: bool, now: datetime, account: str
    ) -> bool:
        """Apply the budget (every trigger) and, for automatic triggers, the loop invariants."""
        r = self._r
        spec = ctx.spec
        limits = r.config.acme[account].budget
        free = r.ledger.free_at(account, spec.domains, limits, now)
        if free is not None:
            usage = r.ledger.usage(account, spec.domains, limits, now)
            ctx.stage, ctx.reason, ctx.deferred_until = Stage.DEFERRED, "budget_exhausted", free
            ctx.error = StoreError(
                f"issuance budget of account {account!r} is spent "
                f"({usage['orders_used']}/{limits.orders} orders per {limits.orders_window}, "
                f"{usage['certificates_used']}/{limits.certificates} certificates for these "
                f"names per {limits.certificates_window}); next slot at {free.isoformat()}"
            )
            ctx.audit.emit("budget_exhausted", next_slot=free.isoformat(), forced=force, **usage)
            return True
        if ctx.trigger == Trigger.MANUAL.value or force:
            return False
        plan = policy.plan_next(
            decision,
            history(r.book.get(ctx.store), r.ledger.last_order(spec.account, spec.name)),
            now,
            floor=r.config.daemon.min_order_interval,
            ignore_retry=ctx.trigger == Trigger.CONFIG_CHANGE.value,
        )
        if plan.at > now:
            ctx.stage, ctx.reason, ctx.deferred_until = Stage.DEFERRED, plan.why, plan.at
            log.info(
                "rotation_deferred", service=spec.name, why=plan.why, until=plan.at.isoformat()
            )
            return True
        return False

    def _key_for(self, ctx: Ctx) -> keys.PrivateKey:
        spec = ctx.spec
        if spec.reuse_key and ctx.old is not None and not ctx.fresh_key:
            key = keys.load_private_key(ctx.old.bundle.key_pem)
            if keys.key_type_of(key) == spec.key_type:
                return key
        clock = self._r.clock
        t0 = clock.monotonic()
        key = keys.generate_key(spec.key_type)
        ctx.audit.emit(
            "key_generated",
            key_type=spec.key_type.value,
            key_fingerprint=keys.public_key_fingerprint(key),
            ms=round((clock.monotonic() - t0) * 1000, 2),
        )
        return key

    def _discard(self, ctx: Ctx, version: Version) -> None:
        with contextlib.suppress(OSError, StoreError):
            ctx.store.destroy_version(version)
            ctx.audit.emit("key_destroyed", version=version.name, why="rotation_failed")

    def _activate(self, ctx: Ctx, version: Version) -> Version | None:
        """Flip ``current`` to ``version``. If the flip fails, never leave the unused key behind;
        if it failed *after* the rename (the directory fsync), the new pair is already live:
        put the old one back when there is one (a failure must not change what is served)."""
        store = ctx.store
        try:
            return store.activate(version)
        except StoreError:
            live = store.current_version()
            if live is not None and live.name == version.name and ctx.old is not None:
                with contextlib.suppress(StoreError):
                    store.activate(ctx.old.version)
                live = store.current_version()
            if live is None or live.name != version.name:
                self._discard(ctx, version)
                raise
            # No previous pair and the new one is live and complete: keep it.
            log.warning("activation_not_durable", service=ctx.spec.name, version=version.name)
            return None

    def _replaces(self, ctx: Ctx, issuer: Issuer) -> str | None:
        """The ARI id of the certificate this order replaces, when the same CA advertises ARI."""
        if ctx.old is None or ctx.old.bundle.meta.directory != issuer.directory_url:
            return None
        try:
            if not issuer.ari_supported():
                return None
        except Exception:  # noqa: BLE001 - the order itself will report an unreachable CA
            return None
        leaf = keys.split_pem_chain(ctx.old.bundle.cert_pem)[0]
        return keys.ari_cert_id(leaf)
