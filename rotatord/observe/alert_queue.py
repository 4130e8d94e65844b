"""The alert queue: alerts waiting for delivery, and what has been raised, on disk.

``<state>/alerts/queue.json`` (0600, replaced atomically) holds the undelivered deliveries (one
per alert and sink), the open risk alerts per service (so a restart neither repeats nor forgets
them) and when each event alert was last raised (deduplication). An alert is queued and its
state changed in one write, so a crash cannot record that it was raised without queueing it:
delivery is at least once (a crash between sending and the write sends it again; its ``id``
lets the receiver drop the repeat).

Rules: bounded (``queue_max`` deliveries; beyond it the oldest is dropped and counted); the
file holds alert payloads only, which never carry a secret; never follows a symlink.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rotatord.core.errors import StoreError
from rotatord.fsutil import atomic_write, ensure_tree, read_file_nofollow
from rotatord.observe.logging import get_logger

log = get_logger("rotatord.alerts")

FILE_LIMIT = 16 << 20


@dataclass
class Delivery:
    id: str
    sink: str
    alert: dict[str, Any]
    attempts: int
    next_try: datetime

    def to_doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sink": self.sink,
            "alert": self.alert,
            "attempts": self.attempts,
            "next_try": self.next_try.isoformat(),
        }


def _time(value: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return t if t is not None and t.tzinfo is not None else None


class AlertQueue:
    """Thread-safe; every change is on disk before the method returns (or logged if it cannot
    be: the queue keeps working from memory and the next write carries it)."""

    def __init__(self, state_dir: Path, queue_max: int) -> None:
        self.dir = state_dir / "alerts"
        self.path = self.dir / "queue.json"
        self.queue_max = queue_max
        self.dropped = 0
        self.persist_error: str | None = None
        self._lock = threading.Lock()
        self.pending: list[Delivery] = []
        self.open: dict[str, dict[str, Any]] = {}
        self.fired: dict[str, datetime] = {}
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(read_file_nofollow(self.path, FILE_LIMIT))
        except FileNotFoundError:
            return
        except (OSError, ValueError, StoreError) as exc:
            log.error("alert_queue_unreadable", path=str(self.path), error=str(exc))
            return
        if not isinstance(doc, dict):
            return
        for item in doc.get("pending", []):
            if not isinstance(item, dict) or not isinstance(item.get("alert"), dict):
                continue
            at = _time(item.get("next_try"))
            if isinstance(item.get("id"), str) and isinstance(item.get("sink"), str) and at:
                attempts = item.get("attempts")
                n = attempts if isinstance(attempts, int) else 0
                self.pending.append(Delivery(item["id"], item["sink"], item["alert"], n, at))
        opened = doc.get("open")
        if isinstance(opened, dict):
            self.open = {k: v for k, v in opened.items() if isinstance(v, dict)}
        fired = doc.get("fired")
        if isinstance(fired, dict):
            for key, value in fired.items():
                t = _time(value)
                if t is not None:
                    self.fired[key] = t

    def _save(self) -> None:
        doc = {
            "version": 1,
            "pending": [d.to_doc() for d in self.pending],
            "open": self.open,
            "fired": {k: v.isoformat() for k, v in self.fired.items()},
        }
        data = (json.dumps(doc, sort_keys=True) + "\n").encode()
        try:
            ensure_tree(self.dir, 0o700)
            atomic_write(self.path, data, 0o600)
            self.persist_error = None
        except (OSError, StoreError) as exc:
            self.persist_error = str(exc)
            log.error("alert_queue_unwritable", path=str(self.path), error=str(exc))

    # ------------------------------------------------------------------ raising

    def raise_alert(
        self,
        alert: dict[str, Any],
        sinks: list[str],
        now: datetime,
        *,
        open_key: str | None = None,
        open_state: dict[str, Any] | None = None,
        fired_key: str | None = None,
    ) -> None:
        """Queue ``alert`` for each sink and record its state, in one write."""
        with self._lock:
            for sink in sinks:
                self.pending.append(Delivery(f"{alert['id']}.{sink}", sink, alert, 0, now))
            excess = len(self.pending) - self.queue_max
            if excess > 0:
                lost = self.pending[:excess]
                del self.pending[:excess]
                self.dropped += excess
                log.error("alerts_dropped", count=excess, ids=[d.id for d in lost][:10])
            if open_key is not None:
                if open_state is None:
                    self.open.pop(open_key, None)
                else:
                    self.open[open_key] = open_state
            if fired_key is not None:
                self.fired[fired_key] = now
            self._save()

    def forget_open(self, key: str) -> None:
        with self._lock:
            if self.open.pop(key, None) is not None:
                self._save()

    def recently_fired(self, key: str, now: datetime, window: timedelta) -> bool:
        with self._lock:
            for k, t in list(self.fired.items()):
                if now - t >= window:
                    del self.fired[k]
            last = self.fired.get(key)
        return last is not None and now - last < window

    def open_state(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self.open.get(key)

    # ------------------------------------------------------------------ delivering

    def due(self, now: datetime, known_sinks: set[str]) -> list[Delivery]:
        """Per sink, the oldest undelivered alert if its time has come (order is kept per sink:
        a "resolved" never overtakes the alert it resolves). Deliveries for sinks no longer
        configured are dropped."""
        with self._lock:
            stale = [d for d in self.pending if d.sink not in known_sinks]
            if stale:
                self.pending = [d for d in self.pending if d.sink in known_sinks]
                log.warning(
                    "alerts_unroutable", count=len(stale), sinks=sorted({d.sink for d in stale})
                )
                self._save()
            heads: dict[str, Delivery] = {}
            for d in self.pending:
                heads.setdefault(d.sink, d)
            return [d for d in heads.values() if d.next_try <= now]

    def next_due(self, exclude: set[str] | None = None) -> datetime | None:
        """When the next head of a sink not in ``exclude`` is due."""
        with self._lock:
            heads: dict[str, Delivery] = {}
            for d in self.pending:
                if not exclude or d.sink not in exclude:
                    heads.setdefault(d.sink, d)
            return min((d.next_try for d in heads.values()), default=None)

    def delivered(self, delivery: Delivery) -> None:
        with self._lock:
            self.pending = [d for d in self.pending if d.id != delivery.id]
            self._save()

    def failed(self, delivery: Delivery, next_try: datetime) -> None:
        with self._lock:
            for d in self.pending:
                if d.id == delivery.id:
                    d.attempts += 1
                    d.next_try = next_try
            self._save()

    def __len__(self) -> int:
        with self._lock:
            return len(self.pending)
