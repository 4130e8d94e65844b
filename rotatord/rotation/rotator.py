"""The one story, as a batch: lock → check again → gate (budget, minimum interval) → key → issue
→ verify → stage → journal → activate → outputs → reload (shared targets once) → probe →
(rollback) → finish → prune, with an audit record at every key-lifecycle step.

``Rotator.rotate_batch`` never raises for an operational failure, whatever raised it: every
service ends with ``rotation_finished`` and a status entry. It only raises
``UnknownServiceError`` (a caller's mistake) and ``ShuttingDown``.

Rules: talks to the world only through the ports it is given (``Issuer``, ``CertStore``,
``Reloader``, ``Prober``, ``AuditSink``, ``Clock``); decides nothing that ``core.policy`` can.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from rotatord.clock import Clock
from rotatord.core import policy
from rotatord.core.errors import AuditError, RotatordError, StoreError, UnknownServiceError
from rotatord.core.model import Config, ServiceSpec, Trigger
from rotatord.deploy.probe import Prober
from rotatord.deploy.reload import Reloader
from rotatord.fsutil import DEFAULT_OPS, FsOps
from rotatord.issuing import Issuer
from rotatord.observe.audit import AuditSink, BoundAudit, deferred
from rotatord.observe.logging import get_logger
from rotatord.rotation import journal
from rotatord.rotation.book import BudgetLedger, StatusBook
from rotatord.rotation.deploy import Deployer
from rotatord.rotation.failure import (
    prune_versions,
    record_deferred,
    record_failure,
    record_success,
)
from rotatord.rotation.installed import PublicCache, service_store, with_key
from rotatord.rotation.issue import IssueStep
from rotatord.rotation.revoke import revoke as revoke_service
from rotatord.rotation.state import (
    Ctx,
    Installed,
    Outcome,
    Phase,
    RotationResult,
    Stage,
    new_pair,
    old_pair,
)
from rotatord.store import ServiceStore

log = get_logger("rotatord.rotation")


class ShuttingDown(RotatordError):
    """The daemon is stopping: no new rotation starts (in-flight ones finish)."""


class Rotator:
    """Runs rotations for the services of one config snapshot (swap with ``update_config``)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock,
        audit: AuditSink,
        issuer_for: Callable[[str], Issuer],
        reloader: Reloader,
        prober: Prober | None = None,
        ops: FsOps = DEFAULT_OPS,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._on_close = on_close
        self._config = config
        self._clock = clock
        self._audit = audit
        self._issuer_for = issuer_for
        self._ops = ops
        self._lock = threading.Lock()
        self.book = StatusBook()
        self.public = PublicCache()
        self._plain: dict[tuple[Path, str], ServiceStore] = {}
        self.ledger = BudgetLedger(config.daemon.state_dir, ops)
        self.deployer = Deployer(lambda: self.config, reloader, prober, ops)
        self._issue = IssueStep(self)
        self._inflight = 0
        self._closing = False
        self._idle = threading.Condition(self._lock)

    # ------------------------------------------------------------------ configuration & access

    def close(self) -> None:
        """Release what the adapters hold open (listeners, connections)."""
        if self._on_close is not None:
            self._on_close()

    @property
    def audit(self) -> AuditSink:
        return self._audit

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def config(self) -> Config:
        with self._lock:
            return self._config

    def update_config(self, config: Config) -> None:
        with self._lock:
            self._config = config

    def issuer(self, account: str) -> Issuer:
        return self._issuer_for(account)

    def spec(self, name: str) -> ServiceSpec:
        try:
            return self.config.services[name]
        except KeyError:
            raise UnknownServiceError(name) from None

    def store(self, spec: ServiceSpec) -> ServiceStore:
        return service_store(self.config, spec, self._ops)

    def plain_store(self, name: str) -> ServiceStore:
        """The service's store without its key group: enough to record a status."""
        key = (self.config.daemon.state_dir, name)
        store = self._plain.get(key)
        if store is None:
            store = ServiceStore(key[0], name, ops=self._ops)
            if len(self._plain) > 100_000:
                self._plain.clear()
            self._plain[key] = store
        return store

    def installed(self, name: str) -> Installed | None:
        """The service's current version without its key (planning, status), parsed once."""
        return self.public.current(self.plain_store(name))

    def decision(
        self,
        spec: ServiceSpec,
        installed: Installed | None,
        now: datetime,
        ari_time: datetime | None = None,
    ) -> policy.Decision:
        if installed is None:
            return policy.decide(None, now)
        meta = installed.bundle.meta
        issuing = meta.account if meta.account in spec.accounts else spec.account
        directory = self.config.acme[issuing].directory
        drift = policy.config_drift(installed.bundle.meta, spec, directory)
        return policy.decide(
            installed.info,
            now,
            renew_before=spec.renew_before,
            jitter=policy.jitter_for(spec.name, installed.info.serial),
            drift=drift,
            ari_time=ari_time,
        )

    def revoke(
        self, name: str, reason: str, *, uid: int | None = None
    ) -> tuple[str, RotationResult]:
        """Revoke the current certificate and rotate to a fresh key (``rotation.revoke``)."""
        return revoke_service(self, name, reason, uid=uid)

    # ------------------------------------------------------------------ in-flight tracking

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        with self._lock:
            if self._closing:
                raise ShuttingDown("rotatord is stopping; no new rotation starts")
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                self._idle.notify_all()

    @property
    def closing(self) -> bool:
        with self._lock:
            return self._closing

    def begin_shutdown(self) -> None:
        """No new batch starts; services of a running batch not yet started are left due."""
        with self._lock:
            self._closing = True

    def drain(self, timeout: float) -> bool:
        """Wait until no rotation is in flight (whoever started it); False on timeout."""
        end = self._clock.monotonic() + timeout
        with self._lock:
            while self._inflight:
                left = end - self._clock.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.5))
        return True

    # ------------------------------------------------------------------ the story

    def rotate(
        self,
        name: str,
        *,
        trigger: Trigger = Trigger.MANUAL,
        force: bool = False,
        uid: int | None = None,
        ari_time: datetime | None = None,
    ) -> RotationResult:
        return self.rotate_batch(
            [name],
            trigger=trigger,
            force=force,
            uid=uid,
            ari_times={name: ari_time} if ari_time else None,
        )[0]

    def new_ctx(self, spec: ServiceSpec, trigger: str, uid: int | None, rotation_id: str) -> Ctx:
        context: dict[str, Any] = {
            "service": spec.name,
            "rotation_id": rotation_id,
            "trigger": trigger,
        }
        if uid is not None:
            context["uid"] = uid
        return Ctx(
            spec=spec,
            audit=BoundAudit(self._audit, context),
            store=self.plain_store(spec.name),
            started=self._clock.monotonic(),
            rotation_id=rotation_id,
            trigger=trigger,
        )

    def rotate_batch(
        self,
        names: Sequence[str],
        *,
        trigger: Trigger = Trigger.MANUAL,
        force: bool = False,
        uid: int | None = None,
        ari_times: Mapping[str, datetime | None] | None = None,
        max_workers: int | None = None,
        rollback: bool = True,
        fresh_key: bool = False,
    ) -> list[RotationResult]:
        """Rotate several services as one batch: each is issued and activated, then every shared
        reload target runs once (in its declared order), then probes, then rollbacks.

        Service locks are taken in name order, so two batches never deadlock.
        """
        ordered = sorted(dict.fromkeys(names))
        specs = [self.spec(n) for n in ordered]  # UnknownServiceError before any work
        ari = ari_times or {}
        with self._running(), contextlib.ExitStack() as stack:
            ctxs = [self.new_ctx(s, trigger.value, uid, secrets.token_hex(8)) for s in specs]
            for c in ctxs:
                c.fresh_key = fresh_key
                self._guard(c, functools.partial(self._lock_ctx, c, stack))
            live = [c for c in ctxs if c.stage is Stage.PENDING]
            workers = max(1, min(max_workers or self.config.daemon.max_concurrent, len(live)))

            def issue(c: Ctx) -> None:
                with c.audit.deferred():  # one fsync per phase; barriers in IssueStep.run
                    self._guard(c, lambda: self._issue.run(c, force, ari.get(c.spec.name)))

            if workers > 1:
                with ThreadPoolExecutor(workers, thread_name_prefix="issue") as pool:
                    list(pool.map(issue, live))
            else:
                for c in live:
                    issue(c)
            return self._complete(ctxs, rollback=rollback)

    def run_resumed(self, ctxs: Sequence[Ctx], stack: contextlib.ExitStack) -> list[RotationResult]:
        """Finish rotations found unfinished at start-up (``recovery.resume``), under the locks
        the caller holds in ``stack``."""
        with self._running():
            return self._complete(ctxs, rollback=True)

    def _lock_ctx(self, c: Ctx, stack: contextlib.ExitStack) -> None:
        c.store = self.store(c.spec)
        stack.enter_context(c.store.lock())

    def _guard(self, c: Ctx, step: Callable[[], None]) -> None:
        """Any exception in a step is that service's rotation failure, never a crashed job."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - recorded as the rotation's failure below
            if c.stage is Stage.ACTIVATED and c.deploy_error is None:
                c.deploy_error = exc
            else:
                c.stage = Stage.FAILED
                c.error = exc

    def _complete(self, ctxs: Sequence[Ctx], *, rollback: bool) -> list[RotationResult]:
        with deferred(self._audit):  # fsynced at each ``mark_synced`` and ``_finish``
            return self._complete_deferred(ctxs, rollback=rollback)

    def _complete_deferred(self, ctxs: Sequence[Ctx], *, rollback: bool) -> list[RotationResult]:
        activated = [c for c in ctxs if c.stage is Stage.ACTIVATED and c.deploy_error is None]
        try:
            failures = self.deployer.deploy(activated, new_pair, "after_reload")
        except Exception as exc:  # noqa: BLE001 - an unexpected deploy error fails the batch
            failures = {c.spec.name: f"{type(exc).__name__}: {exc}" for c in activated}
        for c in activated:
            if c.spec.name in failures:
                c.deploy_error = RotatordError(failures[c.spec.name])
        failed = [c for c in ctxs if c.stage is Stage.ACTIVATED and c.deploy_error is not None]
        if failed:
            try:
                self._rollback(failed, allowed=rollback)
            except Exception as exc:  # noqa: BLE001 - still finish every service
                for c in failed:
                    c.rollback_error = c.rollback_error or str(exc)
        return [self._finish(c) for c in ctxs]

    # ------------------------------------------------------------------ rollback

    def _rollback(self, ctxs: Sequence[Ctx], *, allowed: bool) -> None:
        """Re-activate the previous pair of each failed service, deploy it, and probe that it
        is served. Never re-activates an expired (or revoked) certificate: the new one stays."""
        now = self._clock.now()
        rolled: list[Ctx] = []
        for c in ctxs:
            with contextlib.suppress(AuditError):
                if not allowed:
                    c.audit.emit(
                        "alarm",
                        problem="deployment failed; previous pair is revoked, new one stays",
                        error=str(c.deploy_error),
                    )
                    continue
                if c.old is None:
                    c.audit.emit(
                        "alarm", problem="deployment failed and there is no previous version"
                    )
                    continue
                if c.old.info.not_after <= now:
                    c.audit.emit(
                        "alarm",
                        problem="deployment failed; previous certificate expired, new one stays",
                        serial=c.old.info.serial_hex,
                    )
                    continue
            assert c.old is not None
            full = with_key(c.store, c.old)  # republishing needs the key planning never read
            if full is None:
                with contextlib.suppress(AuditError):
                    c.audit.emit("alarm", problem="previous pair unreadable, new one stays")
                continue
            c.old = full
            journal.mark_synced(c, Phase.ROLLING_BACK)
            c.rolled_back = True
            try:
                c.store.activate(c.old.version)
            except StoreError as exc:
                c.rollback_error = str(exc)
                continue
            rolled.append(c)
        failures = self.deployer.deploy(rolled, old_pair, "after_rollback")
        for c in [c for c in ctxs if c.rolled_back]:
            assert c.old is not None
            c.rollback_error = c.rollback_error or failures.get(c.spec.name)
            c.rollback_ok = c.rollback_error is None
            with contextlib.suppress(AuditError):
                c.audit.emit(
                    "rolled_back",
                    cause=str(c.deploy_error),
                    to_version=c.old.version.name,
                    to_serial=c.old.info.serial_hex,
                    from_serial=c.new_serial,
                    ok=c.rollback_ok,
                    error=c.rollback_error,
                )
                if not c.rollback_ok:
                    c.audit.emit(
                        "alarm", problem="rollback did not restore service", error=c.rollback_error
                    )
            journal.mark_synced(c, Phase.ROLLED_BACK)

    # ------------------------------------------------------------------ finish

    def _finish(self, c: Ctx) -> RotationResult:
        try:
            result = self._finish_one(c)
        except Exception as exc:
            log.exception("rotation_finish_failed", service=c.spec.name, error=str(exc))
            result = record_failure(
                c, exc, Outcome.FAILED, clock=self._clock, book=self.book, daemon=self._daemon()
            )
        try:
            c.audit.sync()  # the rotation's last records, before its result is reported
        except AuditError as exc:
            log.error("audit_unwritable", service=c.spec.name, error=str(exc))
        return result

    def _daemon(self) -> Any:
        return self.config.daemon

    def _finish_one(self, c: Ctx) -> RotationResult:
        if c.stage is Stage.NOT_DUE:
            return RotationResult(
                c.spec.name,
                c.rotation_id,
                Outcome.NOT_DUE,
                c.reason,
                c.old_serial,
                c.old_serial,
                c.old.version.name if c.old else None,
            )
        if c.stage is Stage.DEFERRED:
            assert c.deferred_until is not None
            detail = str(c.error) if c.error else ""
            return record_deferred(
                c, c.reason, c.deferred_until, clock=self._clock, book=self.book, detail=detail
            )
        if c.stage is Stage.ACTIVATED:
            if not c.rolled_back:
                journal.mark_synced(c, Phase.FINISHED)
            try:
                prune_versions(c, self.config.daemon.keep_versions)
            except AuditError as audit_exc:
                c.error = c.error or audit_exc
        problem = c.error or c.deploy_error
        if c.stage is Stage.FAILED or problem is not None:
            assert problem is not None
            outcome = Outcome.ROLLED_BACK if c.rolled_back else Outcome.FAILED
            return record_failure(
                c, problem, outcome, clock=self._clock, book=self.book, daemon=self._daemon()
            )
        return record_success(c, clock=self._clock, book=self.book)

