"""Watching certificates rotatord does not issue: ``[watch.<name>]`` files and TLS endpoints.

A thread checks each entry every ``interval`` (a file: parse its first PEM certificate; an
endpoint: one TLS handshake with the configured SNI, no trust decision — only what is served
matters), keeps the last result in memory, and wakes the checker, whose alert engine turns
results into ``expiring`` / ``mismatch`` / ``watch_failed`` alerts (and ``resolved``), while the
metrics read them as ``rotatord_certificate_*{issuer_name="watch"}``.

Rules: connect only where the config says; never follow a symlink to a watched file; a check
never raises out of the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from rotatord.clock import Clock
from rotatord.core import keys
from rotatord.core.errors import StoreError
from rotatord.core.model import ProbeSpec
from rotatord.core.observing import WatchSpec
from rotatord.deploy.probe import fetch_leaf_der
from rotatord.fsutil import read_file_nofollow
from rotatord.observe.logging import get_logger

log = get_logger("rotatord.watch")

MAX_WAIT = 60.0


@dataclass(frozen=True)
class WatchResult:
    name: str
    checked_at: datetime
    not_before: datetime | None = None
    not_after: datetime | None = None
    names: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # configured names the certificate does not cover
    error: str | None = None
    failures: int = 0

    def doc(self) -> dict[str, Any]:
        """The status-like document the metrics collector reads."""
        return {
            "service": self.name,
            "account": "watch",
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "failures": self.failures,
            "last_result": None,
            "status_persisted": True,
        }


def covers(names: tuple[str, ...], wanted: str) -> bool:
    """RFC 6125 matching of a DNS name against SANs: exact, or one wildcard left-most label."""
    wanted = wanted.lower()
    for n in names:
        if n == wanted:
            return True
        if n.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == n[2:]:
            return True
    return False


def check(spec: WatchSpec, now: datetime, previous: WatchResult | None = None) -> WatchResult:
    try:
        if spec.file is not None:
            chain = keys.split_pem_chain(read_file_nofollow(spec.file))
            if not chain:
                raise ValueError("no PEM certificate in the file")
            cert = chain[0]
        else:
            probe = ProbeSpec(host=spec.host, port=spec.port)
            der = fetch_leaf_der(probe, spec.sni or spec.host or "", spec.timeout_seconds)
            cert = x509.load_der_x509_certificate(der)
        info = keys.cert_info(cert)
    except (OSError, ValueError, StoreError) as exc:
        failures = (previous.failures if previous else 0) + 1
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return WatchResult(spec.name, now, error=reason[:300], failures=failures)
    missing = tuple(n for n in spec.names if not covers(info.names, n))
    return WatchResult(spec.name, now, info.not_before, info.not_after, info.names, missing)


class Watcher:
    def __init__(
        self,
        specs: Callable[[], tuple[WatchSpec, ...]],
        clock: Clock,
        on_result: Callable[[], None] = lambda: None,
    ) -> None:
        self._specs = specs
        self._clock = clock
        self.on_result = on_result
        self._lock = threading.Lock()
        self.results: dict[str, WatchResult] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def docs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.doc() for r in self.results.values() if r.checked_at]

    def snapshot(self) -> dict[str, WatchResult]:
        with self._lock:
            return dict(self.results)

    def check_due(self) -> float:
        """Check every entry whose interval has passed; seconds until the next is due."""
        specs = self._specs()
        with self._lock:
            for name in set(self.results) - {s.name for s in specs}:
                del self.results[name]  # no longer watched
        waits = [MAX_WAIT]
        changed = False
        for spec in specs:
            now = self._clock.now()
            with self._lock:
                last = self.results.get(spec.name)
            every = timedelta(seconds=spec.interval_seconds)
            if last is None or now - last.checked_at >= every:
                result = check(spec, now, last)
                if result.error:
                    log.warning("watch_check_failed", watch=spec.name, error=result.error)
                with self._lock:
                    self.results[spec.name] = result
                changed = True
                waits.append(spec.interval_seconds)
            else:
                waits.append((last.checked_at + every - now).total_seconds())
        if changed:
            self.on_result()
        return max(0.0, min(waits))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="observe-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = MAX_WAIT
            try:
                wait = self.check_due()
            except Exception as exc:  # noqa: BLE001 - the watcher outlives a bug; logged
                log.error("watch_failed", error=str(exc), error_type=type(exc).__name__)
            self._stop.wait(wait)
