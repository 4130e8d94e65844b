"""Live TLS probe: connect to an endpoint and compare the leaf it serves with what we installed.

A reload that "succeeds" but leaves the old certificate in memory is the failure no ACME client
catches; this does, by fingerprint, retrying with backoff until a deadline (servers reload
workers gracefully, so the new certificate may take a moment to appear).

Rules: compare fingerprints only, never trust decisions (the probe does not validate the chain:
the store already did); connect only where the config says.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass
from typing import Protocol

from rotatord.clock import Clock
from rotatord.core.model import ProbeSpec


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    endpoint: str
    served_fingerprint: str | None
    attempts: int
    error: str | None = None
    elapsed_ms: float = 0.0


class Prober(Protocol):
    """Contract: returns within ``deadline_s`` (plus one connect timeout); ``ok`` only when the
    endpoint served a leaf whose SHA-256 fingerprint equals ``expected``."""

    def probe(self, spec: ProbeSpec, sni: str, expected: str, deadline_s: float) -> ProbeResult: ...


def describe(spec: ProbeSpec) -> str:
    return f"unix:{spec.unix_socket}" if spec.unix_socket else f"{spec.host}:{spec.port}"


def fetch_leaf_der(spec: ProbeSpec, sni: str, timeout: float) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we compare fingerprints; trust was checked before install
    if spec.unix_socket is not None:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(timeout)
        try:
            raw.connect(str(spec.unix_socket))
        except OSError:
            raw.close()
            raise
    else:
        assert spec.host is not None and spec.port is not None
        raw = socket.create_connection((spec.host, spec.port), timeout=timeout)
    with raw, ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("no peer certificate")
    return der


# Servers hand over to new workers gracefully: one handshake with the new certificate does not
# mean the old workers stopped accepting. Several in a row make "the reload is done" likely.
CONSECUTIVE = 3


class TlsProber:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def probe(self, spec: ProbeSpec, sni: str, expected: str, deadline_s: float) -> ProbeResult:
        start = self._clock.monotonic()
        deadline = start + deadline_s
        attempts = 0
        delay = 0.01
        served: str | None = None
        error: str | None = None
        consecutive = 0
        while True:
            attempts += 1
            remaining = deadline - self._clock.monotonic()
            try:
                der = fetch_leaf_der(spec, sni, timeout=max(0.2, min(3.0, remaining)))
                served = hashlib.sha256(der).hexdigest()
                error = None if served == expected else "served a different certificate"
            except (OSError, ssl.SSLError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                consecutive += 1
            else:
                consecutive = 0
            if consecutive >= CONSECUTIVE:
                return ProbeResult(
                    True,
                    describe(spec),
                    served,
                    attempts,
                    None,
                    (self._clock.monotonic() - start) * 1000,
                )
            if error is None:
                continue  # matched: confirm with another handshake straight away
            if self._clock.monotonic() + delay > deadline:
                return ProbeResult(
                    False,
                    describe(spec),
                    served,
                    attempts,
                    error,
                    (self._clock.monotonic() - start) * 1000,
                )
            self._clock.sleep(delay)
            # Capped at 50 ms: a handshake is cheap, and every ms of backoff after the server
            # switched is added to the rotation (bench/reload_latency.py measured 45 ms at 0.5 s).
            delay = min(delay * 2, 0.05)
