"""Alerts: what to tell an operator, decided from the daemon's status and audit events.

*At risk*: a service whose last attempts failed while its certificate nears expiry. The alert
escalates by steps of remaining lifetime — ⅓, 1/10, one day, expired (no certificate at all
counts as expired) — one alert per step reached, never a repeat of a step already announced,
and a ``resolved`` once the service succeeds again. A step that would come before ⅓ (one day
of a certificate living less than three) adds nothing and is left out; a step skipped between
two evaluations is not sent late (the newer one says more).
*Events*: ``rolled_back``, ``alarm`` and ``revocation_detected`` audit records, each key
(event, service, problem) at most once per ``dedup_window``.

Decisions are pure (``risk_step``) and take ``now``; state and delivery live in the queue.
Rules: a payload carries service names, times, counts and a clipped error text — never a key,
a secret or a URL of the config (``sanitize`` bounds every value).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from rotatord.core.observing import AlertsSpec
from rotatord.observe.alert_queue import AlertQueue
from rotatord.observe.logging import get_logger
from rotatord.observe.sanitize import sanitize

log = get_logger("rotatord.alerts")

STEPS = ("third", "tenth", "day", "expired")
SEVERITY = {"third": "warning", "tenth": "critical", "day": "critical", "expired": "critical"}
_DAY = timedelta(days=1)
ERROR_CHARS = 500


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def risk_step(
    not_before: datetime | None, not_after: datetime | None, now: datetime
) -> tuple[str, int] | None:
    """(step, rank) reached by a certificate's remaining lifetime, or None before ⅓ is left.

    The rank orders the steps of this certificate (its one-day mark may fall before or after
    its tenth); a higher rank is an escalation."""
    if not_after is None or now >= not_after:
        return "expired", 99
    lifetime = not_after - not_before if not_before is not None else timedelta(0)
    marks = [("third", lifetime / 3), ("tenth", lifetime / 10)]
    if lifetime / 3 > _DAY:
        marks.append(("day", _DAY))
    marks.sort(key=lambda m: m[1], reverse=True)
    left = not_after - now
    reached = None
    for rank, (step, mark) in enumerate(marks, start=1):
        if left <= mark:
            reached = (step, rank)
    return reached


class AlertEngine:
    def __init__(
        self,
        spec: Callable[[], AlertsSpec],
        queue: AlertQueue,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._spec = spec
        self.queue = queue
        self._wake = wake
        self._lock = threading.Lock()
        self._host = socket.gethostname()

    def _sinks(self) -> list[str]:
        spec = self._spec()
        return [f"webhook:{s.name}" for s in spec.webhooks] + [
            f"command:{s.name}" for s in spec.commands
        ]

    def _alert(self, kind: str, service: str, now: datetime, **fields: Any) -> dict[str, Any]:
        doc = {
            "id": str(uuid.uuid4()),
            "source": "rotatord",
            "host": self._host,
            "kind": kind,
            "service": service,
            "at": now.isoformat(),
            **fields,
        }
        clean: dict[str, Any] = sanitize(doc)
        return clean

    def evaluate(self, docs: list[dict[str, Any]], now: datetime) -> int:
        """Raise or resolve risk alerts from a status snapshot; returns how many were raised."""
        sinks = self._sinks()
        if not sinks:
            return 0
        raised = 0
        with self._lock:
            seen = set()
            for doc in docs:
                name = str(doc.get("service"))
                seen.add(name)
                raised += self._evaluate_one(name, doc, now, sinks)
            for key in [k for k in self.queue.open if k.startswith("risk:")]:
                if key.split(":", 1)[1] not in seen:
                    self.queue.forget_open(key)  # the service is no longer managed
        if raised:
            self._wake()
        return raised

    def _evaluate_one(
        self, name: str, doc: Mapping[str, Any], now: datetime, sinks: list[str]
    ) -> int:
        key = f"risk:{name}"
        opened = self.queue.open_state(key)
        failures = doc.get("failures") if isinstance(doc.get("failures"), int) else 0
        not_after = _time(doc.get("not_after"))
        not_before = _time(doc.get("not_before"))
        facts = {
            "not_after": doc.get("not_after"),
            "failures": failures,
            "last_error": str(doc.get("last_error") or "")[:ERROR_CHARS] or None,
            "next_attempt": (doc.get("next_action") or {}).get("at"),
        }
        if failures and failures > 0:
            reached = risk_step(not_before, not_after, now)
            if reached is None:
                return 0
            step, rank = reached
            known = opened.get("rank") if opened is not None else None
            if isinstance(known, int) and rank <= known:
                return 0
            summary = f"{name}: renewal failing ({failures} attempts); " + (
                "no valid certificate" if step == "expired" else f"{step} of lifetime left"
            )
            alert = self._alert(
                "at_risk", name, now, step=step, severity=SEVERITY[step], summary=summary, **facts
            )
            state = {"step": step, "rank": rank, "alert_id": alert["id"]}
            self.queue.raise_alert(alert, sinks, now, open_key=key, open_state=state)
            log.warning("alert_raised", service=name, kind="at_risk", step=step)
            return 1
        if opened is not None and failures == 0 and not_after is not None and now < not_after:
            alert = self._alert(
                "resolved",
                name,
                now,
                severity="info",
                resolves=opened.get("alert_id"),
                step=opened.get("step"),
                summary=f"{name}: renewed; valid until {doc.get('not_after')}",
                **facts,
            )
            self.queue.raise_alert(alert, sinks, now, open_key=key, open_state=None)
            log.info("alert_resolved", service=name)
            return 1
        return 0

    def on_event(self, event: str, fields: Mapping[str, Any], now: datetime) -> None:
        """An audit record: a rollback or an alarm becomes an alert (deduplicated)."""
        if event not in ("rolled_back", "alarm", "revocation_detected"):
            return
        sinks = self._sinks()
        if not sinks:
            return
        service = str(fields.get("service") or "")
        problem = str(fields.get("problem") or fields.get("cause") or fields.get("serial") or "")
        problem = problem[:200]
        dedup = f"{event}:{service}:{problem}"
        window = timedelta(seconds=self._spec().dedup_seconds)
        with self._lock:
            if self.queue.recently_fired(dedup, now, window):
                log.info("alert_deduplicated", kind=event, service=service)
                return
            bad = event != "rolled_back" or not fields.get("ok", True)
            severity = "critical" if bad else "warning"
            what = {
                "rolled_back": "rolled back to the previous certificate",
                "revocation_detected": f"certificate {problem} is revoked in the CA's CRL; "
                "replacing it with a new key",
            }.get(event, problem)
            alert = self._alert(
                event,
                service,
                now,
                severity=severity,
                summary=f"{service or 'rotatord'}: {what}",
                problem=problem or None,
                error=str(fields.get("error") or "")[:ERROR_CHARS] or None,
                rotation_id=fields.get("rotation_id"),
            )
            self.queue.raise_alert(alert, sinks, now, fired_key=dedup)
        log.warning("alert_raised", service=service, kind=event)
        self._wake()

    # ------------------------------------------------------------------ watched certificates

    def evaluate_watch(
        self, results: Mapping[str, Any], warn: Mapping[str, float], now: datetime
    ) -> int:
        """``expiring`` (soon → day → expired), ``mismatch`` and ``watch_failed`` alerts for
        watched certificates (``results``: name → WatchResult; ``warn``: name → warn_before
        seconds), each resolved when its condition clears."""
        sinks = self._sinks()
        if not sinks:
            return 0
        raised = 0
        with self._lock:
            for name, r in results.items():
                if r.error:
                    failed = ("watch_failed", "unreachable", 1, f"{name}: check failed: {r.error}")
                    raised += self._condition(f"watchfail:{name}", name, failed, now, sinks)
                    continue
                raised += self._condition(f"watchfail:{name}", name, None, now, sinks)
                step = watch_step(r.not_after, warn.get(name, 0.0), now)
                expiring = None
                if step is not None:
                    what = (
                        "expired" if step[0] == "expired" else f"expires {r.not_after.isoformat()}"
                    )
                    expiring = ("expiring", step[0], step[1], f"{name}: certificate {what}")
                raised += self._condition(f"watch:{name}", name, expiring, now, sinks, r)
                mismatch = None
                if r.missing:
                    text = f"{name}: certificate does not cover {', '.join(r.missing)}"
                    mismatch = ("mismatch", "names", 1, text)
                raised += self._condition(f"watchnames:{name}", name, mismatch, now, sinks, r)
            for key in [
                k for k in self.queue.open if k.startswith(("watch:", "watchfail:", "watchnames:"))
            ]:
                if key.split(":", 1)[1] not in results:
                    self.queue.forget_open(key)
        if raised:
            self._wake()
        return raised

    def _condition(
        self,
        key: str,
        name: str,
        state: tuple[str, str, int, str] | None,
        now: datetime,
        sinks: list[str],
        result: Any = None,
    ) -> int:
        """Raise ``state`` (kind, step, rank, summary) if it escalates what is open under
        ``key``; resolve what is open when ``state`` is None."""
        opened = self.queue.open_state(key)
        facts: dict[str, Any] = {"watched": True}
        if result is not None:
            facts["not_after"] = result.not_after.isoformat() if result.not_after else None
            facts["names"] = list(result.names)[:20]
        if state is None:
            if opened is None:
                return 0
            alert = self._alert(
                "resolved",
                name,
                now,
                severity="info",
                resolves=opened.get("alert_id"),
                step=opened.get("step"),
                summary=f"{name}: {opened.get('kind')} cleared",
                **facts,
            )
            self.queue.raise_alert(alert, sinks, now, open_key=key, open_state=None)
            return 1
        kind, step, rank, summary = state
        known = opened.get("rank") if opened is not None else None
        if isinstance(known, int) and rank <= known:
            return 0
        severity = "warning" if step in ("soon", "names", "unreachable") else "critical"
        alert = self._alert(kind, name, now, step=step, severity=severity, summary=summary, **facts)
        record = {"kind": kind, "step": step, "rank": rank, "alert_id": alert["id"]}
        self.queue.raise_alert(alert, sinks, now, open_key=key, open_state=record)
        log.warning("alert_raised", service=name, kind=kind, step=step)
        return 1


def watch_step(not_after: datetime | None, warn_s: float, now: datetime) -> tuple[str, int] | None:
    """(step, rank) of a watched certificate: ``soon`` (within ``warn_before``), ``day``,
    ``expired``; None while more is left."""
    if not_after is None:
        return None
    left = not_after - now
    if left <= timedelta(0):
        return "expired", 3
    if left <= _DAY:
        return "day", 2
    if left <= timedelta(seconds=warn_s):
        return "soon", 1
    return None
