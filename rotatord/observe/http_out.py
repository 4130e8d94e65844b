"""Outgoing HTTP for alerts and the heartbeat: one request, bounded, no redirects, no proxy.

Rules: the URL is never logged past its scheme and host (webhook and ping URLs often carry a
token in their path); TLS verifies against the system store or the given bundle; the response
body is read to at most ``MAX_BODY`` bytes and dropped.
"""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from urllib.parse import urlsplit

MAX_BODY = 64 << 10


def redact(url: str) -> str:
    """What may be logged of ``url``: its scheme and host (and port)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."
    except ValueError:
        return "<invalid url>"


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float,
    ca_bundle: Path | None = None,
) -> int:
    """Send one request and return the status code; raises OSError on a transport failure.

    ``timeout`` bounds connecting and each read (http.client's socket timeout)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read(MAX_BODY)
        return response.status
    except http.client.HTTPException as exc:
        raise OSError(f"{redact(url)}: {type(exc).__name__}") from exc
    finally:
        conn.close()
