"""Composition: builds every concrete adapter from a config snapshot.

The one-shot CLI and the long-running daemon both build their ``Rotator`` here, so a rotation
done by ``rotatord rotate`` without a daemon is the same code path as one done by the daemon.
"""

from __future__ import annotations

import threading

from rotatord.clock import Clock, SystemClock
from rotatord.core.errors import UnknownServiceError
from rotatord.core.model import Config
from rotatord.deploy.probe import TlsProber
from rotatord.deploy.reload import SubprocessReloader
from rotatord.issuing import Issuer
from rotatord.issuing.acme_issuer import AcmeIssuer, account_dir
from rotatord.issuing.challenges.solver import Solvers
from rotatord.observe.audit import AuditSink, open_audit
from rotatord.rotation import Rotator


class IssuerCache:
    """One AcmeIssuer per account name, rebuilt when that account's spec changes."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._solvers = Solvers(clock=clock)
        self._issuers: dict[str, AcmeIssuer] = {}
        self._lock = threading.Lock()

    def update_config(self, config: Config) -> None:
        with self._lock:
            self._config = config

    def close(self) -> None:
        """Close lingering HTTP-01 listeners and idle CA connections."""
        self._solvers.close()
        with self._lock:
            issuers = list(self._issuers.values())
        for issuer in issuers:
            issuer.close()

    def __call__(self, account: str) -> Issuer:
        with self._lock:
            spec = self._config.acme.get(account)
            if spec is None:
                raise UnknownServiceError(account)
            issuer = self._issuers.get(account)
            if issuer is None or issuer.spec != spec:
                issuer = AcmeIssuer(
                    spec,
                    account_dir(self._config.daemon.state_dir, account),
                    self._clock,
                    self._solvers,
                )
                self._issuers[account] = issuer
            return issuer


def build_rotator(
    config: Config,
    clock: Clock | None = None,
    *,
    audit: AuditSink | None = None,
    issuers: IssuerCache | None = None,
) -> Rotator:
    clk = clock or SystemClock()
    cache = issuers or IssuerCache(config, clk)
    return Rotator(
        config,
        clock=clk,
        audit=audit or open_audit(config, clk),
        issuer_for=cache,
        reloader=SubprocessReloader(),
        prober=TlsProber(clk),
        on_close=cache.close,
    )
