"""Composition of the observation outputs: metrics (and their listener), alerts, heartbeat.

The daemon calls ``tap`` on its audit log (so metrics and alerts see every durable record),
``start`` once the control verbs exist (the status they serve is what metrics and alerts read),
and ``stop`` at shutdown. With nothing configured, only the in-process counters exist: no
listener, no thread, no file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rotatord import __version__
from rotatord.clock import Clock
from rotatord.core.model import Config
from rotatord.daemon.loop import ServiceLoop
from rotatord.daemon.revocation import RevocationChecker
from rotatord.issuing.acme_net import EXCHANGE_OBSERVERS
from rotatord.observe.alert_queue import AlertQueue
from rotatord.observe.audit import AuditLog
from rotatord.observe.metrics import Metrics
from rotatord.observe.metrics_http import MetricsServer
from rotatord.observe.runner import ObserverThreads
from rotatord.observe.tap import TappedAudit
from rotatord.observe.watch import Watcher


class Observing:
    def __init__(self, config: Callable[[], Config], clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self.metrics = Metrics(__version__)
        self.threads: ObserverThreads | None = None
        self.server: MetricsServer | None = None
        self.watcher: Watcher | None = None
        self.revocation: RevocationChecker | None = None
        self._observers: list[Callable[[str, Any], None]] = [self.metrics.on_event]

    def tap(self, audit: AuditLog) -> TappedAudit:
        return TappedAudit(audit, self._clock, self._observers, self.metrics.audit_written)

    def start(
        self, status: Callable[[], list[dict[str, Any]]], loop: ServiceLoop | None = None
    ) -> None:
        """Start what the config asks for; raises RotatordError if the listener cannot bind."""
        cfg = self._config()
        spec = cfg.observe
        if loop is not None and spec.revocation.enabled:
            self.revocation = RevocationChecker(self._config, loop)
            self.revocation.start()
        if spec.watches:
            self.watcher = Watcher(lambda: self._config().observe.watches, self._clock)
            watcher = self.watcher

            def with_watched() -> list[dict[str, Any]]:
                return status() + watcher.docs()

            self.metrics.watch_status(with_watched, self._clock.now)
        else:
            self.metrics.watch_status(status, self._clock.now)
        EXCHANGE_OBSERVERS.append(self.metrics.acme_exchange)
        if spec.metrics.listen is not None:
            self.server = MetricsServer(
                spec.metrics.listen, self.metrics.registry, spec.metrics.max_connections
            )
            self.server.start()
        # The check cycle also feeds rotatord_last_check_timestamp_seconds (the stale-daemon rule).
        if spec.alerts.enabled or spec.heartbeat.enabled or self.server or self.watcher:
            queue = AlertQueue(cfg.daemon.state_dir, spec.alerts.queue_max)
            self.threads = ObserverThreads(
                lambda: self._config().observe,
                status,
                self._clock,
                queue,
                self.metrics,
                self.watcher,
            )
            self._observers.append(self.threads.on_event)
            self.threads.start()
            if self.watcher is not None:
                self.watcher.on_result = self.threads.wake_checker
                self.watcher.start()

    def stop(self) -> None:
        if self.revocation is not None:
            self.revocation.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.threads is not None:
            self.threads.stop()
        if self.server is not None:
            self.server.stop()
        if self.metrics.acme_exchange in EXCHANGE_OBSERVERS:
            EXCHANGE_OBSERVERS.remove(self.metrics.acme_exchange)
