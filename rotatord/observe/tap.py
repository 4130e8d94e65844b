"""An audit log whose records are also shown to the observers (metrics, alerts).

The record is written first; observers see only records that are durable, and only after the
write, so an alert never announces an event the audit log does not hold. Observers run on the
emitting thread and must be quick (they count, or queue); one that raises is logged and ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rotatord.clock import Clock
from rotatord.core.errors import AuditError
from rotatord.observe.audit import AuditLog
from rotatord.observe.logging import get_logger

log = get_logger("rotatord.tap")

Observer = Callable[[str, Mapping[str, Any]], None]
Health = Callable[[bool, Any], None]


class TappedAudit:
    """``AuditLog``'s ``emit`` and ``maybe_seal``, with observers and write health."""

    def __init__(
        self, inner: AuditLog, clock: Clock, observers: list[Observer], health: Health
    ) -> None:
        self.inner = inner
        self._clock = clock
        self._observers = observers
        self._health = health

    @property
    def path(self) -> Path:
        return self.inner.path

    def emit(self, event: str, **fields: Any) -> None:
        try:
            self.inner.emit(event, **fields)
        except AuditError:
            self._health(False, self._clock.now())
            raise
        self._health(True, self._clock.now())
        for observe in self._observers:
            try:
                observe(event, fields)
            except Exception as exc:  # noqa: BLE001 - an observer never fails the key operation
                log.error("observer_failed", event=event, error=str(exc))

    def maybe_seal(self, *, force: bool = False) -> None:
        self.inner.maybe_seal(force=force)
