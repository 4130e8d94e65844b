"""Revocation awareness: check rotatord's own certificates against their CA's CRL on a
schedule, and rotate at once to a fresh key when one is listed.

Every ``[revocation] interval`` (default 6 h; first check at start-up) each service's current
certificate is looked up in the CRLs of its distribution points plus ``crl_urls`` (each CRL
fetched once per cycle). A listed certificate is audited (``revocation_detected``), replaced
by a forced rotation with a new key (trigger ``revoked``, no rollback to the revoked pair), and
its key destroyed once the new pair is live — the same end as ``rotatord revoke``.

Rules: a CRL counts only if its signature verifies with the certificate's issuer (``issuing.
crl``); a failed fetch is logged, never an error of the service; one attempt per revoked
serial per ``min_order_interval`` (a failing rotation is retried by its own ladder too).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cryptography import x509

from rotatord.core import keys
from rotatord.core.errors import RotatordError
from rotatord.core.model import Config, Trigger
from rotatord.daemon.loop import ServiceLoop
from rotatord.issuing.crl import CrlError, crl_urls, fetch, revocation, stale
from rotatord.observe.logging import get_logger
from rotatord.rotation import Installed, Outcome

log = get_logger("rotatord.revocation")


class RevocationChecker:
    def __init__(self, config: Callable[[], Config], loop: ServiceLoop) -> None:
        self._config = config
        self._loop = loop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tried: dict[str, tuple[int, float]] = {}
        self.cycles = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="revocation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception as exc:  # noqa: BLE001 - the checker outlives a bug; logged
                log.error("revocation_check_failed", error=str(exc), error_type=type(exc).__name__)
            self._stop.wait(self._config().observe.revocation.interval_seconds)

    def check_once(self) -> list[str]:
        """One cycle; returns the services found revoked."""
        cfg = self._config()
        spec = cfg.observe.revocation
        if not spec.enabled:
            return []
        cache: dict[str, x509.CertificateRevocationList | None] = {}
        found = []
        for name in list(cfg.services):
            if self._stop.is_set() or self._loop.stopping:
                break
            try:
                installed = self._loop.rotator.installed(name)
            except (RotatordError, OSError):
                continue
            if installed is not None and self._check(name, installed, spec.crl_urls, cache):
                found.append(name)
        self.cycles += 1
        return found

    def _crl(
        self, url: str, cache: dict[str, Any], timeout: float
    ) -> x509.CertificateRevocationList | None:
        if url not in cache:
            try:
                cache[url] = fetch(url, timeout)
            except CrlError as exc:
                log.warning("crl_fetch_failed", url=url, error=str(exc))
                cache[url] = None
            else:
                if stale(cache[url], self._loop.clock.now()):
                    log.warning("crl_stale", url=url)
        crl: x509.CertificateRevocationList | None = cache[url]
        return crl

    def _check(
        self, name: str, installed: Installed, extra: tuple[str, ...], cache: dict[str, Any]
    ) -> bool:
        leaf = keys.split_pem_chain(installed.bundle.cert_pem)[0]
        issuers = [
            c for c in keys.split_pem_chain(installed.bundle.chain_pem) if c.subject == leaf.issuer
        ]
        if not issuers:
            return False
        timeout = self._config().observe.revocation.timeout_seconds
        for url in dict.fromkeys([*crl_urls(leaf), *extra]):
            crl = self._crl(url, cache, timeout)
            if crl is None:
                continue
            try:
                entry = revocation(crl, leaf, issuers[0])
            except CrlError as exc:
                log.debug("crl_not_applicable", service=name, url=url, error=str(exc))
                continue
            if entry is None:
                continue
            self._rotate(name, installed, url, entry.reason, entry.revoked_at.isoformat())
            return True
        return False

    def _rotate(
        self, name: str, installed: Installed, url: str, reason: str | None, at: str
    ) -> None:
        loop = self._loop
        serial = installed.info.serial
        floor = loop.rotator.config.daemon.min_order_interval.total_seconds()
        last = self._tried.get(name)
        now = loop.clock.monotonic()
        if last is not None and last[0] == serial and now - last[1] < floor:
            return
        self._tried[name] = (serial, now)
        try:
            loop.audit.emit(
                "revocation_detected",
                service=name,
                trigger=Trigger.REVOKED.value,
                serial=installed.info.serial_hex,
                version=installed.version.name,
                crl_url=url,
                reason=reason,
                revoked_at=at,
            )
            result = loop.rotator.rotate_batch(
                [name], trigger=Trigger.REVOKED, force=True, rollback=False, fresh_key=True
            )[0]
            log.warning("revoked_certificate_replaced", service=name, outcome=result.outcome.value)
            if result.outcome is Outcome.ROTATED:
                store = loop.rotator.plain_store(name)
                version = installed.version
                with store.lock():
                    if store.current_version() != version and version.path.exists():
                        store.destroy_version(version)
                        loop.audit.emit(
                            "key_destroyed", service=name, version=version.name, why="revoked"
                        )
        except RotatordError as exc:
            log.error("revocation_rotation_failed", service=name, error=str(exc))
        finally:
            loop.schedule_next(name)
