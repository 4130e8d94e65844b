"""Composition root: builds every concrete object from a config snapshot.

The one-shot CLI and the long-running daemon both build their ``Rotator`` here, so a rotation
done by ``rotatord rotate`` without a daemon is the same code path as one done by the daemon.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import os
import random
import select
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from rotatord.clock import Clock, SystemClock
from rotatord.config import load_config
from rotatord.core import keys, policy
from rotatord.core.errors import (
    AuditError,
    ConfigError,
    IssuanceError,
    RotatordError,
    UnknownServiceError,
)
from rotatord.core.model import CertInfo, Config, ServiceSpec, Trigger
from rotatord.deploy.probe import TlsProber
from rotatord.deploy.reload import SubprocessReloader
from rotatord.fsutil import ensure_tree
from rotatord.issuing import Issuer
from rotatord.issuing.acme_issuer import AcmeIssuer, account_dir
from rotatord.issuing.challenges.http01 import Http01Responder
from rotatord.observe.audit import AuditLog
from rotatord.observe.logging import configure_logging, get_logger
from rotatord.rotation import Rotator, read_installed, recover_service, service_status
from rotatord.runtime.confwatch import ConfigWatcher
from rotatord.runtime.control import ControlServer, Peer
from rotatord.runtime.scheduler import Scheduler
from rotatord.runtime.systemd import SdNotifier
from rotatord.store import Bundle

log = get_logger("rotatord.daemon")


class IssuerCache:
    """One AcmeIssuer per account name, rebuilt when that account's spec changes."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._responder = Http01Responder()
        self._issuers: dict[str, AcmeIssuer] = {}
        self._lock = threading.Lock()

    def update_config(self, config: Config) -> None:
        with self._lock:
            self._config = config

    def close(self) -> None:
        """Close lingering HTTP-01 listeners and idle CA connections."""
        self._responder.close()
        with self._lock:
            issuers = list(self._issuers.values())
        for issuer in issuers:
            issuer.close()

    def __call__(self, account: str) -> Issuer:
        with self._lock:
            spec = self._config.acme.get(account)
            if spec is None:
                raise UnknownServiceError(account)
            issuer = self._issuers.get(account)
            if issuer is None or issuer.spec != spec:
                issuer = AcmeIssuer(
                    spec,
                    account_dir(self._config.daemon.state_dir, account),
                    self._clock,
                    self._responder,
                )
                self._issuers[account] = issuer
            return issuer


def build_rotator(config: Config, clock: Clock | None = None) -> Rotator:
    clk = clock or SystemClock()
    issuers = IssuerCache(config, clk)
    return Rotator(
        config,
        clock=clk,
        audit=AuditLog(config.daemon.audit_log, clk),
        issuer_for=issuers,
        reloader=SubprocessReloader(),
        prober=TlsProber(clk),
        on_close=issuers.close,
    )


# ============================================================================ the daemon


@dataclass
class _AriState:
    cert_id: str
    window: tuple[datetime, datetime] | None
    chosen: datetime | None
    next_check: datetime | None
    explanation_url: str | None = None


@dataclass(frozen=True)
class Plan:
    at: datetime
    why: str  # missing | expired | config_change:… | ari_window | emergency | lifetime_fraction
    #           | renew_before | retry | ari_recheck | recheck
    ari_time: datetime | None = None


class DaemonLock:
    """``<state>/daemon.lock``: a second daemon on the same state dir refuses to start."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_tree(self.path.parent, 0o755)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise RotatordError(
                f"{self.path}: another rotatord daemon is running on this state directory"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


RECHECK_AT_LEAST = timedelta(hours=12)
HOT_LOOP_GUARD = timedelta(seconds=30)


class Daemon:
    """``rotatord run``: keep every configured service's certificate valid, forever."""

    def __init__(
        self,
        config_path: Path,
        *,
        clock: Clock | None = None,
        notifier: SdNotifier | None = None,
    ) -> None:
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.notifier = notifier or SdNotifier.from_env()
        # Self-pipe: signal handlers and other threads wake the main loop by writing one byte.
        # (Event.set from a signal handler can deadlock on the Event's own lock.)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self._reload_requested = False
        self._ari: dict[str, _AriState] = {}
        self._planned: dict[str, Plan] = {}
        self._ari_warned: dict[str, datetime] = {}
        self._plan_lock = threading.Lock()
        self._rng = random.SystemRandom()
        self._batch_seq = 0
        self.config: Config
        self.rotator: Rotator
        self.issuers: IssuerCache
        self.audit: AuditLog
        self.scheduler: Scheduler

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        # `kill -USR1 <pid>` dumps every thread's stack to stderr: what an operator needs when
        # the daemon seems stuck at 3 a.m., at no cost until then.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:
            for p in exc.problems:
                print(f"  {p}", file=sys.stderr)
            return 2
        configure_logging(self.config.daemon.log_format)
        lock = DaemonLock(self.config.daemon.state_dir)
        try:
            lock.acquire()
        except RotatordError as exc:
            log.error("daemon_refused", error=str(exc))
            print(f"rotatord: {exc}", file=sys.stderr)
            return 1
        try:
            return self._serve()
        finally:
            lock.release()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _serve(self) -> int:
        cfg = self.config
        self.audit = AuditLog(cfg.daemon.audit_log, self.clock)
        self.issuers = IssuerCache(cfg, self.clock)
        self.rotator = Rotator(
            cfg,
            clock=self.clock,
            audit=self.audit,
            issuer_for=self.issuers,
            reloader=SubprocessReloader(),
            prober=TlsProber(self.clock),
            on_close=self.issuers.close,
        )
        try:
            # Fail fast and clearly if key events could not be recorded: no rotation may run.
            self.audit.emit(
                "daemon_started",
                pid=os.getpid(),
                services=len(cfg.services),
                config=str(self.config_path),
            )
        except AuditError as exc:
            print(f"rotatord: {exc}; refusing to run without an audit log", file=sys.stderr)
            return 1
        self.scheduler = Scheduler(cfg.daemon.max_concurrent, self._job)
        control = ControlServer(
            cfg.daemon.control_socket, self._handle_control, cfg.daemon.control_socket_group
        )
        try:
            control.start()
        except RotatordError as exc:
            print(f"rotatord: {exc}", file=sys.stderr)
            return 1
        watcher = ConfigWatcher(self.config_path, self.request_reload)
        previous = self._install_signals()
        try:
            self.scheduler.start()
            self._submit_batch(list(cfg.services), Trigger.STARTUP)
            watcher.start()
            self.notifier.ready(f"{len(cfg.services)} services scheduled")
            self._main_loop()
        finally:
            self.notifier.stopping()
            watcher.stop()
            control.stop()
            # Let in-flight rotations finish: each is bounded by its order deadline and reload
            # timeouts, and the store never shows a half state even if systemd kills us after.
            self.scheduler.shutdown(wait=True)
            self.rotator.close()
            self._restore_signals(previous)
            with contextlib.suppress(RotatordError):
                self.audit.emit("daemon_stopped", pid=os.getpid())
        return 0

    def _main_loop(self) -> None:
        interval = self.notifier.watchdog_interval or 30.0
        while not self._stop:
            ready, _, _ = select.select([self._wake_r], [], [], interval)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            self.notifier.watchdog()
            if self._reload_requested and not self._stop:
                self._reload_requested = False
                try:
                    self.reload_config()
                except Exception as exc:  # a bad reload must never take the daemon down
                    log.exception("config_reload_crashed", error=str(exc))

    def _wake(self) -> None:
        # os.write is async-signal-safe; a full pipe already means "wake up".
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def request_stop(self) -> None:
        self._stop = True
        self._wake()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake()

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for sig, fn in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            previous[sig] = signal.signal(sig, _handler_for(fn))
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # ------------------------------------------------------------------ configuration

    def reload_config(self, uid: int | None = None) -> dict[str, Any]:
        """Validate the file; on problems keep the old config; else reschedule what changed."""
        self.notifier.reloading()
        try:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                problems = [str(p) for p in exc.problems]
                self.audit.emit(
                    "config_rejected", config=str(self.config_path), problems=problems, uid=uid
                )
                log.error("config_rejected", problems=problems)
                return {"ok": False, "problems": problems}
            old = self.config
            restart_needed = []
            if new.daemon != old.daemon:
                # State dir, socket, pool size and audit path are fixed for the process's life.
                restart_needed = [
                    f.name
                    for f in fields(old.daemon)
                    if getattr(old.daemon, f.name) != getattr(new.daemon, f.name)
                ]
                new = replace(new, daemon=old.daemon)
            added = sorted(set(new.services) - set(old.services))
            removed = sorted(set(old.services) - set(new.services))
            changed = sorted(
                n
                for n in set(new.services) & set(old.services)
                if new.services[n] != old.services[n]
                or new.acme[new.services[n].account] != old.acme[old.services[n].account]
            )
            self.config = new
            self.issuers.update_config(new)
            self.rotator.update_config(new)
            for name in removed:
                self.scheduler.remove(name)
                with self._plan_lock:
                    self._planned.pop(name, None)
                    self._ari.pop(name, None)
            for name in added + changed:
                with contextlib.suppress(RotatordError):
                    recover_service(self.rotator, name, self.audit)
            if added or changed:
                self._submit_batch(added + changed, Trigger.CONFIG_CHANGE)
            self.audit.emit(
                "config_loaded",
                config=str(self.config_path),
                added=added,
                removed=removed,
                changed=changed,
                restart_needed=restart_needed,
                uid=uid,
            )
            return {"ok": True, "added": added, "removed": removed, "changed": changed}
        finally:
            self.notifier.ready(f"{len(self.config.services)} services scheduled")

    # ------------------------------------------------------------------ planning

    def _ari_time(
        self, spec: ServiceSpec, installed: tuple[Any, Bundle, CertInfo] | None, now: datetime
    ) -> tuple[datetime | None, datetime | None]:
        """(the time ARI suggests, when to ask again); (None, None) when ARI does not apply."""
        if installed is None:
            return None, None
        _, bundle, info = installed
        if now >= info.not_after:
            return None, None  # RFC 9773: never query an expired certificate
        issuer = self.issuers(spec.account)
        if bundle.meta.directory != issuer.directory_url:
            return None, None  # another CA issued it; config drift renews it anyway
        leaf = keys.split_pem_chain(bundle.cert_pem)[0]
        cert_id = keys.ari_cert_id(leaf)
        if cert_id is None:
            return None, None
        with self._plan_lock:
            st = self._ari.get(spec.name)
        if st is not None and st.cert_id == cert_id and st.next_check and now < st.next_check:
            return st.chosen, st.next_check
        try:
            ri = issuer.renewal_info(cert_id)
        except IssuanceError as exc:
            # Spread the re-checks (up to +10 %) so a fleet that failed together does not
            # come back together, and warn once a minute per account, not once per service.
            next_check = now + policy.ARI_ERROR_RECHECK * (1 + 0.1 * self._rng.random())
            chosen = st.chosen if st is not None and st.cert_id == cert_id else None
            with self._plan_lock:
                self._ari[spec.name] = _AriState(cert_id, None, chosen, next_check)
                last = self._ari_warned.get(spec.account)
                warn = last is None or now - last >= timedelta(minutes=1)
                if warn:
                    self._ari_warned[spec.account] = now
            (log.warning if warn else log.debug)(
                "renewal_info_failed", service=spec.name, account=spec.account, error=str(exc)
            )
            return chosen, next_check
        if ri is None:
            with self._plan_lock:
                self._ari[spec.name] = _AriState(cert_id, None, None, now + RECHECK_AT_LEAST)
            return None, None
        window = (ri.start, ri.end)
        if st is not None and st.cert_id == cert_id and st.window == window and st.chosen:
            chosen = st.chosen
        else:
            chosen = policy.ari_pick(ri.start, ri.end, self._rng.random())
            self.audit.emit(
                "renewal_info",
                service=spec.name,
                cert_id=cert_id,
                window_start=ri.start.isoformat(),
                window_end=ri.end.isoformat(),
                chosen=chosen.isoformat(),
                explanation_url=ri.explanation_url,
            )
        next_check = policy.ari_recheck(now, ri.retry_after)
        with self._plan_lock:
            self._ari[spec.name] = _AriState(
                cert_id, window, chosen, next_check, ri.explanation_url
            )
        return chosen, next_check

    def plan(self, name: str, *, ignore_retry: bool = False) -> Plan:
        spec = self.rotator.spec(name)
        store = self.rotator.store(spec)
        installed = read_installed(store, with_key=False)
        now = self.clock.now()
        ari_time, ari_check = self._ari_time(spec, installed, now)
        decision = self.rotator.decision(spec, installed, now, ari_time)
        status = store.read_status()
        retry_at = _parse_time(status.get("next_attempt")) if status.get("failures") else None
        if decision.due:
            if retry_at is not None and retry_at > now and not ignore_retry:
                return Plan(retry_at, "retry", ari_time)
            return Plan(now, decision.reason, ari_time)
        at, why = decision.at, decision.reason
        if ari_check is not None and ari_check < at:
            at, why = ari_check, "ari_recheck"
        if at > now + RECHECK_AT_LEAST:
            at, why = now + RECHECK_AT_LEAST, "recheck"
        return Plan(at, why, ari_time)

    def _submit_batch(self, names: list[str], trigger: Trigger) -> None:
        with self._plan_lock:
            self._batch_seq += 1
            job_id = f"__batch__{self._batch_seq}"
        self.scheduler.submit(job_id, lambda: self._batch(names, trigger))

    def _batch(self, names: list[str], trigger: Trigger) -> None:
        """Rotate every due service of ``names`` as one batch (shared reload targets reload
        once), then schedule each of them. Used at start-up and after a config change."""
        planned: dict[str, Plan] = {}
        try:
            ignore_retry = trigger is Trigger.CONFIG_CHANGE
            due: list[str] = []
            ari: dict[str, datetime | None] = {}
            for name in names:
                if self._stop or name not in self.rotator.config.services:
                    continue
                try:
                    if trigger is Trigger.STARTUP:
                        # Recovery runs here, per service, rather than before READY: with
                        # 10,000 services it is most of the start-up cost, and a service is
                        # always recovered before it is planned or rotated.
                        recover_service(self.rotator, name, self.audit, thorough=False)
                    plan = self.plan(name, ignore_retry=ignore_retry)
                except Exception as exc:  # one bad service must not stop the batch
                    log.exception("plan_failed", service=name, error=str(exc))
                    continue
                if plan.at <= self.clock.now():
                    due.append(name)
                    ari[name] = plan.ari_time
                else:
                    planned[name] = plan
            if due and not self._stop:
                results = self.rotator.rotate_batch(due, trigger=trigger, ari_times=ari)
                for r in results:
                    log.info("batch_rotation", service=r.service, outcome=r.outcome)
        except Exception as exc:  # a job must never kill the scheduler's worker
            log.exception("batch_crashed", error=str(exc))
        finally:
            for name in names:
                self._schedule_next(name, planned.get(name))

    def _job(self, name: str, trigger: str) -> None:
        """Scheduler entry: rotate if due, then always plan the next run."""
        if self._stop:
            return
        try:
            if name not in self.rotator.config.services:
                return
            plan = self.plan(name, ignore_retry=trigger == Trigger.CONFIG_CHANGE.value)
            if plan.at <= self.clock.now():
                trig = Trigger(trigger)
                if trig is Trigger.SCHEDULE and plan.why in ("ari_window", "emergency"):
                    trig = Trigger.ARI  # the CA's window, not our own clock, chose this moment
                result = self.rotator.rotate(name, trigger=trig, ari_time=plan.ari_time)
                log.info("scheduled_rotation", service=name, outcome=result.outcome, why=plan.why)
        except Exception as exc:  # a job must never kill the scheduler's worker
            log.exception("job_crashed", service=name, error=str(exc))
        finally:
            self._schedule_next(name)

    def _schedule_next(self, name: str, known: Plan | None = None) -> None:
        """Schedule the service's next run; ``known`` is a plan just made for it (not due)."""
        if self._stop or name not in self.rotator.config.services:
            return
        now = self.clock.now()
        try:
            plan = known if known is not None and known.at > now else self.plan(name)
        except Exception as exc:  # keep the service scheduled whatever happened
            log.exception("plan_failed", service=name, error=str(exc))
            plan = Plan(now + HOT_LOOP_GUARD, "plan_error")
        if plan.at <= now:
            # Still due right after a run (e.g. the rotation failed and retrying is immediate):
            # never spin; the retry ladder's first step is the real pace.
            plan = Plan(now + HOT_LOOP_GUARD, plan.why, plan.ari_time)
        with self._plan_lock:
            self._planned[name] = plan
        self.scheduler.schedule(name, plan.at, Trigger.SCHEDULE.value)

    # ------------------------------------------------------------------ control socket

    def _handle_control(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        verb = req.get("verb")
        allowed = peer.uid in self.config.daemon.control_allowed_uids
        with contextlib.suppress(RotatordError):
            self.audit.emit(
                "control_request",
                verb=str(verb),
                service=req.get("service"),
                uid=peer.uid,
                pid=peer.pid,
                allowed=allowed,
            )
        if not allowed:
            return {"ok": False, "error": f"uid {peer.uid} is not allowed", "code": "forbidden"}
        try:
            if verb == "ping":
                return {"ok": True, "pid": os.getpid()}
            if verb == "status":
                return {"ok": True, "services": self._status(req.get("services"))}
            if verb == "reload-config":
                return self.reload_config(uid=peer.uid)
            if verb == "rotate":
                return self._control_rotate(req, peer)
            if verb == "revoke":
                return self._control_revoke(req, peer)
        except RotatordError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown verb {verb!r}"}

    def _control_rotate(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        # One request is one batch: shared reload targets run once for all of its services.
        if req.get("all"):
            requested: list[Any] = list(self.config.services)
        elif isinstance(req.get("services"), list):
            requested = list(req["services"])
        else:
            requested = [req.get("service")]
        names: list[str] = []
        for n in requested:
            if not isinstance(n, str) or n not in self.config.services:
                return {"ok": False, "error": f"unknown service {n!r}", "code": "unknown"}
            names.append(n)
        force = bool(req.get("force"))
        batch = self.rotator.rotate_batch(names, trigger=Trigger.MANUAL, force=force, uid=peer.uid)
        results = []
        for res in batch:
            self._schedule_next(res.service)
            results.append(res.summary())
        return {
            "ok": all(r["outcome"] in ("rotated", "not_due") for r in results),
            "results": results,
        }

    def _control_revoke(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        name = req.get("service")
        if not isinstance(name, str) or name not in self.config.services:
            return {"ok": False, "error": f"unknown service {name!r}", "code": "unknown"}
        revoked, res = self.rotator.revoke(
            name, str(req.get("reason", "unspecified")), uid=peer.uid
        )
        self._schedule_next(name)
        doc = res.summary()
        return {"ok": doc["outcome"] == "rotated", "revoked": revoked, "results": [doc]}

    def _status(self, names: Any) -> list[dict[str, Any]]:
        wanted = names if isinstance(names, list) and names else list(self.config.services)
        now = self.clock.now()
        docs = []
        for n in wanted:
            doc = service_status(self.rotator, str(n), now)
            with self._plan_lock:
                plan = self._planned.get(str(n))
                ari = self._ari.get(str(n))
            if plan is not None:
                doc["next_action"] = {"at": plan.at.isoformat(), "why": plan.why}
            if ari is not None and ari.window is not None:
                doc["ari"] = {
                    "window_start": ari.window[0].isoformat(),
                    "window_end": ari.window[1].isoformat(),
                    "chosen": ari.chosen.isoformat() if ari.chosen else None,
                    "explanation_url": ari.explanation_url,
                }
            docs.append(doc)
        return docs


def _handler_for(fn: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        fn()

    return handler


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
