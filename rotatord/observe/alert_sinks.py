"""Alert sinks: a webhook (JSON POST, optionally HMAC-signed) and a command (argv, no shell).

Each ``send`` makes one attempt and raises ``AlertDeliveryError`` on failure; retries with
backoff are the sender's (the attempt count and next try are persisted in the queue).

Webhook signature (when ``hmac_secret_file`` is set): ``X-Rotatord-Timestamp: <unix seconds>``
and ``X-Rotatord-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``; a
receiver recomputes it and rejects stale timestamps (replays). ``X-Rotatord-Alert-Id`` is the
same for every redelivery of one alert (delivery is at least once).

A command gets the alert as JSON in ``ROTATORD_ALERT`` plus ``ROTATORD_ALERT_KIND``,
``_SERVICE``, ``_SEVERITY``, ``_ID``, on top of its configured ``env`` and the fixed PATH of
reload commands; it runs through ``deploy.reload`` (the one module that starts processes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from rotatord import __version__
from rotatord.core.errors import ReloadError, RotatordError, StoreError
from rotatord.core.model import CommandReload
from rotatord.core.observing import CommandSink, WebhookSink
from rotatord.deploy.reload import SubprocessReloader
from rotatord.fsutil import read_file_nofollow
from rotatord.observe.http_out import redact, request


class AlertDeliveryError(RotatordError):
    pass


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _body(alert: dict[str, Any]) -> bytes:
    return json.dumps(alert, sort_keys=True, separators=(",", ":")).encode()


def send_webhook(sink: WebhookSink, alert: dict[str, Any], now: datetime) -> None:
    body = _body(alert)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"rotatord/{__version__}",
        "X-Rotatord-Alert-Id": str(alert.get("id")),
    }
    if sink.hmac_secret_file is not None:
        try:
            secret = read_file_nofollow(sink.hmac_secret_file, 4096).strip()
        except (OSError, StoreError) as exc:
            raise AlertDeliveryError(f"webhook {sink.name}: cannot read hmac_secret_file") from exc
        stamp = str(int(now.timestamp()))
        headers["X-Rotatord-Timestamp"] = stamp
        headers["X-Rotatord-Signature"] = signature(secret, stamp, body)
    try:
        status = request(
            "POST",
            sink.url,
            body=body,
            headers=headers,
            timeout=sink.timeout_seconds,
            ca_bundle=sink.ca_bundle,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise AlertDeliveryError(f"webhook {sink.name} ({redact(sink.url)}): {reason}") from exc
    if not 200 <= status < 300:
        raise AlertDeliveryError(f"webhook {sink.name} ({redact(sink.url)}): HTTP {status}")


def run_command(sink: CommandSink, alert: dict[str, Any]) -> None:
    env = {
        **sink.env,
        "ROTATORD_ALERT": _body(alert).decode(),
        "ROTATORD_ALERT_ID": str(alert.get("id")),
        "ROTATORD_ALERT_KIND": str(alert.get("kind")),
        "ROTATORD_ALERT_SERVICE": str(alert.get("service")),
        "ROTATORD_ALERT_SEVERITY": str(alert.get("severity")),
    }
    action = CommandReload(sink.argv, sink.timeout_seconds)
    try:
        SubprocessReloader().run(action, env)
    except ReloadError as exc:
        raise AlertDeliveryError(f"command {sink.name}: {exc}") from exc
