"""``[metrics]``, ``[alerts]`` and ``[heartbeat]``: TOML → ``core.observing`` settings.

Uses config.py's readers, so every problem names the file and the key path like the rest of the
config. Rules: URLs (webhooks often carry a token in their path) are never echoed in a message
beyond their scheme and host; secret files are checked to exist, never read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from rotatord import config as c
from rotatord.core.observing import (
    AlertsSpec,
    CommandSink,
    HeartbeatSpec,
    MetricsSpec,
    ObserveSpec,
    RevocationSpec,
    WatchSpec,
    WebhookSink,
)

_METRICS_KEYS = ("listen", "max_connections")
_ALERT_KEYS = (
    "webhook",
    "command",
    "evaluate_interval",
    "dedup_window",
    "max_per_minute",
    "queue_max",
    "retry_initial",
    "retry_max",
)
_WEBHOOK_KEYS = ("url", "timeout", "hmac_secret_file", "ca_bundle")
_COMMAND_KEYS = ("argv", "timeout", "env")
_HEARTBEAT_KEYS = ("url", "file", "interval", "timeout", "ca_bundle")
_REVOCATION_KEYS = ("enabled", "interval", "crl_urls", "timeout")
_WATCH_KEYS = ("file", "endpoint", "sni", "names", "warn_before", "interval", "timeout")
_DAY = 86400.0


def parse_observe(ctx: c._Ctx, root: Mapping[str, Any]) -> ObserveSpec:
    metrics = _metrics(ctx, root["metrics"]) if "metrics" in root else MetricsSpec()
    alerts = _alerts(ctx, root["alerts"]) if "alerts" in root else AlertsSpec()
    heartbeat = _heartbeat(ctx, root["heartbeat"]) if "heartbeat" in root else HeartbeatSpec()
    watches = _watches(ctx, root["watch"], root.get("services")) if "watch" in root else ()
    revocation = _revocation(ctx, root["revocation"]) if "revocation" in root else RevocationSpec()
    return ObserveSpec(
        metrics=metrics,
        alerts=alerts,
        heartbeat=heartbeat,
        watches=watches,
        revocation=revocation,
    )


def _metrics(ctx: c._Ctx, raw: object) -> MetricsSpec:
    table = c._table(ctx, raw, "metrics")
    if table is None:
        return MetricsSpec()
    c._known_keys(ctx, table, "metrics", _METRICS_KEYS)
    listen = None
    text = c._string(ctx, table, "listen", "metrics")
    if text is not None:
        parsed = c._parse_host_port(
            text, "'127.0.0.1:9817' or '[::1]:9817'", "missing host; e.g. '127.0.0.1:9817'"
        )
        if isinstance(parsed, str):
            ctx.add("metrics.listen", parsed)
        else:
            listen = parsed
    conns = c._int(ctx, table, "max_connections", "metrics", 1, 256)
    return MetricsSpec(listen=listen, max_connections=conns or MetricsSpec.max_connections)


def _seconds(ctx: c._Ctx, table: Mapping[str, Any], key: str, path: str) -> float | None:
    """A duration written like the rest of the config ('30s', '5m'), at most a day."""
    if key not in table:
        return None
    where = c._join(path, key)
    value = c._duration_value(ctx, table[key], where)
    if value is None:
        return None
    if value.total_seconds() > _DAY:
        ctx.add(where, f"must be at most 1d, got {c._show(table[key])}")
        return None
    return value.total_seconds()


def _url_problem(url: str) -> str | None:
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "the URL must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "not a valid URL; expected https://host/path"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL with a host"
    return None


def _url(ctx: c._Ctx, table: Mapping[str, Any], key: str, path: str) -> str | None:
    url = c._string(ctx, table, key, path)
    if url is None:
        return None
    problem = _url_problem(url)
    if problem is not None:
        ctx.add(c._join(path, key), problem)
        return None
    return url


def _file(ctx: c._Ctx, table: Mapping[str, Any], key: str, path: str) -> Any:
    file = c._path(ctx, table, key, path)
    if file is not None and not c._existing_file(ctx, c._join(path, key), file):
        return None
    return file


def _alerts(ctx: c._Ctx, raw: object) -> AlertsSpec:
    table = c._table(ctx, raw, "alerts")
    if table is None:
        return AlertsSpec()
    c._known_keys(ctx, table, "alerts", _ALERT_KEYS)
    d = AlertsSpec()
    webhooks = []
    for name, item in _named(ctx, table, "webhook").items():
        where = c._join("alerts.webhook", name)
        sink = c._table(ctx, item, where)
        if sink is None:
            continue
        c._known_keys(ctx, sink, where, _WEBHOOK_KEYS)
        if not c._required(ctx, sink, "url", where, "where alerts are POSTed"):
            continue
        url = _url(ctx, sink, "url", where)
        timeout = c._seconds(ctx, sink, "timeout", where, 300)
        secret = _file(ctx, sink, "hmac_secret_file", where)
        bundle = _file(ctx, sink, "ca_bundle", where)
        if url is not None:
            webhooks.append(WebhookSink(name, url, timeout or 10.0, secret, bundle))
    commands = []
    for name, item in _named(ctx, table, "command").items():
        where = c._join("alerts.command", name)
        sink = c._table(ctx, item, where)
        if sink is None:
            continue
        c._known_keys(ctx, sink, where, _COMMAND_KEYS)
        if not c._required(ctx, sink, "argv", where, "the program to run and its arguments"):
            continue
        argv = c._argv(ctx, sink["argv"], c._join(where, "argv"))
        timeout = c._seconds(ctx, sink, "timeout", where, 300)
        env = c._env(ctx, sink["env"], c._join(where, "env")) if "env" in sink else {}
        if argv is not None:
            commands.append(CommandSink(name, argv, timeout or 30.0, env))
    return AlertsSpec(
        webhooks=tuple(webhooks),
        commands=tuple(commands),
        evaluate_seconds=_seconds(ctx, table, "evaluate_interval", "alerts") or d.evaluate_seconds,
        dedup_seconds=_seconds(ctx, table, "dedup_window", "alerts") or d.dedup_seconds,
        max_per_minute=c._int(ctx, table, "max_per_minute", "alerts", 1, 10000) or d.max_per_minute,
        queue_max=c._int(ctx, table, "queue_max", "alerts", 10, 100000) or d.queue_max,
        retry_initial_seconds=_seconds(ctx, table, "retry_initial", "alerts")
        or d.retry_initial_seconds,
        retry_max_seconds=_seconds(ctx, table, "retry_max", "alerts") or d.retry_max_seconds,
    )


def _named(ctx: c._Ctx, table: Mapping[str, Any], key: str) -> dict[str, Any]:
    if key not in table:
        return {}
    where = c._join("alerts", key)
    named = c._table(ctx, table[key], where)
    out: dict[str, Any] = {}
    for name, item in (named or {}).items():
        if c._check_name(ctx, name, c._join(where, name), where, "it names the sink"):
            out[name] = item
    return out


def _heartbeat(ctx: c._Ctx, raw: object) -> HeartbeatSpec:
    table = c._table(ctx, raw, "heartbeat")
    if table is None:
        return HeartbeatSpec()
    c._known_keys(ctx, table, "heartbeat", _HEARTBEAT_KEYS)
    url = _url(ctx, table, "url", "heartbeat")
    file = c._path(ctx, table, "file", "heartbeat")
    if "url" not in table and "file" not in table:
        ctx.add("heartbeat", "give a 'url' to ping and/or a 'file' to touch")
    d = HeartbeatSpec()
    return HeartbeatSpec(
        url=url,
        file=file,
        interval_seconds=_seconds(ctx, table, "interval", "heartbeat") or d.interval_seconds,
        timeout_seconds=c._seconds(ctx, table, "timeout", "heartbeat", 300) or d.timeout_seconds,
        ca_bundle=_file(ctx, table, "ca_bundle", "heartbeat"),
    )


def _watches(ctx: c._Ctx, raw: object, services: object) -> tuple[WatchSpec, ...]:
    table = c._table(ctx, raw, "watch")
    out = []
    for name, item in (table or {}).items():
        where = c._join("watch", name)
        if not c._check_name(ctx, name, where, "watch", "it names the certificate in metrics"):
            continue
        if isinstance(services, Mapping) and name in services:
            ctx.add(
                where, f"a service is also named {name!r}; metrics and alerts need one name each"
            )
            continue
        spec = c._table(ctx, item, where)
        if spec is None:
            continue
        c._known_keys(ctx, spec, where, _WATCH_KEYS)
        if ("file" in spec) == ("endpoint" in spec):
            ctx.add(
                where, "give exactly one of 'file' (a PEM certificate) or 'endpoint' (host:port)"
            )
            continue
        host = port = None
        endpoint = c._string(ctx, spec, "endpoint", where)
        if endpoint is not None:
            parsed = c._parse_host_port(
                endpoint, "'127.0.0.1:443' or 'mail.example.com:993'", "missing host"
            )
            if isinstance(parsed, str):
                ctx.add(c._join(where, "endpoint"), parsed)
                continue
            host, port = parsed
        sni = c._string(ctx, spec, "sni", where)
        names: list[str] = []
        if "names" in spec:
            names = c._string_list(ctx, spec["names"], c._join(where, "names"), "names") or []
        if not names and host is not None:
            names = [sni or host]
        warn = None
        if "warn_before" in spec:
            value = c._duration_value(ctx, spec["warn_before"], c._join(where, "warn_before"))
            warn = value.total_seconds() if value is not None else None
        d = WatchSpec(name)
        out.append(
            WatchSpec(
                name,
                file=c._path(ctx, spec, "file", where),
                host=host,
                port=port,
                sni=sni or host,
                names=tuple(n.lower() for n in names),
                warn_before_seconds=warn or d.warn_before_seconds,
                interval_seconds=_seconds(ctx, spec, "interval", where) or d.interval_seconds,
                timeout_seconds=c._seconds(ctx, spec, "timeout", where, 300) or d.timeout_seconds,
            )
        )
    return tuple(out)


def _revocation(ctx: c._Ctx, raw: object) -> RevocationSpec:
    table = c._table(ctx, raw, "revocation")
    if table is None:
        return RevocationSpec()
    c._known_keys(ctx, table, "revocation", _REVOCATION_KEYS)
    d = RevocationSpec()
    urls: list[str] = []
    if "crl_urls" in table:
        where = c._join("revocation", "crl_urls")
        for index, url in enumerate(c._string_list(ctx, table["crl_urls"], where, "URLs") or []):
            problem = _url_problem(url)
            if problem is not None:
                ctx.add(c._item(where, index), problem)
            else:
                urls.append(url)
    enabled = c._bool(ctx, table, "enabled", "revocation")
    return RevocationSpec(
        enabled=d.enabled if enabled is None else enabled,
        interval_seconds=_seconds(ctx, table, "interval", "revocation") or d.interval_seconds,
        crl_urls=tuple(urls),
        timeout_seconds=c._seconds(ctx, table, "timeout", "revocation", 300) or d.timeout_seconds,
    )
