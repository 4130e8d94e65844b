"""Prometheus metrics: per-service gauges read from the daemon's status at scrape time, counters
fed by the audit events and the ACME network layer.

Names follow cert-manager's where the meaning matches (``certmanager_certificate_*`` becomes
``rotatord_certificate_*`` with the same label meaning: ``name`` is the certificate — here the
service — and ``issuer_name`` the issuer — here the ACME account), so dashboards and alert rules
written for cert-manager carry over by changing the prefix.

Rules: no label takes an unbounded value (error messages, URLs, serials never become labels:
causes are exception class names or ACME problem codes, endpoints a fixed set); no I/O of its
own (``status`` is a callable the daemon gives); scraping never raises into the server.
"""

from __future__ import annotations

import platform
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from rotatord.observe.logging import get_logger

log = get_logger("rotatord.metrics")

Status = Callable[[], list[dict[str, Any]]]

RESULTS = ("rotated", "not_due", "deferred", "failed", "rolled_back")
_CODE_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,39}")
_PROBLEM_PREFIX = "urn:ietf:params:acme:error:"
# Path fragments of ACME resources (RFC 8555 names, Let's Encrypt's and Pebble's spellings), in
# the order they are tried: the endpoint label is one of these names, or "other".
_ENDPOINTS = (
    ("nonce", "new_nonce"),
    ("sign-me-up", "new_account"),
    ("new-acct", "new_account"),
    ("new-account", "new_account"),
    ("order-plz", "new_order"),
    ("new-order", "new_order"),
    ("revoke", "revoke_cert"),
    ("renewal-info", "renewal_info"),
    ("renewalinfo", "renewal_info"),
    ("key-change", "key_change"),
    ("rollover", "key_change"),
    ("finalize", "finalize"),
    ("authz", "authorization"),
    ("chal", "challenge"),
    ("cert", "certificate"),
    ("order", "order"),
    ("acct", "account"),
    ("account", "account"),
    ("dir", "directory"),
)


def acme_endpoint(url: str) -> tuple[str, str]:
    """(host, endpoint name) of an ACME URL; the name is from a fixed set."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "", "other"
    path = parts.path.lower()
    for fragment, name in _ENDPOINTS:
        if fragment in path:
            return parts.hostname or "", name
    return parts.hostname or "", "other"


def cause_of(fields: Mapping[str, Any]) -> str:
    """A bounded cause label: the ACME problem code if any, else the exception class name."""
    problem = fields.get("problem_type")
    if isinstance(problem, str) and problem.startswith(_PROBLEM_PREFIX):
        code = problem[len(_PROBLEM_PREFIX) :]
        if _CODE_RE.fullmatch(code):
            return code
    kind = fields.get("error_type")
    if isinstance(kind, str) and _CODE_RE.fullmatch(kind):
        return kind
    return "other"


def _ts(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class StatusCollector(Collector):
    """Per-service gauges computed from the daemon's status view at each scrape."""

    def __init__(self, status: Status, now: Callable[[], datetime]) -> None:
        self._status = status
        self._now = now

    def collect(self) -> Iterable[Metric]:
        labels = ["name", "issuer_name"]
        expiry = GaugeMetricFamily(
            "rotatord_certificate_expiration_timestamp_seconds",
            "The date after which the certificate expires (notAfter), as a Unix timestamp.",
            labels=labels,
        )
        not_before = GaugeMetricFamily(
            "rotatord_certificate_not_before_timestamp_seconds",
            "The date before which the certificate is not valid (notBefore).",
            labels=labels,
        )
        renewal = GaugeMetricFamily(
            "rotatord_certificate_renewal_timestamp_seconds",
            "When rotatord plans to act on the certificate next (renewal, retry or re-check).",
            labels=labels,
        )
        ready = GaugeMetricFamily(
            "rotatord_certificate_ready_status",
            "1 for the current condition: True when a valid certificate is installed and the "
            "last attempt did not fail.",
            labels=[*labels, "condition"],
        )
        failures = GaugeMetricFamily(
            "rotatord_service_consecutive_failures",
            "Failed attempts since the last success.",
            labels=labels,
        )
        last = GaugeMetricFamily(
            "rotatord_service_last_result",
            "1 for the outcome of the service's last rotation attempt.",
            labels=[*labels, "result"],
        )
        success = GaugeMetricFamily(
            "rotatord_service_last_success_timestamp_seconds",
            "When the service last rotated successfully.",
            labels=labels,
        )
        persisted = GaugeMetricFamily(
            "rotatord_service_status_persisted",
            "1 when the service's status is on disk, 0 when only in memory (disk trouble).",
            labels=labels,
        )
        certs_left = GaugeMetricFamily(
            "rotatord_budget_certificates_remaining",
            "Certificates the account may still get for this identifier set in the window.",
            labels=labels,
        )
        orders_left = GaugeMetricFamily(
            "rotatord_budget_orders_remaining",
            "New orders the account may still send in its window.",
            labels=["issuer_name"],
        )
        up = GaugeMetricFamily(
            "rotatord_status_up",
            "1 when the status of every service could be read for this scrape.",
        )
        now = self._now()
        try:
            docs = self._status()
        except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, never raises
            log.error("metrics_status_failed", error=str(exc), error_type=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        accounts: dict[str, int] = {}
        for doc in docs:
            lv = [str(doc.get("service")), str(doc.get("account"))]
            not_after = _ts(doc.get("not_after"))
            if not_after is not None:
                expiry.add_metric(lv, not_after)
            start = _ts(doc.get("not_before"))
            if start is not None:
                not_before.add_metric(lv, start)
            action = doc.get("next_action")
            at = _ts(action.get("at")) if isinstance(action, dict) else None
            if at is not None:
                renewal.add_metric(lv, at)
            count = doc.get("failures")
            count = count if isinstance(count, int) else 0
            failures.add_metric(lv, count)
            valid = not_after is not None and not_after > now.timestamp()
            state = "True" if valid and count == 0 else "False"
            for condition in ("True", "False", "Unknown"):
                ready.add_metric([*lv, condition], 1 if condition == state else 0)
            result = doc.get("last_result")
            for r in RESULTS:
                last.add_metric([*lv, r], 1 if r == result else 0)
            ok_at = _ts(doc.get("last_success"))
            if ok_at is not None:
                success.add_metric(lv, ok_at)
            persisted.add_metric(lv, 1 if doc.get("status_persisted", True) else 0)
            budget = doc.get("budget")
            if isinstance(budget, dict):
                if isinstance(budget.get("certificates_remaining"), int):
                    certs_left.add_metric(lv, budget["certificates_remaining"])
                if isinstance(budget.get("orders_remaining"), int):
                    accounts[lv[1]] = budget["orders_remaining"]
        for account, left in sorted(accounts.items()):
            orders_left.add_metric([account], left)
        up.add_metric([], 1)
        yield from (expiry, not_before, renewal, ready, failures, last, success, persisted)
        yield from (certs_left, orders_left, up)


class Metrics:
    """The daemon's registry and the counters other parts feed (each method never raises)."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        info = Gauge(
            "rotatord_build_info", "rotatord's version.", ["version", "python"], registry=r
        )
        info.labels(version, platform.python_version()).set(1)
        svc = ["name"]
        self.rotations = Counter(
            "rotatord_rotations", "Rotation attempts by outcome.", [*svc, "outcome"], registry=r
        )
        self.failures = Counter(
            "rotatord_rotation_failures", "Failed rotations by cause.", [*svc, "cause"], registry=r
        )
        self.reloads = Counter(
            "rotatord_reloads", "Reload actions by result.", [*svc, "result"], registry=r
        )
        self.probes = Counter(
            "rotatord_probes", "TLS probes by result.", [*svc, "result"], registry=r
        )
        self.rollbacks = Counter("rotatord_rollbacks", "Rollbacks performed.", svc, registry=r)
        self.alarms = Counter("rotatord_alarms", "Alarm records written.", registry=r)
        ep = ["host", "endpoint", "method", "status"]
        self.acme_requests = Counter(
            "rotatord_http_acme_client_requests", "Requests sent to ACME servers.", ep, registry=r
        )
        self.acme_duration = Histogram(
            "rotatord_http_acme_client_request_duration_seconds",
            "Duration of requests to ACME servers, response body included.",
            ep,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.audit_writable = Gauge(
            "rotatord_audit_log_writable",
            "1 when the last audit record was written, 0 when the last write failed.",
            registry=r,
        )
        self.audit_writable.set(1)
        self.audit_failures = Counter(
            "rotatord_audit_write_failures", "Audit records that could not be written.", registry=r
        )
        self.audit_last = Gauge(
            "rotatord_audit_last_write_timestamp_seconds",
            "When the last audit record was written.",
            registry=r,
        )
        self.last_check = Gauge(
            "rotatord_last_check_timestamp_seconds",
            "When the daemon last completed a check cycle over every service.",
            registry=r,
        )
        self.heartbeat_last = Gauge(
            "rotatord_heartbeat_last_success_timestamp_seconds",
            "When the dead-man heartbeat was last delivered.",
            registry=r,
        )
        self.alerts_pending = Gauge(
            "rotatord_alerts_pending", "Alerts waiting for delivery.", registry=r
        )
        self.alerts_sent = Counter(
            "rotatord_alerts_delivered", "Alerts delivered, by sink.", ["sink"], registry=r
        )
        self.alerts_failed = Counter(
            "rotatord_alerts_delivery_failures",
            "Failed alert delivery attempts, by sink.",
            ["sink"],
            registry=r,
        )
        self.alerts_dropped = Counter(
            "rotatord_alerts_dropped", "Alerts dropped because the queue was full.", registry=r
        )
        self._lock = threading.Lock()

    def watch_status(self, status: Status, now: Callable[[], datetime]) -> None:
        self.registry.register(StatusCollector(status, now))

    def acme_exchange(self, method: str, url: str, status: int | None, seconds: float) -> None:
        host, endpoint = acme_endpoint(url)
        code = str(status) if status is not None else "error"
        self.acme_requests.labels(host, endpoint, method, code).inc()
        self.acme_duration.labels(host, endpoint, method, code).observe(max(0.0, seconds))

    def audit_written(self, ok: bool, at: datetime) -> None:
        self.audit_writable.set(1 if ok else 0)
        if ok:
            self.audit_last.set(at.timestamp())
        else:
            self.audit_failures.inc()

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """Count what an audit record says happened."""
        name = str(fields.get("service", ""))
        if event == "rotation_finished":
            outcome = str(fields.get("outcome"))
            self.rotations.labels(name, outcome if outcome in RESULTS else "other").inc()
            if outcome in ("failed", "rolled_back"):
                self.failures.labels(name, cause_of(fields)).inc()
        elif event in ("reload_succeeded", "reload_failed"):
            self.reloads.labels(name, "ok" if event == "reload_succeeded" else "failed").inc()
        elif event in ("probe_succeeded", "probe_failed"):
            self.probes.labels(name, "ok" if event == "probe_succeeded" else "failed").inc()
        elif event == "rolled_back":
            self.rollbacks.labels(name).inc()
        elif event == "alarm":
            self.alarms.inc()
