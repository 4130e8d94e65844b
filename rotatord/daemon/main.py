"""``rotatord run``: the daemon's lifecycle — start, serve, hot config, graceful stop.

Shutdown waits for every in-flight rotation, whoever started it (a scheduler job or the control
socket), within ``STOP_BUDGET`` (kept under the unit's ``TimeoutStopSec``); what it cannot
finish is resumed at the next start from the rotation journal.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import select
import signal
import sys
from pathlib import Path
from typing import Any

from rotatord.clock import Clock, SystemClock
from rotatord.config import load_config
from rotatord.core.errors import AuditError, ConfigError, RotatordError
from rotatord.core.model import Config, Trigger
from rotatord.daemon.changes import format_plan, keep_fixed, plan_changes
from rotatord.daemon.compose import IssuerCache, build_rotator
from rotatord.daemon.lifecycle import DaemonLock, install_signals, restore_signals
from rotatord.daemon.loop import ServiceLoop
from rotatord.daemon.observing import Observing
from rotatord.daemon.planner import Planner
from rotatord.daemon.verbs import Verbs
from rotatord.observe.audit import AuditLog, open_audit
from rotatord.observe.journal import stderr_prefix
from rotatord.observe.logging import configure_logging, get_logger
from rotatord.observe.tap import TappedAudit
from rotatord.rotation import Rotator, recover_service, recover_state
from rotatord.runtime.confwatch import ConfigWatcher
from rotatord.runtime.control import ControlServer
from rotatord.runtime.scheduler import Scheduler
from rotatord.runtime.systemd import SdNotifier

log = get_logger("rotatord.daemon")

# Seconds a stop waits for in-flight rotations (orders are bounded by their deadline, reloads by
# their timeout); the unit's TimeoutStopSec=180s leaves room for the rest of the shutdown.
STOP_BUDGET = 150.0


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
        self.config: Config
        self.rotator: Rotator
        self.issuers: IssuerCache
        self.audit: AuditLog | TappedAudit
        self.scheduler: Scheduler
        self.planner: Planner
        self.loop: ServiceLoop

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        # `kill -USR1 <pid>` dumps every thread's stack to stderr: what an operator needs when
        # the daemon seems stuck at 3 a.m., at no cost until then.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:
            for p in exc.problems:
                print(f"{stderr_prefix()}  {p}", file=sys.stderr)
            return 2
        configure_logging(self.config.daemon.log_format)
        lock = DaemonLock(self.config.daemon.state_dir)
        try:
            lock.acquire()
        except RotatordError as exc:
            log.error("daemon_refused", error=str(exc))
            print(f"{stderr_prefix()}rotatord: {exc}", file=sys.stderr)
            return 1
        try:
            removed = recover_state(self.config.daemon.state_dir)
            if removed:
                log.info("state_temp_removed", entries=removed)
            return self._serve()
        finally:
            lock.release()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _serve(self) -> int:
        cfg = self.config
        self.observing = Observing(lambda: self.config, self.clock)
        self.audit = self.observing.tap(open_audit(cfg, self.clock))
        self.issuers = IssuerCache(cfg, self.clock)
        self.rotator = build_rotator(cfg, self.clock, audit=self.audit, issuers=self.issuers)
        try:
            # Fail fast and clearly if key events could not be recorded: no rotation may run.
            self.audit.emit(
                "daemon_started",
                pid=os.getpid(),
                services=len(cfg.services),
                config=str(self.config_path),
            )
        except AuditError as exc:
            print(
                f"{stderr_prefix()}rotatord: {exc}; refusing to run without an audit log",
                file=sys.stderr,
            )
            return 1
        self.planner = Planner(self.rotator, self.clock)
        self.scheduler = Scheduler(cfg.daemon.max_concurrent, lambda n, t: self.loop.job(n, t))
        self.loop = ServiceLoop(
            self.rotator,
            self.planner,
            self.clock,
            self.audit,
            self.scheduler.schedule,
            self.scheduler.submit,
        )
        verbs = Verbs(lambda: self.config, self.loop, self.reload_config, plan=self.plan_config)
        control = ControlServer(
            cfg.daemon.control_socket,
            verbs.handle,
            cfg.daemon.control_socket_group,
            admit=verbs.admit,
        )
        watcher = ConfigWatcher(self.config_path, self.request_reload)
        previous = install_signals(
            {
                signal.SIGTERM: self.request_stop,
                signal.SIGINT: self.request_stop,
                signal.SIGHUP: self.request_reload,
            }
        )
        try:
            # READY means ready: every service recovered, planned and scheduled (jobs added
            # before the scheduler starts, in one pass); only then does the control socket
            # answer and READY=1 go out. The start-up batch (due services, resumed rotations,
            # plans refined by the CA's renewal information) runs after.
            self.loop.start(list(cfg.services))
            self.scheduler.start()
            try:
                control.start()
                self.observing.start(lambda: verbs.status(None), self.loop)
            except RotatordError as exc:
                control.stop()
                print(f"{stderr_prefix()}rotatord: {exc}", file=sys.stderr)
                return 1
            self.loop.submit_batch(list(cfg.services), Trigger.STARTUP)
            watcher.start()
            self.notifier.ready(f"{len(cfg.services)} services planned")
            self._main_loop()
        finally:
            self.notifier.stopping()
            self.observing.stop()
            self.loop.stop()
            self.rotator.begin_shutdown()
            watcher.stop()
            control.stop_accepting()
            self._drain()
            control.stop()
            self.scheduler.shutdown(wait=True)
            self.rotator.close()
            restore_signals(previous)
            with contextlib.suppress(RotatordError):
                self.audit.emit("daemon_stopped", pid=os.getpid())
                # Close the epoch: every record up to the stop becomes provable with the key.
                self.audit.maybe_seal(force=True)
        return 0

    def _drain(self) -> None:
        """Wait for in-flight rotations, pinging the watchdog meanwhile."""
        end = self.clock.monotonic() + STOP_BUDGET
        while not self.rotator.drain(1.0):
            self.notifier.watchdog()
            if self.clock.monotonic() >= end:
                log.error("stop_timeout", waited_s=STOP_BUDGET)
                return

    def _main_loop(self) -> None:
        interval = self.notifier.watchdog_interval or 30.0
        while not self._stop:
            ready, _, _ = select.select([self._wake_r], [], [], interval)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            self.notifier.watchdog()
            try:
                self.audit.maybe_seal()  # an idle daemon still closes its epoch on time
            except AuditError as exc:
                log.error("audit_seal_failed", error=str(exc))
            if self._reload_requested and not self._stop:
                self._reload_requested = False
                try:
                    self.reload_config()
                except Exception as exc:  # noqa: BLE001 - a bad reload must never take the daemon down
                    log.error("config_reload_failed", error=str(exc), error_type=type(exc).__name__)

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

    # ------------------------------------------------------------------ configuration

    def plan_config(self, candidate: Path | None = None) -> dict[str, Any]:
        """What ``reload_config`` would do with ``candidate`` (default: the config file as it is
        now) in place of the running config, without doing anything."""
        try:
            new = load_config(candidate or self.config_path)
        except ConfigError as exc:
            return {"ok": False, "problems": [str(p) for p in exc.problems]}
        return {
            "ok": True,
            **plan_changes(self.config, new, self.rotator.installed, self.clock.now()),
        }

    def reload_config(self, uid: int | None = None) -> dict[str, Any]:
        """Validate the file; on problems keep the old config; else reschedule what changed."""
        self.notifier.reloading()
        status = ""
        try:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                problems = [str(p) for p in exc.problems]
                self.audit.emit(
                    "config_rejected", config=str(self.config_path), problems=problems, uid=uid
                )
                log.error("config_rejected", problems=problems)
                # `systemctl status` shows it until a good file is loaded.
                status = f"config rejected ({len(problems)} problems), previous config kept; "
                return {"ok": False, "problems": problems}
            old = self.config
            plan = plan_changes(old, new, self.rotator.installed, self.clock.now())
            # State dir, socket, pool size, audit path, metrics listener: fixed for the
            # process's life; the running values stay until a restart.
            restart_needed = plan["restart_needed"]
            new = keep_fixed(old, new)
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
                self.planner.forget(name)
            for name in added + changed:
                with contextlib.suppress(RotatordError):
                    recover_service(self.rotator, name, self.audit)
            if added or changed:
                self.loop.submit_batch(added + changed, Trigger.CONFIG_CHANGE)
            self.audit.emit(
                "config_loaded",
                config=str(self.config_path),
                added=added,
                removed=removed,
                changed=changed,
                restart_needed=restart_needed,
                plan=format_plan(plan),
                uid=uid,
            )
            return {"ok": True, "added": added, "removed": removed, "changed": changed, **plan}
        finally:
            self.notifier.ready(f"{status}{len(self.config.services)} services planned")
