"""One pending job per service on APScheduler 3.x. The only module that imports apscheduler.

``misfire_grace_time=None`` because APScheduler 3 silently skips a job that fires late (after a
suspend, a busy pool, a slow start) unless told that any lateness is fine; for renewals late is
always better than never. ``coalesce`` and ``max_instances=1`` keep one run per service. The pool
size bounds concurrent renewals, and a slow service only occupies one worker, so it never delays
the others beyond the pool's capacity.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler


class Scheduler:
    def __init__(self, max_workers: int, run: Callable[[str, str], None]) -> None:
        self._run = run
        # Jobs reschedule themselves when they finish. APScheduler's shutdown(wait=True) holds
        # its own lock while joining the workers, so a job calling add_job then would deadlock
        # it; this lock and flag make (re)scheduling a no-op once shutdown has begun.
        self._lock = threading.Lock()
        self._closing = False
        self._sched = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=max_workers)},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )

    def start(self) -> None:
        self._sched.start()

    def schedule(self, name: str, at: datetime, trigger: str) -> None:
        """(Re)place the service's one pending job at ``at``; a past ``at`` runs at once."""
        with self._lock:
            if self._closing:
                return
            self._sched.add_job(
                self._run,
                trigger="date",
                run_date=at,
                id=name,
                name=name,
                args=[name, trigger],
                replace_existing=True,
            )

    def submit(self, job_id: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` once, as soon as a worker is free."""
        with self._lock:
            if self._closing:
                return
            self._sched.add_job(fn, trigger="date", id=job_id, name=job_id, replace_existing=True)

    def remove(self, name: str) -> None:
        with self._lock:
            if self._closing:
                return
            job = self._sched.get_job(name)
            if job is not None:
                job.remove()

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking new jobs; with ``wait`` let in-flight rotations finish."""
        with self._lock:
            self._closing = True
        if self._sched.running:
            self._sched.shutdown(wait=wait)
