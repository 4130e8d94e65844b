"""The service loop: run a service when its plan says so, then always plan its next run.

It owns no thread and no scheduler: ``schedule(name, at)`` and ``submit(job_id, fn)`` are given
to it (APScheduler in the daemon, an event heap in ``bench/simulate.py``), so the simulator runs
exactly this code under a fake clock.

Rules: a job never raises (it would kill a scheduler worker and the service would silently stop
being scheduled); a run always ends with the service scheduled again.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from rotatord.clock import Clock
from rotatord.core.errors import RotatordError
from rotatord.core.model import Trigger
from rotatord.daemon.planner import Plan, Planner
from rotatord.observe.audit import AuditSink
from rotatord.observe.logging import get_logger
from rotatord.rotation import Rotator, ShuttingDown, recover_service, resume, unfinished

log = get_logger("rotatord.loop")

Schedule = Callable[[str, datetime, str], None]
Submit = Callable[[str, Callable[[], None]], None]


class ServiceLoop:
    def __init__(
        self,
        rotator: Rotator,
        planner: Planner,
        clock: Clock,
        audit: AuditSink,
        schedule: Schedule,
        submit: Submit,
    ) -> None:
        self.rotator = rotator
        self.planner = planner
        self.clock = clock
        self.audit = audit
        self._schedule = schedule
        self._submit = submit
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        # Services ``start`` recovered: the start-up batch does not recover them again.
        self._recovered: set[str] = set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self, names: Sequence[str]) -> list[str]:
        """Before READY: recover every service, plan it without asking the CA, schedule it.

        Returns the services the start-up batch must take at once (due now, or holding a
        rotation a stop left unfinished): they are planned (``status`` shows when and why) but
        not scheduled, since the batch schedules each when it ends. One pass over the services,
        a few small reads each, nothing sent to the CA, so READY comes in time linear in the
        number of services and independent of the CA.
        """
        pending = set(unfinished(self.rotator, names))
        take: list[str] = []
        for name in names:
            if self.stopping:
                break
            if name not in self.rotator.config.services:
                continue
            try:
                recover_service(self.rotator, name, self.audit, thorough=False)
            except (RotatordError, OSError) as exc:
                log.error("recovery_failed", service=name, error=str(exc))
            self._recovered.add(name)
            plan = self._plan(name, ask_ca=False)
            self.planner.remember(name, plan)
            if plan.at <= self.clock.now() or name in pending:
                take.append(name)
            else:
                self._schedule(name, plan.at, Trigger.SCHEDULE.value)
        return take

    def submit_batch(self, names: Sequence[str], trigger: Trigger) -> None:
        job_id = f"__batch__{next(self._seq)}"
        self._submit(job_id, lambda: self.batch(list(names), trigger))

    def batch(self, names: list[str], trigger: Trigger) -> None:
        """Recover (at start-up), resume unfinished rotations, then rotate every due service of
        ``names`` as one batch (shared reload targets reload once), then schedule each."""
        planned: dict[str, Plan] = {}
        try:
            if trigger is Trigger.STARTUP:
                for name in names:
                    if self.stopping:
                        break
                    if name in self._recovered:
                        self._recovered.discard(name)  # ``start`` did, just before READY
                        continue
                    try:
                        recover_service(self.rotator, name, self.audit, thorough=False)
                    except (RotatordError, OSError) as exc:
                        log.error("recovery_failed", service=name, error=str(exc))
                for r in resume(self.rotator, names):
                    log.info("rotation_resumed", service=r.service, outcome=r.outcome.value)
            due: list[str] = []
            ari: dict[str, datetime | None] = {}
            ignore_retry = trigger is Trigger.CONFIG_CHANGE
            for name in names:
                if self.stopping or name not in self.rotator.config.services:
                    continue
                plan = self._plan(name, ignore_retry=ignore_retry)
                if plan.at <= self.clock.now() or self._newly_held(name, plan):
                    due.append(name)
                    ari[name] = plan.ari_time
                else:
                    planned[name] = plan
            if due and not self.stopping:
                for r in self.rotator.rotate_batch(due, trigger=trigger, ari_times=ari):
                    log.info("batch_rotation", service=r.service, outcome=r.outcome.value)
        except ShuttingDown:
            pass
        except Exception as exc:  # noqa: BLE001 - the batch's services are still scheduled below
            log.error("batch_failed", error=str(exc), error_type=type(exc).__name__)
        finally:
            for name in names:
                self.schedule_next(name, planned.get(name))

    def job(self, name: str, trigger: str) -> None:
        """Scheduler entry: rotate if due, then always plan the next run."""
        if self.stopping:
            return
        known: Plan | None = None
        try:
            if name not in self.rotator.config.services:
                return
            plan = self._plan(name, ignore_retry=trigger == Trigger.CONFIG_CHANGE.value)
            if plan.at <= self.clock.now() or self._newly_held(name, plan):
                trig = Trigger(trigger)
                if trig is Trigger.SCHEDULE and plan.why in ("ari_window", "emergency"):
                    trig = Trigger.ARI  # the CA's window, not our own clock, chose this moment
                result = self.rotator.rotate(name, trigger=trig, ari_time=plan.ari_time)
                log.info(
                    "scheduled_rotation", service=name, outcome=result.outcome.value, why=plan.why
                )
            else:
                known = plan  # nothing ran: the plan just made still holds
        except ShuttingDown:
            return
        except Exception as exc:  # noqa: BLE001 - rotations record their own failures; this is a bug
            log.error("job_failed", service=name, error=str(exc), error_type=type(exc).__name__)
        finally:
            self.schedule_next(name, known)

    def _newly_held(self, name: str, plan: Plan) -> bool:
        """Due, but the budget holds it back, and nobody was told yet: run the rotation anyway,
        so that it records the deferral (``budget_exhausted`` in the audit log and in status)
        without asking the CA; once recorded, the plan just waits for the free slot."""
        if plan.why != "budget_exhausted":
            return False
        status = self.rotator.book.get(self.rotator.plain_store(name))
        return status.deferred != "budget_exhausted"

    def _plan(self, name: str, *, ignore_retry: bool = False, ask_ca: bool = True) -> Plan:
        try:
            return self.planner.plan(name, ignore_retry=ignore_retry, ask_ca=ask_ca)
        except Exception as exc:  # noqa: BLE001 - plan again at the floor, never spin, never stop
            floor = self.rotator.config.daemon.min_order_interval
            log.error("plan_failed", service=name, error=str(exc), error_type=type(exc).__name__)
            return Plan(self.clock.now() + floor, "plan_error")

    def schedule_next(self, name: str, known: Plan | None = None) -> None:
        """Schedule the service's next run; ``known`` is a plan just made for it (not due)."""
        if self.stopping or name not in self.rotator.config.services:
            return
        now = self.clock.now()
        plan = known if known is not None and known.at > now else self._plan(name)
        if plan.at <= now:
            # Still due right after a run: the policy should have said otherwise (a rotation
            # that ran records a failure, an order or a deferral). Never spin: wait the floor.
            floor = self.rotator.config.daemon.min_order_interval
            log.warning("hot_loop_guard", service=name, why=plan.why)
            plan = Plan(now + floor, plan.why, plan.ari_time)
        self.planner.remember(name, plan)
        self._schedule(name, plan.at, Trigger.SCHEDULE.value)
