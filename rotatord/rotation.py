"""The one story: lock → check again → key → CSR → issue → verify → stage → activate → reload →
(rollback) → prune, with an audit record at every key-lifecycle step.

``Rotator.rotate`` never raises for an operational failure: it audits ``rotation_failed``, records
the failure count and the next attempt in the service's status, and returns a result. It only
raises ``UnknownServiceError`` (a caller's mistake).

Rules: talks to the world only through the ports it is given (``Issuer``, ``ServiceStore``,
``Reloader``, ``AuditSink``, ``Clock``); decides nothing itself that ``core.policy`` can decide.
"""

from __future__ import annotations

import grp
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rotatord.clock import Clock
from rotatord.core import keys, policy
from rotatord.core.errors import (
    AuditError,
    IssuanceError,
    ReloadError,
    RotatordError,
    StoreError,
    UnknownServiceError,
    VerificationError,
)
from rotatord.core.model import CertInfo, Config, IssuedMeta, ServiceSpec, Trigger
from rotatord.deploy.reload import Reloader, describe
from rotatord.fsutil import DEFAULT_OPS, FsOps
from rotatord.issuing import Issuer
from rotatord.observe.audit import AuditSink, BoundAudit
from rotatord.observe.logging import get_logger
from rotatord.store import Bundle, ServiceStore, Version

log = get_logger("rotatord.rotation")


@dataclass(frozen=True)
class RotationResult:
    service: str
    rotation_id: str
    outcome: str  # rotated | not_due | failed | rolled_back
    reason: str = ""
    old_serial: str | None = None
    new_serial: str | None = None
    version: str | None = None
    error: str | None = None
    retryable: bool | None = None
    next_attempt: datetime | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in ("rotated", "not_due")


@dataclass
class _Ctx:
    """What one rotation learned so far; turned into the canonical line at the end."""

    spec: ServiceSpec
    audit: BoundAudit
    store: ServiceStore
    started: float
    old: tuple[Version, Bundle, CertInfo] | None = None
    new_version: Version | None = None
    new_serial: str | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


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


def read_installed(store: ServiceStore) -> tuple[Version, Bundle, CertInfo] | None:
    """The current version with its parsed leaf, or None if absent or unreadable."""
    try:
        found = store.read_current()
        if found is None:
            return None
        version, bundle = found
        leaf = keys.split_pem_chain(bundle.cert_pem)[0]
    except (StoreError, VerificationError, IndexError):
        return None
    return version, bundle, keys.cert_info(leaf)


def reload_env(spec: ServiceStore, service: ServiceSpec, version: Version | None) -> dict[str, str]:
    """Paths and facts a reload action may use. Never a secret: the key is passed by path."""
    current = spec.current_link
    env = {
        "ROTATORD_SERVICE": service.name,
        "ROTATORD_DOMAINS": ",".join(service.domains),
        "ROTATORD_CERT_DIR": str(current),
        "ROTATORD_KEY": str(current / "privkey.pem"),
        "ROTATORD_CERT": str(current / "cert.pem"),
        "ROTATORD_CHAIN": str(current / "chain.pem"),
        "ROTATORD_FULLCHAIN": str(current / "fullchain.pem"),
    }
    if version is not None:
        env["ROTATORD_VERSION"] = version.name
        env["ROTATORD_VERSION_DIR"] = str(version.path)
    return env


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
        ops: FsOps = DEFAULT_OPS,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._on_close = on_close
        self._config = config
        self._clock = clock
        self._audit = audit
        self._issuer_for = issuer_for
        self._reloader = reloader
        self._ops = ops
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release what the adapters hold open (listeners, connections)."""
        if self._on_close is not None:
            self._on_close()

    @property
    def audit(self) -> AuditSink:
        return self._audit

    @property
    def config(self) -> Config:
        with self._lock:
            return self._config

    def update_config(self, config: Config) -> None:
        with self._lock:
            self._config = config

    def spec(self, name: str) -> ServiceSpec:
        try:
            return self.config.services[name]
        except KeyError:
            raise UnknownServiceError(name) from None

    def store(self, spec: ServiceSpec) -> ServiceStore:
        return service_store(self.config, spec, self._ops)

    def decision(
        self,
        spec: ServiceSpec,
        installed: tuple[Version, Bundle, CertInfo] | None,
        now: datetime,
        ari_time: datetime | None = None,
    ) -> policy.Decision:
        config = self.config
        if installed is None:
            return policy.decide(None, now)
        _, bundle, info = installed
        directory = config.acme[spec.account].directory
        drift = policy.config_drift(bundle.meta, spec, directory)
        return policy.decide(
            info,
            now,
            renew_before=spec.renew_before,
            jitter=policy.jitter_for(spec.name, info.serial),
            drift=drift,
            ari_time=ari_time,
        )

    # ------------------------------------------------------------------ the story

    def rotate(
        self,
        name: str,
        *,
        trigger: Trigger = Trigger.MANUAL,
        force: bool = False,
        uid: int | None = None,
        ari_time: datetime | None = None,
        extra_context: Mapping[str, Any] | None = None,
    ) -> RotationResult:
        spec = self.spec(name)
        rotation_id = secrets.token_hex(8)
        context: dict[str, Any] = {
            "service": name,
            "rotation_id": rotation_id,
            "trigger": trigger.value,
        }
        if uid is not None:
            context["uid"] = uid
        if extra_context:
            context.update(extra_context)
        audit = BoundAudit(self._audit, context)
        started = self._clock.monotonic()
        try:
            store = self.store(spec)
            with store.lock():
                ctx = _Ctx(spec=spec, audit=audit, store=store, started=started)
                return self._rotate_locked(ctx, rotation_id, force, ari_time)
        except (StoreError, AuditError) as exc:
            # Failed before or outside the pipeline's own handling (layout, lock, audit file).
            return self._failed(name, rotation_id, audit, started, exc, None, None)

    def _rotate_locked(
        self, ctx: _Ctx, rotation_id: str, force: bool, ari_time: datetime | None
    ) -> RotationResult:
        spec, audit, store = ctx.spec, ctx.audit, ctx.store
        now = self._clock.now()
        # Check again under the lock: another process may have rotated while we waited.
        ctx.old = read_installed(store)
        decision = self.decision(spec, ctx.old, now, ari_time)
        old_serial = ctx.old[2].serial_hex if ctx.old else None
        if not force and not decision.due:
            log.info(
                "rotation_not_due",
                service=spec.name,
                renew_at=decision.at.isoformat(),
                reason=decision.reason,
            )
            return RotationResult(
                spec.name,
                rotation_id,
                "not_due",
                decision.reason,
                old_serial,
                old_serial,
                ctx.old[0].name if ctx.old else None,
            )
        ctx.reason = "forced" if force and not decision.due else decision.reason
        try:
            audit.emit("rotation_started", reason=ctx.reason, old_serial=old_serial)
            key = self._key(ctx)
            csr = keys.make_csr(key, spec.domains)
            fingerprint = keys.public_key_fingerprint(key)
            audit.emit("csr_created", key_fingerprint=fingerprint, names=list(spec.domains))
            issuer = self._issuer_for(spec.account)
            replaces = self._replaces(ctx, issuer)
            issued = issuer.issue(csr, spec.domains, spec.challenge, replaces=replaces)
            chain = keys.split_pem_chain(issued.cert_pem + issued.chain_pem)
            info = keys.cert_info(chain[0])
            ctx.new_serial = info.serial_hex
            audit.emit(
                "certificate_issued",
                serial=info.serial_hex,
                not_before=info.not_before.isoformat(),
                not_after=info.not_after.isoformat(),
                names=list(info.names),
                key_fingerprint=fingerprint,
                cert_fingerprint=keys.cert_fingerprint(chain[0]),
                order_url=issued.order_url,
                replaces=issued.replaces,
            )
            keys.verify_bundle(key, chain, spec.domains, self._clock.now())
            meta = IssuedMeta(
                names=spec.domains,
                key_type=spec.key_type,
                account=spec.account,
                directory=issuer.directory_url,
                serial=info.serial,
                not_before=info.not_before,
                not_after=info.not_after,
                issued_at=now,
            )
            bundle = Bundle(
                key_pem=keys.private_key_pem(key),
                cert_pem=issued.cert_pem,
                chain_pem=issued.chain_pem,
                meta=meta,
            )
            version = store.stage(
                bundle, extra_meta={"key_fingerprint": fingerprint, "rotation_id": rotation_id}
            )
            previous = store.activate(version)
            ctx.new_version = version
            audit.emit(
                "certificate_activated",
                serial=info.serial_hex,
                version=version.name,
                previous_version=previous.name if previous else None,
                key_fingerprint=fingerprint,
            )
            if ctx.old is not None:
                audit.emit(
                    "certificate_superseded", serial=ctx.old[2].serial_hex, version=ctx.old[0].name
                )
            outcome = "rotated"
            error: RotatordError | None = None
            try:
                self._reload(ctx, version)
            except ReloadError as exc:
                error = exc
                outcome = self._rollback(ctx, exc)
            self._prune(ctx)
        except (IssuanceError, StoreError, VerificationError, AuditError) as exc:
            return self._failed(
                spec.name, rotation_id, audit, ctx.started, exc, old_serial, ctx, store
            )
        if error is not None:
            return self._failed(
                spec.name,
                rotation_id,
                audit,
                ctx.started,
                error,
                old_serial,
                ctx,
                store,
                outcome=outcome,
            )
        result = RotationResult(
            spec.name,
            rotation_id,
            outcome,
            ctx.reason,
            old_serial,
            ctx.new_serial,
            version.name,
            duration_ms=(self._clock.monotonic() - ctx.started) * 1000,
        )
        store.write_status(
            {
                "last_result": outcome,
                "last_attempt": now.isoformat(),
                "last_success": now.isoformat(),
                "last_error": None,
                "failures": 0,
                "next_attempt": None,
                "last_rotation_id": rotation_id,
            }
        )
        audit.emit(
            "rotation_finished",
            outcome=outcome,
            reason=ctx.reason,
            old_serial=old_serial,
            new_serial=ctx.new_serial,
            version=version.name,
            not_after=info.not_after.isoformat(),
            duration_ms=round(result.duration_ms, 1),
        )
        return result

    def _replaces(self, ctx: _Ctx, issuer: Issuer) -> str | None:
        """The ARI id of the certificate this order replaces, when the same CA advertises ARI."""
        if ctx.old is None or ctx.old[1].meta.directory != issuer.directory_url:
            return None
        try:
            if not issuer.ari_supported():
                return None
        except IssuanceError:
            return None  # the order itself will report the CA being unreachable
        leaf = keys.split_pem_chain(ctx.old[1].cert_pem)[0]
        return keys.ari_cert_id(leaf)

    def _key(self, ctx: _Ctx) -> keys.PrivateKey:
        spec = ctx.spec
        if spec.reuse_key and ctx.old is not None:
            key = keys.load_private_key(ctx.old[1].key_pem)
            if keys.key_type_of(key) == spec.key_type:
                return key
        t0 = self._clock.monotonic()
        key = keys.generate_key(spec.key_type)
        ctx.audit.emit(
            "key_generated",
            key_type=spec.key_type.value,
            key_fingerprint=keys.public_key_fingerprint(key),
            ms=round((self._clock.monotonic() - t0) * 1000, 2),
        )
        return key

    def _reload(self, ctx: _Ctx, version: Version | None) -> None:
        env = reload_env(ctx.store, ctx.spec, version)
        for action in ctx.spec.reload:
            try:
                res = self._reloader.run(action, env)
            except ReloadError as exc:
                ctx.audit.emit(
                    "reload_failed",
                    action=describe(action),
                    returncode=exc.returncode,
                    timed_out=exc.timed_out,
                    stderr_tail=exc.stderr_tail[-500:],
                    error=str(exc),
                )
                raise
            ctx.audit.emit("reload_succeeded", action=res.action, returncode=res.returncode)

    def _rollback(self, ctx: _Ctx, cause: ReloadError) -> str:
        """Re-activate the previous pair after a failed reload. Returns the outcome."""
        if ctx.old is None:
            ctx.audit.emit("alarm", problem="reload failed and there is no previous version")
            return "failed"
        old_version, _, old_info = ctx.old
        if old_info.not_after <= self._clock.now():
            ctx.audit.emit(
                "alarm",
                problem="reload failed; previous certificate expired, so the new one stays",
                serial=old_info.serial_hex,
            )
            return "failed"
        ctx.store.activate(old_version)
        try:
            self._reload(ctx, old_version)
            reload_ok = True
        except ReloadError:
            reload_ok = False
        ctx.audit.emit(
            "rolled_back",
            cause=str(cause),
            to_version=old_version.name,
            to_serial=old_info.serial_hex,
            from_serial=ctx.new_serial,
            reload_ok=reload_ok,
        )
        return "rolled_back"

    def _prune(self, ctx: _Ctx) -> None:
        keep = ctx.spec.keep_versions or self.config.daemon.keep_versions
        try:
            removed = ctx.store.prune(keep)
        except OSError as exc:
            log.warning("prune_failed", service=ctx.spec.name, error=str(exc))
            return
        for v in removed:
            ctx.audit.emit("key_destroyed", version=v.name, why="pruned")

    def _failed(
        self,
        name: str,
        rotation_id: str,
        audit: BoundAudit,
        started: float,
        exc: Exception,
        old_serial: str | None,
        ctx: _Ctx | None,
        store: ServiceStore | None = None,
        *,
        outcome: str = "failed",
    ) -> RotationResult:
        now = self._clock.now()
        retryable = getattr(exc, "retryable", True)
        retry_after = getattr(exc, "retry_after", None)
        fields = {
            "error": str(exc),
            "error_type": type(exc).__name__,
            "retryable": retryable,
            "problem_type": getattr(exc, "problem_type", None),
        }
        failures = 1
        not_after = ctx.old[2].not_after if ctx and ctx.old else None
        if store is not None:
            try:
                failures = int(store.read_status().get("failures", 0)) + 1
            except (TypeError, ValueError):
                failures = 1
        next_at = policy.next_attempt(
            failures, now, not_after, retry_after, self.config.daemon.retry_ladder
        )
        duration = (self._clock.monotonic() - started) * 1000
        try:
            audit.emit(
                "rotation_failed",
                **fields,
                failures=failures,
                attempt_at=now.isoformat(),
                next_attempt=next_at.isoformat(),
            )
            audit.emit(
                "rotation_finished",
                outcome=outcome,
                reason=ctx.reason if ctx else "",
                old_serial=old_serial,
                new_serial=ctx.new_serial if ctx else None,
                next_attempt=next_at.isoformat(),
                duration_ms=round(duration, 1),
                **fields,
            )
        except AuditError as audit_exc:
            log.error("audit_unwritable", service=name, error=str(audit_exc))
        if store is not None:
            try:
                store.write_status(
                    {
                        "last_result": outcome,
                        "last_attempt": now.isoformat(),
                        "last_error": str(exc),
                        "last_error_retryable": retryable,
                        "failures": failures,
                        "next_attempt": next_at.isoformat(),
                        "last_rotation_id": rotation_id,
                        "last_success": store.read_status().get("last_success"),
                    }
                )
            except StoreError as st_exc:
                log.error("status_unwritable", service=name, error=str(st_exc))
        return RotationResult(
            name,
            rotation_id,
            outcome,
            ctx.reason if ctx else "",
            old_serial,
            ctx.new_serial if ctx else None,
            ctx.new_version.name if ctx and ctx.new_version else None,
            error=str(exc),
            retryable=retryable,
            next_attempt=next_at,
            duration_ms=duration,
        )


def _status_of(rotator: Rotator, name: str, now: datetime) -> dict[str, Any]:
    spec = rotator.spec(name)
    store = rotator.store(spec)
    installed = read_installed(store)
    decision = rotator.decision(spec, installed, now)
    doc: dict[str, Any] = {"service": name, "domains": list(spec.domains), "account": spec.account}
    if installed is not None:
        version, bundle, info = installed
        doc.update(
            serial=info.serial_hex,
            names=list(info.names),
            key_type=bundle.meta.key_type.value,
            not_before=info.not_before.isoformat(),
            not_after=info.not_after.isoformat(),
            days_left=round((info.not_after - now).total_seconds() / 86400, 3),
            version=version.name,
        )
    else:
        doc.update(serial=None, version=None, not_after=None, days_left=None)
    status = store.read_status()
    doc["renewal_due_at"] = decision.at.isoformat()
    doc["due_now"] = decision.due
    doc["reason"] = decision.reason
    next_attempt = status.get("next_attempt")
    if status.get("failures") and next_attempt:
        doc["next_action"] = {"at": next_attempt, "why": "retry"}
    else:
        doc["next_action"] = {"at": decision.at.isoformat(), "why": decision.reason}
    doc["last_result"] = status.get("last_result")
    doc["last_error"] = status.get("last_error")
    doc["failures"] = status.get("failures", 0)
    doc["last_attempt"] = status.get("last_attempt")
    return doc


def service_status(rotator: Rotator, name: str, now: datetime) -> dict[str, Any]:
    """What ``rotatord status`` shows for one service (read-only, no lock needed)."""
    return _status_of(rotator, name, now)


def recover_service(
    rotator: Rotator, name: str, audit: AuditSink, *, thorough: bool = True
) -> None:
    """Startup recovery for one service under its lock; audited when it changed anything."""
    spec = rotator.spec(name)
    store = rotator.store(spec)
    if not store.dir.exists():
        return
    with store.lock():
        report = store.recover(thorough=thorough)
    if report.removed_temp or report.removed_incomplete or report.repointed_current:
        audit.emit(
            "store_recovered",
            service=name,
            removed_temp=list(report.removed_temp),
            removed_incomplete=list(report.removed_incomplete),
            repointed_current=report.repointed_current,
            current=report.current,
        )
