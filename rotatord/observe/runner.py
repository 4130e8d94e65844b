"""The observer's two threads: the checker and the sender.

The *checker* runs a check cycle every ``evaluate_interval`` (sooner when a rotation finished):
read every service's status, raise or resolve alerts, record the cycle in the metrics, and —
only when all of that worked — send the heartbeat when it is due. The *sender* delivers the
queue: per sink the oldest alert first, at most ``max_per_minute`` per sink, a failed attempt
retried after ``retry_initial`` doubling up to ``retry_max``, for as long as the queue holds it
(across restarts: the queue is on disk).

Rules: waits are ``Event.wait`` with a timeout from the injected clock (a wake-up call cuts
them short); neither thread ever raises out of its loop; stop joins both.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from rotatord.clock import Clock
from rotatord.core.observing import ObserveSpec
from rotatord.observe.alert_queue import AlertQueue, Delivery
from rotatord.observe.alert_sinks import AlertDeliveryError, run_command, send_webhook
from rotatord.observe.alerts import AlertEngine
from rotatord.observe.heartbeat import beat
from rotatord.observe.logging import get_logger
from rotatord.observe.metrics import Metrics
from rotatord.observe.watch import Watcher

log = get_logger("rotatord.observer")

Status = Callable[[], list[dict[str, Any]]]
MAX_WAIT = 60.0


class ObserverThreads:
    def __init__(
        self,
        spec: Callable[[], ObserveSpec],
        status: Status,
        clock: Clock,
        queue: AlertQueue,
        metrics: Metrics,
        watcher: Watcher | None = None,
    ) -> None:
        self._spec = spec
        self._status = status
        self._clock = clock
        self.queue = queue
        self.metrics = metrics
        self.watcher = watcher
        self.engine = AlertEngine(lambda: spec().alerts, queue, self.wake_sender)
        self._check_wake = threading.Event()
        self._send_wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent: dict[str, collections.deque[datetime]] = {}
        self._last_beat: datetime | None = None
        self.cycles = 0

    def start(self) -> None:
        for name, target in (
            ("observe-check", self._check_loop),
            ("observe-send", self._send_loop),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._check_wake.set()
        self._send_wake.set()
        for t in self._threads:
            t.join(timeout=30)

    def wake_checker(self) -> None:
        self._check_wake.set()

    def wake_sender(self) -> None:
        self._send_wake.set()

    def on_event(self, event: str, fields: Any) -> None:
        """From the audit tap: alerts for rollbacks/alarms; a finished rotation re-checks now."""
        self.engine.on_event(event, fields, self._clock.now())
        if event == "rotation_finished":
            self.wake_checker()

    # ------------------------------------------------------------------ checker

    def check_once(self) -> bool:
        """One check cycle; True when it completed (and the heartbeat, if due, was sent)."""
        now = self._clock.now()
        try:
            docs = self._status()
            self.engine.evaluate(docs, now)
            if self.watcher is not None:
                warn = {w.name: w.warn_before_seconds for w in self._spec().watches}
                self.engine.evaluate_watch(self.watcher.snapshot(), warn, now)
        except Exception as exc:  # noqa: BLE001 - a failed cycle sends no heartbeat; logged
            log.error("check_cycle_failed", error=str(exc), error_type=type(exc).__name__)
            return False
        self.cycles += 1
        self.metrics.last_check.set(now.timestamp())
        self.metrics.alerts_pending.set(len(self.queue))
        hb = self._spec().heartbeat
        interval = timedelta(seconds=hb.interval_seconds)
        if hb.enabled and (self._last_beat is None or now - self._last_beat >= interval):
            self._last_beat = now
            if beat(hb, now):
                self.metrics.heartbeat_last.set(now.timestamp())
        return True

    def _check_loop(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            spec = self._spec()
            wait = spec.alerts.evaluate_seconds
            if spec.heartbeat.enabled:
                wait = min(wait, spec.heartbeat.interval_seconds)
            self._check_wake.wait(min(wait, MAX_WAIT))
            self._check_wake.clear()

    # ------------------------------------------------------------------ sender

    def _sinks(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        alerts = self._spec().alerts
        out: dict[str, Callable[[dict[str, Any]], None]] = {}
        for w in alerts.webhooks:
            out[f"webhook:{w.name}"] = lambda a, w=w: send_webhook(w, a, self._clock.now())  # type: ignore[misc]
        for c in alerts.commands:
            out[f"command:{c.name}"] = lambda a, c=c: run_command(c, a)  # type: ignore[misc]
        return out

    def _rate_ok(self, sink: str, now: datetime, limit: int) -> datetime | None:
        """None if ``sink`` may send now; else when it may."""
        sent = self._sent.setdefault(sink, collections.deque())
        while sent and now - sent[0] >= timedelta(minutes=1):
            sent.popleft()
        if len(sent) < limit:
            return None
        return sent[0] + timedelta(minutes=1)

    def send_once(self) -> float:
        """Attempt every due delivery; returns seconds until the next one is due."""
        sinks = self._sinks()
        alerts = self._spec().alerts
        now = self._clock.now()
        waits = [MAX_WAIT]
        held: set[str] = set()
        for d in self.queue.due(now, set(sinks)):
            later = self._rate_ok(d.sink, now, alerts.max_per_minute)
            if later is not None:
                held.add(d.sink)  # over its rate: wait for the minute, not for the queue
                waits.append((later - now).total_seconds())
                continue
            self._deliver(d, sinks[d.sink], now)
        nxt = self.queue.next_due(exclude=held)
        if nxt is not None:
            waits.append((nxt - self._clock.now()).total_seconds())
        self.metrics.alerts_pending.set(len(self.queue))
        self.metrics.alerts_dropped.inc(self.queue.dropped - self._dropped_seen)
        self._dropped_seen = self.queue.dropped
        return max(0.0, min(waits))

    _dropped_seen = 0

    def _deliver(self, d: Delivery, send: Callable[[dict[str, Any]], None], now: datetime) -> None:
        alerts = self._spec().alerts
        self._sent[d.sink].append(now)
        try:
            send(d.alert)
        except AlertDeliveryError as exc:
            delay = min(
                alerts.retry_max_seconds, alerts.retry_initial_seconds * (2 ** min(d.attempts, 20))
            )
            self.queue.failed(d, self._clock.now() + timedelta(seconds=delay))
            self.metrics.alerts_failed.labels(d.sink).inc()
            log.warning(
                "alert_delivery_failed",
                sink=d.sink,
                id=d.id,
                attempts=d.attempts + 1,
                retry_in_s=delay,
                error=str(exc),
            )
            return
        self.queue.delivered(d)
        self.metrics.alerts_sent.labels(d.sink).inc()
        log.info("alert_delivered", sink=d.sink, id=d.id, kind=d.alert.get("kind"))

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            wait = MAX_WAIT
            try:
                wait = self.send_once()
            except Exception as exc:  # noqa: BLE001 - the sender must outlive a bug; logged
                log.error("alert_sender_failed", error=str(exc), error_type=type(exc).__name__)
            self._send_wake.wait(wait)
            self._send_wake.clear()
