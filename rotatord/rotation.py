"""The one story: lock → check again → key → CSR → issue → verify → stage → activate → reload →
(rollback) → prune, with an audit record at every key-lifecycle step.

``Rotator.rotate`` never raises for an operational failure: it audits ``rotation_failed``, records
the failure count and the next attempt in the service's status, and returns a result. It only
raises ``UnknownServiceError`` (a caller's mistake).

Rules: talks to the world only through the ports it is given (``Issuer``, ``ServiceStore``,
``Reloader``, ``AuditSink``, ``Clock``); decides nothing itself that ``core.policy`` can decide.
"""

from __future__ import annotations

import contextlib
import grp
import json
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotatord.clock import Clock
from rotatord.core import keys, policy
from rotatord.core.errors import (
    AuditError,
    IssuanceError,
    ReloadError,
    StoreError,
    UnknownServiceError,
    VerificationError,
)
from rotatord.core.model import (
    CertInfo,
    Config,
    IssuedMeta,
    ReloadAction,
    ReloadTarget,
    ServiceSpec,
    Trigger,
)
from rotatord.deploy.outputs import publish as publish_outputs
from rotatord.deploy.probe import Prober
from rotatord.deploy.reload import Reloader, describe
from rotatord.fsutil import DEFAULT_OPS, FsOps, read_file_nofollow
from rotatord.issuing import Issuer
from rotatord.observe.audit import AuditSink, BoundAudit
from rotatord.observe.logging import get_logger, redact_text
from rotatord.store import META_FILE, Bundle, RecoveryReport, ServiceStore, Version

log = get_logger("rotatord.rotation")

# RFC 5280 CRLReason codes an ACME client may send (RFC 8555 §7.6).
REVOCATION_REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
}


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

    def summary(self) -> dict[str, Any]:
        """What the CLI prints and the control socket sends for one rotation."""
        return {
            "service": self.service,
            "outcome": self.outcome,
            "old_serial": self.old_serial,
            "new_serial": self.new_serial,
            "version": self.version,
            "reason": self.reason,
            "error": self.error,
        }


@dataclass
class _Ctx:
    """What one service's rotation learned so far; turned into its canonical line at the end."""

    spec: ServiceSpec
    audit: BoundAudit
    store: ServiceStore
    started: float
    rotation_id: str
    now: datetime | None = None
    state: str = "pending"  # pending | not_due | failed | activated
    reason: str = ""
    old: tuple[Version, Bundle, CertInfo] | None = None
    old_serial: str | None = None
    new_version: Version | None = None
    new_bundle: Bundle | None = None
    new_info: CertInfo | None = None
    new_serial: str | None = None
    new_cert_fp: str | None = None
    error: Exception | None = None
    deploy_error: Exception | None = None
    rolled_back: bool = False
    rollback_ok: bool = False
    rollback_error: str | None = None
    fresh_key: bool = False  # never reuse the old key (revocation for key compromise)


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


def read_installed(
    store: ServiceStore, *, with_key: bool = True
) -> tuple[Version, Bundle, CertInfo] | None:
    """The current version with its parsed leaf, or None if absent or unreadable."""
    try:
        found = store.read_current(with_key=with_key)
        if found is None:
            return None
        version, bundle = found
        leaf = keys.split_pem_chain(bundle.cert_pem)[0]
    except (StoreError, VerificationError, IndexError):
        return None
    return version, bundle, keys.cert_info(leaf)


def reload_env(
    store: ServiceStore, service: ServiceSpec, version: Version | None
) -> dict[str, str]:
    """Paths and facts a reload action may use. Never a secret: the key is passed by path."""
    current = store.current_link
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
        prober: Prober | None = None,
        ops: FsOps = DEFAULT_OPS,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._on_close = on_close
        self._config = config
        self._clock = clock
        self._audit = audit
        self._issuer_for = issuer_for
        self._reloader = reloader
        self._prober = prober
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
    ) -> RotationResult:
        return self.rotate_batch(
            [name],
            trigger=trigger,
            force=force,
            uid=uid,
            ari_times={name: ari_time} if ari_time else None,
        )[0]

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
        results: dict[str, RotationResult] = {}
        with contextlib.ExitStack() as stack:
            ctxs: list[_Ctx] = []
            for spec in specs:
                rotation_id = secrets.token_hex(8)
                context: dict[str, Any] = {
                    "service": spec.name,
                    "rotation_id": rotation_id,
                    "trigger": trigger.value,
                }
                if uid is not None:
                    context["uid"] = uid
                audit = BoundAudit(self._audit, context)
                started = self._clock.monotonic()
                try:
                    store = self.store(spec)
                    stack.enter_context(store.lock())
                except StoreError as exc:
                    results[spec.name] = self._failed_early(
                        spec.name, rotation_id, audit, started, exc
                    )
                    continue
                ctxs.append(
                    _Ctx(
                        spec=spec,
                        audit=audit,
                        store=store,
                        started=started,
                        rotation_id=rotation_id,
                        fresh_key=fresh_key,
                    )
                )
            ari = ari_times or {}
            workers = max(1, min(max_workers or self.config.daemon.max_concurrent, len(ctxs)))
            if workers > 1:
                with ThreadPoolExecutor(workers, thread_name_prefix="issue") as pool:
                    list(
                        pool.map(lambda c: self._phase_issue(c, force, ari.get(c.spec.name)), ctxs)
                    )
            else:
                for c in ctxs:
                    self._phase_issue(c, force, ari.get(c.spec.name))
            activated = [c for c in ctxs if c.state == "activated"]
            self._phase_deploy(activated)
            self._phase_probe([c for c in activated if c.deploy_error is None])
            failed = [c for c in activated if c.deploy_error is not None]
            if failed:
                if rollback:
                    self._phase_rollback(failed)
                else:
                    for c in failed:
                        c.audit.emit(
                            "alarm",
                            problem="deployment failed; previous pair is revoked, new one stays",
                            error=str(c.deploy_error),
                        )
            for c in ctxs:
                results[c.spec.name] = self._finish(c)
        return [results[n] for n in ordered]

    # ------------------------------------------------------------------ revocation

    def revoke(
        self, name: str, reason: str, *, uid: int | None = None
    ) -> tuple[str, RotationResult]:
        """Revoke the current certificate at the CA, then rotate to a new key at once.

        Returns (the revoked serial, the rotation's result); errors before the revocation is
        done are raised. The revoked pair is never rolled back to, and its key is destroyed
        once a new pair is current.
        """
        spec = self.spec(name)
        code = REVOCATION_REASONS.get(reason)
        if code is None:
            raise VerificationError(
                f"unknown revocation reason {reason!r}; use one of {', '.join(REVOCATION_REASONS)}"
            )
        store = self.store(spec)
        audit = BoundAudit(
            self._audit,
            {"service": name, "rotation_id": secrets.token_hex(8), "trigger": "manual"}
            | ({"uid": uid} if uid is not None else {}),
        )
        with store.lock():
            installed = read_installed(store)
            if installed is None:
                raise StoreError(f"service {name!r} has no certificate to revoke")
            version, bundle, info = installed
            self._issuer_for(spec.account).revoke(bundle.cert_pem, code)
            audit.emit(
                "certificate_revoked",
                serial=info.serial_hex,
                version=version.name,
                reason=reason,
                reason_code=code,
            )
        result = self.rotate_batch(
            [name], trigger=Trigger.MANUAL, force=True, uid=uid, rollback=False, fresh_key=True
        )[0]
        if result.outcome == "rotated":
            with store.lock():
                if store.current_version() != version and version.path.exists():
                    store.destroy_version(version)
                    audit.emit("key_destroyed", version=version.name, why="revoked")
        return info.serial_hex, result

    # ------------------------------------------------------------------ phase 1: issue

    def _phase_issue(self, ctx: _Ctx, force: bool, ari_time: datetime | None) -> None:
        spec, audit, store = ctx.spec, ctx.audit, ctx.store
        now = self._clock.now()
        ctx.now = now
        try:
            # Check again under the lock: another process may have rotated while we waited.
            ctx.old = read_installed(store)
            decision = self.decision(spec, ctx.old, now, ari_time)
            ctx.old_serial = ctx.old[2].serial_hex if ctx.old else None
            if not force and not decision.due:
                ctx.state = "not_due"
                ctx.reason = decision.reason
                log.info(
                    "rotation_not_due",
                    service=spec.name,
                    renew_at=decision.at.isoformat(),
                    reason=decision.reason,
                )
                return
            ctx.reason = "forced" if force and not decision.due else decision.reason
            audit.emit("rotation_started", reason=ctx.reason, old_serial=ctx.old_serial)
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
            ctx.new_info = info
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
                bundle,
                extra_meta={"key_fingerprint": fingerprint, "rotation_id": ctx.rotation_id},
            )
            previous = self._activate(ctx, version)
            ctx.new_version = version
            ctx.new_bundle = bundle
            ctx.state = "activated"
            audit.emit(
                "certificate_activated",
                serial=info.serial_hex,
                version=version.name,
                previous_version=previous.name if previous else None,
                key_fingerprint=fingerprint,
            )
            # Right after its audit record: recovery compares this with `current` to find an
            # activation the log never saw (a kill in between), so keep the window tiny.
            status = store.read_status()
            status["current_version"] = version.name
            store.write_status(status)
            if ctx.old is not None:
                audit.emit(
                    "certificate_superseded", serial=ctx.old[2].serial_hex, version=ctx.old[0].name
                )
        except (IssuanceError, StoreError, VerificationError, AuditError, ValueError) as exc:
            ctx.state = "failed"
            ctx.error = exc

    # ------------------------------------------------------------------ phase 2: deploy

    def _targets_of(self, ctxs: Sequence[_Ctx]) -> list[ReloadTarget]:
        targets = self.config.reload_targets
        names = {t for c in ctxs for t in c.spec.reload_targets if t in targets}
        return sorted((targets[n] for n in names), key=lambda t: (t.order, t.name))

    def _phase_deploy(self, ctxs: Sequence[_Ctx]) -> None:
        """Outputs and the service's own reload actions, then each shared target once."""
        for c in ctxs:
            assert c.new_version is not None and c.new_bundle is not None
            try:
                if c.spec.outputs:
                    publish_outputs(c.spec.outputs, c.new_bundle, c.new_version.name, self._ops)
                self._run_actions(c, c.spec.reload, c.new_version, target=None)
            except (ReloadError, StoreError, AuditError) as exc:
                c.deploy_error = exc
        healthy = [c for c in ctxs if c.deploy_error is None]
        for target in self._targets_of(healthy):
            users = [c for c in healthy if target.name in c.spec.reload_targets]
            try:
                self._run_actions(
                    users[0], target.actions, users[0].new_version, target=target.name
                )
            except (ReloadError, AuditError) as exc:
                for c in users:
                    c.deploy_error = c.deploy_error or exc
                    if c is not users[0]:
                        with contextlib.suppress(AuditError):
                            c.audit.emit(
                                "reload_failed",
                                target=target.name,
                                error=str(exc),
                                returncode=getattr(exc, "returncode", None),
                                timed_out=getattr(exc, "timed_out", False),
                            )
            else:
                for c in users[1:]:
                    c.audit.emit("reload_succeeded", target=target.name, shared=True)

    def _run_actions(
        self,
        ctx: _Ctx,
        actions: Sequence[ReloadAction],
        version: Version | None,
        target: str | None,
    ) -> None:
        env = reload_env(ctx.store, ctx.spec, version)
        for action in actions:
            try:
                res = self._reloader.run(action, env)
            except ReloadError as exc:
                ctx.audit.emit(
                    "reload_failed",
                    action=describe(action),
                    target=target,
                    returncode=exc.returncode,
                    timed_out=exc.timed_out,
                    stderr_tail=self._scrub(ctx, exc.stderr_tail[-500:]),
                    error=str(exc),
                )
                raise
            ctx.audit.emit(
                "reload_succeeded", action=res.action, target=target, returncode=res.returncode
            )

    @staticmethod
    def _scrub(ctx: _Ctx, text: str) -> str:
        """A reload's output may echo a key (a script that cats the wrong file): drop every
        line that carries a piece of the old or new private key, and anything PEM-private."""
        secrets_lines: set[str] = set()
        for pem in (
            ctx.new_bundle.key_pem if ctx.new_bundle else b"",
            ctx.old[1].key_pem if ctx.old else b"",
        ):
            for line in pem.decode("ascii", "replace").splitlines():
                if line and not line.startswith("-----"):
                    secrets_lines.add(line.strip())
        kept = []
        for line in redact_text(text).splitlines():
            if any(piece and piece in line for piece in secrets_lines) or any(
                line.strip() and line.strip() in piece
                for piece in secrets_lines
                if len(line.strip()) >= 16
            ):
                kept.append("[redacted: key material]")
            else:
                kept.append(line)
        return "\n".join(kept)

    # ------------------------------------------------------------------ phase 3: probe

    def _probe(self, ctx: _Ctx, expected: str, phase: str) -> str | None:
        """Probe every endpoint of the service; returns the first failure, audited."""
        if self._prober is None:
            return None
        for spec in ctx.spec.probes:
            sni = spec.sni or ctx.spec.domains[0]
            res = self._prober.probe(spec, sni, expected, ctx.spec.probe_deadline_seconds)
            fields = {
                "endpoint": res.endpoint,
                "sni": sni,
                "expected_fingerprint": expected,
                "served_fingerprint": res.served_fingerprint,
                "attempts": res.attempts,
                "elapsed_ms": round(res.elapsed_ms, 1),
                "phase": phase,
            }
            if not res.ok:
                ctx.audit.emit("probe_failed", **fields, error=res.error)
                return f"probe {res.endpoint}: {res.error}"
            ctx.audit.emit("probe_succeeded", **fields)
        return None

    def _phase_probe(self, ctxs: Sequence[_Ctx]) -> None:
        for c in ctxs:
            assert c.new_cert_fp is not None
            failure = self._probe(c, c.new_cert_fp, "after_reload")
            if failure is not None:
                c.deploy_error = VerificationError(failure)

    # ------------------------------------------------------------------ phase 4: rollback

    def _phase_rollback(self, ctxs: Sequence[_Ctx]) -> None:
        """Re-activate the previous pair of each failed service, reload, and probe it is served.

        Never re-activates an expired certificate: then the new one stays and an alarm is raised.
        """
        rolled: list[_Ctx] = []
        for c in ctxs:
            if c.old is None:
                c.audit.emit("alarm", problem="deployment failed and there is no previous version")
                continue
            old_version, old_bundle, old_info = c.old
            if old_info.not_after <= self._clock.now():
                c.audit.emit(
                    "alarm",
                    problem="deployment failed; previous certificate expired, new one stays",
                    serial=old_info.serial_hex,
                )
                continue
            try:
                c.store.activate(old_version)
                if c.spec.outputs:
                    publish_outputs(c.spec.outputs, old_bundle, old_version.name, self._ops)
                self._run_actions(c, c.spec.reload, old_version, target=None)
                c.rollback_ok = True
            except (ReloadError, StoreError, AuditError) as exc:
                c.rollback_ok = False
                c.rollback_error = str(exc)
            c.rolled_back = True
            rolled.append(c)
        for target in self._targets_of(rolled):
            users = [c for c in rolled if target.name in c.spec.reload_targets]
            try:
                self._run_actions(
                    users[0], target.actions, users[0].old[0] if users[0].old else None, target.name
                )
            except (ReloadError, AuditError) as exc:
                for c in users:
                    c.rollback_ok = False
                    c.rollback_error = str(exc)
        for c in rolled:
            assert c.old is not None
            old_fp = keys.cert_fingerprint(keys.split_pem_chain(c.old[1].cert_pem)[0])
            failure = self._probe(c, old_fp, "after_rollback")
            if failure is not None:
                c.rollback_ok = False
                c.rollback_error = failure
            c.audit.emit(
                "rolled_back",
                cause=str(c.deploy_error),
                to_version=c.old[0].name,
                to_serial=c.old[2].serial_hex,
                from_serial=c.new_serial,
                ok=c.rollback_ok,
                error=c.rollback_error,
            )
            if not c.rollback_ok:
                c.audit.emit(
                    "alarm", problem="rollback did not restore service", error=c.rollback_error
                )

    # ------------------------------------------------------------------ finish

    def _finish(self, c: _Ctx) -> RotationResult:
        if c.state == "not_due":
            return RotationResult(
                c.spec.name,
                c.rotation_id,
                "not_due",
                c.reason,
                c.old_serial,
                c.old_serial,
                c.old[0].name if c.old else None,
            )
        if c.state == "activated":
            try:
                self._prune(c)
            except AuditError as audit_exc:
                c.error = audit_exc
        problem = c.error or c.deploy_error
        if c.state == "failed" or problem is not None:
            assert problem is not None
            outcome = "rolled_back" if c.rolled_back else "failed"
            return self._failed(c, problem, outcome)
        assert c.new_version is not None and c.new_info is not None
        now = c.now or self._clock.now()
        result = RotationResult(
            c.spec.name,
            c.rotation_id,
            "rotated",
            c.reason,
            c.old_serial,
            c.new_serial,
            c.new_version.name,
            duration_ms=(self._clock.monotonic() - c.started) * 1000,
        )
        try:
            c.store.write_status(
                {
                    "last_result": "rotated",
                    "current_version": c.new_version.name,
                    "last_attempt": now.isoformat(),
                    "last_success": now.isoformat(),
                    "last_error": None,
                    "failures": 0,
                    "next_attempt": None,
                    "last_rotation_id": c.rotation_id,
                }
            )
            c.audit.emit(
                "rotation_finished",
                outcome="rotated",
                reason=c.reason,
                old_serial=c.old_serial,
                new_serial=c.new_serial,
                version=c.new_version.name,
                not_after=c.new_info.not_after.isoformat(),
                duration_ms=round(result.duration_ms, 1),
            )
        except (StoreError, AuditError) as exc:
            log.error("rotation_finish_unrecorded", service=c.spec.name, error=str(exc))
        return result

    def _activate(self, ctx: _Ctx, version: Version) -> Version | None:
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
                    store.activate(ctx.old[0])
                live = store.current_version()
            if live is None or live.name != version.name:
                with contextlib.suppress(OSError):
                    store.destroy_version(version)
                    ctx.audit.emit("key_destroyed", version=version.name, why="rotation_failed")
                raise
            # No previous pair and the new one is live and complete: keep it.
            log.warning("activation_not_durable", service=ctx.spec.name, version=version.name)
            return None

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
        if spec.reuse_key and ctx.old is not None and not ctx.fresh_key:
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

    def _prune(self, ctx: _Ctx) -> None:
        keep = ctx.spec.keep_versions or self.config.daemon.keep_versions
        try:
            removed = ctx.store.prune(keep)
        except OSError as exc:
            log.warning("prune_failed", service=ctx.spec.name, error=str(exc))
            return
        for v in removed:
            ctx.audit.emit("key_destroyed", version=v.name, why="pruned")

    def _failed_early(
        self, name: str, rotation_id: str, audit: BoundAudit, started: float, exc: Exception
    ) -> RotationResult:
        spec = self.spec(name)
        ctx = _Ctx(
            spec=spec, audit=audit, store=self.store(spec), started=started, rotation_id=rotation_id
        )
        return self._failed(ctx, exc, "failed", store_ok=False)

    def _failed(
        self, ctx: _Ctx, exc: Exception, outcome: str, *, store_ok: bool = True
    ) -> RotationResult:
        now = self._clock.now()
        store = ctx.store if store_ok else None
        retryable = getattr(exc, "retryable", True)
        retry_after = getattr(exc, "retry_after", None)
        fields = {
            "error": str(exc),
            "error_type": type(exc).__name__,
            "retryable": retryable,
            "problem_type": getattr(exc, "problem_type", None),
        }
        not_after = ctx.old[2].not_after if ctx.old else None
        previous_status = store.read_status() if store is not None else {}
        try:
            failures = int(previous_status.get("failures", 0)) + 1
        except (TypeError, ValueError):
            failures = 1
        next_at = policy.next_attempt(
            failures, now, not_after, retry_after, self.config.daemon.retry_ladder
        )
        duration = (self._clock.monotonic() - ctx.started) * 1000
        try:
            ctx.audit.emit(
                "rotation_failed",
                **fields,
                failures=failures,
                attempt_at=now.isoformat(),
                next_attempt=next_at.isoformat(),
            )
            ctx.audit.emit(
                "rotation_finished",
                outcome=outcome,
                reason=ctx.reason,
                old_serial=ctx.old_serial,
                new_serial=ctx.new_serial,
                next_attempt=next_at.isoformat(),
                duration_ms=round(duration, 1),
                **fields,
            )
        except AuditError as audit_exc:
            log.error("audit_unwritable", service=ctx.spec.name, error=str(audit_exc))
        if store is not None:
            try:
                current = store.current_version()
                store.write_status(
                    {
                        "last_result": outcome,
                        "current_version": current.name if current else None,
                        "last_attempt": now.isoformat(),
                        "last_error": str(exc),
                        "last_error_retryable": retryable,
                        "failures": failures,
                        "next_attempt": next_at.isoformat(),
                        "last_rotation_id": ctx.rotation_id,
                        "last_success": previous_status.get("last_success"),
                    }
                )
            except StoreError as st_exc:
                log.error("status_unwritable", service=ctx.spec.name, error=str(st_exc))
        return RotationResult(
            ctx.spec.name,
            ctx.rotation_id,
            outcome,
            ctx.reason,
            ctx.old_serial,
            ctx.new_serial,
            ctx.new_version.name if ctx.new_version else None,
            error=str(exc),
            retryable=retryable,
            next_attempt=next_at,
            duration_ms=duration,
        )


def service_status(rotator: Rotator, name: str, now: datetime) -> dict[str, Any]:
    """What ``rotatord status`` shows for one service (read-only, no lock needed)."""
    spec = rotator.spec(name)
    store = rotator.store(spec)
    installed = read_installed(store, with_key=False)
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
            seconds_left=int((info.not_after - now).total_seconds()),
            version=version.name,
        )
    else:
        doc.update(serial=None, version=None, not_after=None, days_left=None, seconds_left=None)
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


def _audit_unrecorded_activation(store: ServiceStore, name: str, audit: AuditSink) -> None:
    """A kill between the ``current`` flip and its audit record leaves a pair in service that
    the log never said was activated. status.json names the version the last finished rotation
    left current; if ``current`` is another one, record its activation now (a rare duplicate
    is harmless, a missing key event is not)."""
    current = store.current_version()
    if current is None:
        return
    status = store.read_status()
    if status.get("current_version") == current.name:
        return
    try:
        meta = json.loads(read_file_nofollow(current.path / META_FILE))
    except (OSError, ValueError, StoreError):
        meta = {}
    audit.emit(
        "certificate_activated",
        service=name,
        rotation_id=meta.get("rotation_id"),
        trigger="startup",
        serial=meta.get("serial"),
        version=current.name,
        key_fingerprint=meta.get("key_fingerprint"),
        recovered=True,
    )
    status["current_version"] = current.name
    store.write_status(status)


def recover_service(
    rotator: Rotator, name: str, audit: AuditSink, *, thorough: bool = True
) -> RecoveryReport | None:
    """Recovery of one service under its lock; audited when it changed anything. None when the
    service has nothing on disk yet."""
    spec = rotator.spec(name)
    store = rotator.store(spec)
    if not store.dir.exists():
        return None
    with store.lock():
        report = store.recover(thorough=thorough)
        _audit_unrecorded_activation(store, name, audit)
    if report.removed_temp or report.removed_incomplete or report.repointed_current:
        audit.emit(
            "store_recovered",
            service=name,
            removed_temp=list(report.removed_temp),
            removed_incomplete=list(report.removed_incomplete),
            repointed_current=report.repointed_current,
            current=report.current,
        )
    return report
