"""Frozen settings of the observation outputs: ``[metrics]``, ``[alerts]``, ``[heartbeat]``.

Rules: plain frozen dataclasses only (like ``model``); no I/O. Secrets are never held here, only
the path of the file that holds one (``hmac_secret_file``), read when a request is signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True)
class MetricsSpec:
    """Prometheus exposition on ``listen`` (host, port); None: no listener (the default)."""

    listen: tuple[str, int] | None = None
    max_connections: int = 8


@dataclass(frozen=True)
class WebhookSink:
    name: str
    url: str
    timeout_seconds: float = 10.0
    hmac_secret_file: Path | None = None
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class CommandSink:
    name: str
    argv: tuple[str, ...]
    timeout_seconds: float = 30.0
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class AlertsSpec:
    webhooks: tuple[WebhookSink, ...] = ()
    commands: tuple[CommandSink, ...] = ()
    #: How often every service's risk is evaluated (also after every rotation).
    evaluate_seconds: float = 60.0
    #: The same event alert (an alarm, a rollback) is sent at most once per window.
    dedup_seconds: float = 3600.0
    #: Deliveries per sink per minute; the rest wait in the queue (never dropped for the rate).
    max_per_minute: int = 30
    #: Persisted queue bound; beyond it the oldest undelivered alert is dropped (and counted).
    queue_max: int = 1000
    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks or self.commands)


@dataclass(frozen=True)
class HeartbeatSpec:
    """Dead-man switch: after each successful check cycle, GET ``url`` and/or touch ``file``."""

    url: str | None = None
    file: Path | None = None
    interval_seconds: float = 60.0
    timeout_seconds: float = 10.0
    ca_bundle: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.url is not None or self.file is not None


@dataclass(frozen=True)
class WatchSpec:
    """A certificate rotatord does not issue: a PEM ``file`` or a TLS endpoint ``host:port``
    (``sni`` sent, default the host). Alerts when ``warn_before`` or less is left, and when the
    certificate does not cover ``names`` (default: the SNI name, for an endpoint)."""

    name: str
    file: Path | None = None
    host: str | None = None
    port: int | None = None
    sni: str | None = None
    names: tuple[str, ...] = ()
    warn_before_seconds: float = 14 * 86400.0
    interval_seconds: float = 3600.0
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class RevocationSpec:
    """CRL checks of rotatord's own certificates: each certificate's CRL distribution points
    plus ``crl_urls`` (for a CA whose certificates name none), every ``interval``."""

    enabled: bool = True
    interval_seconds: float = 6 * 3600.0
    crl_urls: tuple[str, ...] = ()
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class ObserveSpec:
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    alerts: AlertsSpec = field(default_factory=AlertsSpec)
    heartbeat: HeartbeatSpec = field(default_factory=HeartbeatSpec)
    watches: tuple[WatchSpec, ...] = ()
    revocation: RevocationSpec = field(default_factory=RevocationSpec)
