"""Planning: when each service's next automatic run is, from the pure policy plus what the CA's
renewal information (ARI, RFC 9773) suggests.

``Planner.plan`` is what the scheduler, the simulator and ``status`` all use, so what status
says is what will happen. The loop's invariants live in ``core.policy.plan_next``; this module
only gathers its inputs (installed certificate, ARI window, status history, budget).

Rules: no scheduling, no rotation here; ARI queries never run for an expired or foreign
certificate; one warning per account per minute, not one per service.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotatord.clock import Clock
from rotatord.core import policy
from rotatord.core.errors import IssuanceError
from rotatord.core.model import ServiceSpec
from rotatord.observe.logging import get_logger
from rotatord.rotation import Installed, Rotator
from rotatord.rotation.issue import history

log = get_logger("rotatord.planner")

Plan = policy.Plan
# Without an ARI answer nothing outside the daemon changes a plan but the disk and the config
# (both re-plan when rotatord changes them; a hot reload re-plans too), so this only bounds how
# long an edit made behind rotatord's back goes unnoticed. A wall-clock step or a suspend is
# not what it guards against: the scheduler re-reads the clock at each wake-up. With ARI, the
# CA's Retry-After decides (``policy.ari_recheck``, at most a day).
RECHECK_AT_LEAST = timedelta(hours=24)


@dataclass
class AriState:
    cert_id: str
    window: tuple[datetime, datetime] | None
    chosen: datetime | None
    next_check: datetime | None
    explanation_url: str | None = None


class Planner:
    def __init__(self, rotator: Rotator, clock: Clock, rng: random.Random | None = None) -> None:
        self.rotator = rotator
        self.clock = clock
        self._rng = rng or random.SystemRandom()
        self._lock = threading.Lock()
        self.ari: dict[str, AriState] = {}
        self.planned: dict[str, Plan] = {}
        self._ari_warned: dict[str, datetime] = {}
        self._clamp_warned: set[tuple[str, int]] = set()

    def forget(self, name: str) -> None:
        with self._lock:
            self.planned.pop(name, None)
            self.ari.pop(name, None)

    def remember(self, name: str, plan: Plan) -> None:
        with self._lock:
            self.planned[name] = plan

    def planned_for(self, name: str) -> tuple[Plan | None, AriState | None]:
        with self._lock:
            return self.planned.get(name), self.ari.get(name)

    def plan(self, name: str, *, ignore_retry: bool = False, ask_ca: bool = True) -> Plan:
        """The service's next run. ``ask_ca=False`` plans from local state only (and whatever
        renewal information is already known): what start-up does for every service before
        READY, so that READY never waits on the CA; the start-up batch then plans again with
        the CA's ARI answers."""
        r = self.rotator
        spec = r.spec(name)
        store = r.plain_store(name)
        installed = r.installed(name)
        now = self.clock.now()
        if ask_ca:
            ari_time, ari_check = self._ari_time(spec, installed, now)
        else:
            ari_time, ari_check = self._known_ari(spec, installed, now)
        decision = r.decision(spec, installed, now, ari_time)
        if installed is not None and policy.renew_before_clamped(
            installed.info.lifetime, spec.renew_before
        ):
            self._warn_clamped(spec, installed)
        budget_at = None
        if decision.due:
            limits = r.config.acme[spec.account].budget
            budget_at = r.ledger.free_at(spec.account, spec.domains, limits, now)
        plan = policy.plan_next(
            decision,
            history(r.book.get(store), r.ledger.last_order(spec.account, name)),
            now,
            floor=r.config.daemon.min_order_interval,
            budget_free_at=budget_at,
            ignore_retry=ignore_retry,
        )
        if decision.due:
            return Plan(plan.at, plan.why, ari_time)
        at, why = plan.at, plan.why
        if ari_check is not None and ari_check < at:
            at, why = ari_check, "ari_recheck"
        if at > now + RECHECK_AT_LEAST:
            at, why = now + RECHECK_AT_LEAST, "recheck"
        return Plan(at, why, ari_time)

    def _warn_clamped(self, spec: ServiceSpec, installed: Installed) -> None:
        """Once per certificate: its ``renew_before`` is too long for it and was clamped."""
        key = (spec.name, installed.info.serial)
        with self._lock:
            if key in self._clamp_warned:
                return
            self._clamp_warned.add(key)
        lifetime = installed.info.lifetime
        self.rotator.audit.emit(
            "config_warning",
            service=spec.name,
            key=f"services.{spec.name}.renew_before",
            problem=policy.clamp_message(spec.renew_before, lifetime),
            lifetime_s=int(lifetime.total_seconds()),
            threshold_s=int(policy.renew_threshold(lifetime, spec.renew_before).total_seconds()),
        )

    def _known_ari(
        self, spec: ServiceSpec, installed: Installed | None, now: datetime
    ) -> tuple[datetime | None, datetime | None]:
        """What ``_ari_time`` would say without asking the CA: the known answer for this
        certificate, if any (after a restart: none yet)."""
        if installed is None or now >= installed.info.not_after:
            return None, None
        with self._lock:
            st = self.ari.get(spec.name)
        if st is None or st.cert_id != installed.info.ari_id:
            return None, None
        return st.chosen, st.next_check

    def _ari_time(
        self, spec: ServiceSpec, installed: Installed | None, now: datetime
    ) -> tuple[datetime | None, datetime | None]:
        """(the time ARI suggests, when to ask again); (None, None) when ARI does not apply."""
        if installed is None:
            return None, None
        if now >= installed.info.not_after:
            return None, None  # RFC 9773: never query an expired certificate
        # Ask the CA that issued it (CA fallback: maybe not the service's first account).
        issued_by = installed.bundle.meta.account
        issuer = self.rotator.issuer(issued_by if issued_by in spec.accounts else spec.account)
        if installed.bundle.meta.directory != issuer.directory_url:
            return None, None  # another CA issued it; config drift renews it anyway
        cert_id = installed.info.ari_id
        if cert_id is None:
            return None, None
        with self._lock:
            st = self.ari.get(spec.name)
        if st is not None and st.cert_id == cert_id and st.next_check and now < st.next_check:
            return st.chosen, st.next_check
        try:
            ri = issuer.renewal_info(cert_id)
        except IssuanceError as exc:
            # Spread the re-checks (up to +10 %) so a fleet that failed together does not
            # come back together, and warn once a minute per account, not once per service.
            next_check = now + policy.ARI_ERROR_RECHECK * (1 + 0.1 * self._rng.random())
            chosen = st.chosen if st is not None and st.cert_id == cert_id else None
            with self._lock:
                self.ari[spec.name] = AriState(cert_id, None, chosen, next_check)
                last = self._ari_warned.get(spec.account)
                warn = last is None or now - last >= timedelta(minutes=1)
                if warn:
                    self._ari_warned[spec.account] = now
            (log.warning if warn else log.debug)(
                "renewal_info_failed", service=spec.name, account=spec.account, error=str(exc)
            )
            return chosen, next_check
        if ri is None:
            with self._lock:
                self.ari[spec.name] = AriState(cert_id, None, None, now + RECHECK_AT_LEAST)
            return None, None
        window = (ri.start, ri.end)
        if st is not None and st.cert_id == cert_id and st.window == window and st.chosen:
            chosen = st.chosen
        else:
            chosen = policy.ari_pick(ri.start, ri.end, self._rng.random())
            self.rotator.audit.emit(
                "renewal_info",
                service=spec.name,
                cert_id=cert_id,
                window_start=ri.start.isoformat(),
                window_end=ri.end.isoformat(),
                chosen=chosen.isoformat(),
                explanation_url=ri.explanation_url,
            )
        next_check = policy.ari_recheck(now, ri.retry_after)
        with self._lock:
            self.ari[spec.name] = AriState(cert_id, window, chosen, next_check, ri.explanation_url)
        return chosen, next_check
