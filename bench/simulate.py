"""Deterministic simulation of the renewal loop (FoundationDB/TigerBeetle-style).

The real ``Rotator``, ``Planner`` and ``ServiceLoop`` run against a real store in a tmpfs
directory, with the fakes behind the ports (``tests/fakes.py``): a fake CA with random outages,
rate limits with huge Retry-After values, slow and bad responses; storage faults (ENOSPC, EIO,
EROFS) through the FsOps seam; crashes at random points followed by a restart (a new rotator,
planner and loop over the same disk: the in-memory book is lost, as in a real restart); and
clock jumps forward and back. Only the clock and the event order are simulated.

After every step it checks the loop's invariants and counts violations:

- ``runaway_floor``       two automatic orders of one service closer than the floor
- ``runaway_interval``    an automatic order sooner than a tenth of the lifetime after a
                          successful rotation, without an urgent reason
- ``budget``              more certificates for one name set per 7 days, or orders per 3 h,
                          than the account's budget
- ``expired_while_healthy`` a certificate expired although the CA and the disk were healthy
                          for the whole last hour before its expiry
- ``stuck_invalid``       a service without a valid certificate for more than an hour (+ the
                          floor) of continuous health
- ``unfinished``          after a restart's start-up batch, a rotation journal left unfinished
                          while the disk was healthy
- ``stale_consumer``      after a restart's start-up batch on a healthy disk, a consumer not
                          serving the current version
- ``hidden_failure``      a failed rotation that ``status`` does not show

It prints ``service_years=N violations=K seed=S`` (and the violations by name); the same seed
reproduces the same run exactly. ``--sabotage NAME`` removes one guard to show the matching
invariant catches it (the tests in ``tests/test_simulate.py`` do this for each).

    PYTHONPATH=. python3 bench/simulate.py --service-years 1000 --seed 7
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from rotatord.clock import FakeClock
from rotatord.core import policy
from rotatord.core.model import BudgetLimits, Trigger
from rotatord.daemon.loop import ServiceLoop
from rotatord.rotation import journal, service_status
from rotatord.rotation.state import UNFINISHED
from tests.world import EventLoop, World, make_loop, make_world, service

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
YEAR = timedelta(days=365)
SABOTAGES = ("floor", "interval", "budget", "retry_cap", "resume", "status")
# A fleet's mix (cycled over the services, shuffled by the seed): mostly Let's Encrypt's 90 days,
# some 45 and 30, one 6-day ("shortlived") in every twenty.
LIFETIMES = tuple(
    timedelta(days=d)
    for d in (90, 6, 90, 45, 90, 30, 90, 90, 45, 90, 90, 90, 30, 90, 90, 45, 90, 90, 90, 90)
)
URGENT = ("missing", "config_change", "ari_window")


@dataclass(frozen=True)
class Scenario:
    """Which faults a world meets, how often and for how long. ``mixed`` is the default; the
    others concentrate on one fault so that the test removing a guard sees its invariant break
    within a few simulated years (a random mix reaches some conditions only rarely)."""

    weights: tuple[tuple[str, int], ...] = (
        ("ca_down", 3),
        ("rate_limit", 1),
        ("slow", 1),
        ("bad", 1),
        ("disk", 2),
        ("crash", 2),
        ("jump", 1),
        ("backdate", 1),
    )
    mean_gap: timedelta = timedelta(days=3)
    ca_down: tuple[int, ...] = (120, 1800, 7200, 86400, 3 * 86400)  # seconds
    disk_modes: tuple[str, ...] = ("full", "read_only", "eio")
    disk_lengths: tuple[int, ...] = (30, 600, 3600)  # seconds
    backdate_length: timedelta = timedelta(days=1)


SCENARIOS = {
    "mixed": Scenario(),
    # A CA whose certificates are due on arrival, most of the time.
    "backdated": Scenario(
        weights=(("backdate", 1),), mean_gap=timedelta(days=2), backdate_length=timedelta(days=2)
    ),
    # The state disk fills for hours at a time: every certificate issued is thrown away.
    "disk_full": Scenario(
        weights=(("disk", 1),),
        mean_gap=timedelta(days=1),
        disk_modes=("full",),
        disk_lengths=(6 * 3600,),
    ),
    # A CA that, for half a day at a time, issues certificates rotatord must refuse (wrong key,
    # wrong names, already expired): each retry costs one of the CA's duplicate-certificate slots.
    "bad_ca": Scenario(weights=(("bad_period", 1),), mean_gap=timedelta(days=2)),
    # CA outages longer than a short certificate lives.
    "long_outage": Scenario(
        weights=(("ca_down", 1),), mean_gap=timedelta(days=6), ca_down=(5 * 86400,)
    ),
}


class Crash(BaseException):
    """A SIGKILL at this exact point: nothing in rotatord may catch it."""


@dataclass
class Health:
    """Unhealthy periods (CA down/limiting, disk faulty), to judge expiries fairly."""

    spans: list[tuple[datetime, datetime]] = field(default_factory=list)

    def add(self, start: datetime, end: datetime) -> None:
        # Spans ending more than a week before this one began can no longer matter: every
        # question asked is about the last hour or so (expiry) or since a failure began.
        self.spans = [(s, e) for s, e in self.spans if e > start - 7 * DAY]
        self.spans.append((start, end))

    def healthy(self, start: datetime, end: datetime) -> bool:
        return not any(s < end and e > start for s, e in self.spans)

    def healthy_since(self, now: datetime) -> datetime:
        """Since when everything has been healthy (``now`` while something is not)."""
        ends = [min(e, now) for s, e in self.spans if s <= now]
        return max(ends, default=datetime.min.replace(tzinfo=UTC))


@dataclass
class Stats:
    violations: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    crashes: int = 0
    rotations: int = 0
    orders: int = 0

    def flag(self, name: str, detail: str) -> None:
        self.violations[name] += 1
        self.examples.setdefault(name, detail)


class Simulation:
    def __init__(
        self,
        seed: int,
        services: int,
        root: Path,
        sabotage: str | None,
        scenario: Scenario = SCENARIOS["mixed"],
    ) -> None:
        self.scenario = scenario
        self.rng = random.Random(seed)
        # Crash points draw from their own stream: how many writes a rotation makes must not
        # shift the fault schedule, so one seed meets the same outages whatever rotatord does.
        self.crash_rng = random.Random(seed ^ 0x5EED_C4A5)
        self.seed = seed
        self.root = root
        start = datetime(2026, 1, 1, tzinfo=UTC)
        # Several names, its own reload and one or two shared targets per service, like
        # production, and a fleet's mix of lifetimes (LIFETIMES).
        specs = [
            service(f"s{i:02d}", targets=["nginx", "haproxy"][: 1 + i % 2], names=2 + i % 2)
            for i in range(services)
        ]
        self.world: World = make_world(
            root, specs, start=start, targets=["nginx", "haproxy"], budget=BudgetLimits()
        )
        self.world.ca.seed_serials(self.rng.getrandbits(61))
        # The checks read status and the disk, never the audit records: keep only the latest
        # (a century of records would only make every garbage collection slower).
        self.world.audit.records = deque(maxlen=10_000)  # type: ignore[assignment]
        mix = [LIFETIMES[i % len(LIFETIMES)] for i in range(services)]
        self.rng.shuffle(mix)
        for spec, lifetime in zip(specs, mix, strict=True):
            self.world.ca.lifetimes[spec.domains[0]] = lifetime
        self.clock: FakeClock = self.world.clock
        self.health = Health()
        self.stats = Stats()
        self.sabotage = sabotage
        self.events = EventLoop(self.clock)
        self.loop: ServiceLoop = make_loop(self.world, self.events, random.Random(seed))
        self.names = [s.name for s in specs]
        self.faults_until: dict[str, datetime] = {}
        self.next_fault = start + self._gap()
        self.last_order: dict[str, tuple[datetime, bool]] = {}  # (at, automatic)
        self.last_success: dict[str, tuple[datetime, timedelta]] = {}
        self.invalid_since: dict[str, datetime] = {}
        self.checked_expiry: set[int] = set()
        # What each service has installed: (serial, not_before, not_after) or None. Only a
        # rotation or a restart (recovery, resumption) changes the disk; both refresh it.
        self.installed: dict[str, tuple[int, datetime, datetime] | None] = {}
        self._orders_seen = 0
        self._dirty = True
        self._wake_at = start
        self._order_times: deque[datetime] = deque()
        self._cert_times: dict[tuple[str, ...], deque[datetime]] = defaultdict(deque)
        self.crash_armed = False
        self._current: tuple[Any, bool] | None = None
        self._wire()

    # ------------------------------------------------------------------ plumbing

    def _gap(self) -> timedelta:
        """Time to the next fault (exponential, the scenario's mean)."""
        mean = self.scenario.mean_gap.total_seconds()
        return timedelta(seconds=self.rng.expovariate(1 / mean))

    def _wire(self) -> None:
        ca, reloader, ops = self.world.ca, self.world.reloader, self.world.ops
        ca.before_issue = self._before_issue
        reloader.on_run = lambda _a, _e: self._maybe_crash("reload")
        original_fsync = ops.fsync_dir

        def fsync_dir(path: Path) -> None:
            self._maybe_crash("fsync_dir")
            original_fsync(path)

        ops.fsync_dir = fsync_dir  # type: ignore[method-assign]

    def _before_issue(self, _number: int) -> None:
        self._maybe_crash("order")
        self.stats.orders += 1
        if self._current is not None:
            ctx, automatic = self._current
            self._check_order(ctx.spec.name, self.clock.now(), automatic, ctx.reason)

    def _maybe_crash(self, where: str) -> None:
        if self.crash_armed and self.crash_rng.random() < 0.35:
            self.crash_armed = False
            raise Crash(where)

    # ------------------------------------------------------------------ faults

    def _fault(self) -> None:
        self._dirty = True  # a clock jump may change what is valid
        now = self.clock.now()
        sc = self.scenario
        kind = self.rng.choices([k for k, _ in sc.weights], weights=[w for _, w in sc.weights])[0]
        ca, ops = self.world.ca, self.world.ops
        if kind == "ca_down":
            length = timedelta(seconds=self.rng.choice(sc.ca_down))
            ca.down = True
            self.faults_until["ca_down"] = now + length
            self.health.add(now, now + length)
        elif kind == "rate_limit":
            retry = now + timedelta(seconds=self.rng.choice([60, 3600, 99_999_999]))
            ca.rate_limit(retry)
            end = min(retry, now + DAY)
            self.faults_until["rate_limit"] = end
            self.health.add(now, end)
        elif kind == "slow":
            ca.delay = timedelta(seconds=self.rng.choice([5, 30, 90]))
            self.faults_until["slow"] = now + HOUR
        elif kind == "bad":
            ca.bad = self.rng.choice(["wrong_key", "wrong_names", "expired"])
        elif kind == "bad_period":
            ca.bad_always = self.rng.choice(["wrong_key", "wrong_names", "expired"])
            self.faults_until["bad_period"] = now + timedelta(hours=12)
            self.health.add(now, now + timedelta(hours=12))
        elif kind == "disk":
            mode = self.rng.choice(sc.disk_modes)
            length = timedelta(seconds=self.rng.choice(sc.disk_lengths))
            if mode == "full":
                ops.full = True
            elif mode == "read_only":
                ops.read_only = True
            else:
                ops.eio_at = {"fsync", "rename"}
            self.faults_until["disk"] = now + length
            self.health.add(now, now + length)
        elif kind == "crash":
            self.crash_armed = True
        elif kind == "backdate":
            # A CA whose certificates are due on arrival (backdated far): the loop must not
            # re-order each one at the floor's pace.
            ca.backdate_fraction = 0.75
            self.faults_until["backdate"] = now + sc.backdate_length
        else:
            # A jump forward (suspend/resume) or back (NTP step); the CA shares the clock.
            delta = timedelta(seconds=self.rng.choice([-3600, -60, 60, 3600, 6 * 3600]))
            self.clock.advance(delta)
            if delta > timedelta(0):
                self.health.add(now, now + delta)

    def _heal(self) -> None:
        now = self.clock.now()
        ca, ops = self.world.ca, self.world.ops
        for kind, until in list(self.faults_until.items()):
            if now < until:
                continue
            del self.faults_until[kind]
            if kind == "ca_down":
                ca.down = False
            elif kind == "slow":
                ca.delay = timedelta(0)
            elif kind == "rate_limit":
                ca.rate_limited_until = None
            elif kind == "backdate":
                ca.backdate_fraction = 0.0
            elif kind == "bad_period":
                ca.bad_always = None
            elif kind == "disk":
                ops.full = ops.read_only = False
                ops.eio_at = set()

    # ------------------------------------------------------------------ running

    def restart(self) -> None:
        """What systemd does after a crash: a new process over the same disk."""
        self.stats.crashes += 1
        self.events.clear()
        self.world.restart()
        self.loop = make_loop(self.world, self.events, random.Random(self.rng.random()))
        try:
            self.loop.batch(list(self.names), Trigger.STARTUP)
        except Crash:
            self.restart()  # crashed again during start-up (at most once: the crash is spent)
            return
        self._refresh(self.names)
        self._check_after_start()

    def _run(self, fn: Any) -> None:
        try:
            fn()
        except Crash:
            self.restart()

    def run(self, years: float, stop_after: int | None = None) -> Stats:
        """Run ``years`` of simulated time; stop early once ``stop_after`` violations are seen
        (a removed guard can make a run spin: the tests stop at the first catch)."""
        self._run(lambda: self.loop.batch(list(self.names), Trigger.STARTUP))
        self._refresh(self.names)
        end = self.clock.now() + years * YEAR
        instrumented = self._instrument()
        with instrumented:
            while self.clock.now() < end:
                if stop_after is not None and sum(self.stats.violations.values()) >= stop_after:
                    break
                job_at = self.events.next_time()
                fault_at = min([self.next_fault, *self.faults_until.values()])
                if job_at is None or fault_at < job_at:
                    if fault_at > self.clock.now():
                        self.clock.advance(fault_at - self.clock.now())
                    self._heal()
                    if fault_at == self.next_fault:
                        self._fault()
                        self.next_fault = self.clock.now() + self._gap()
                    self._check()
                    continue
                self._heal()
                self._run(self.events.run_next)
                self._check()
        return self.stats

    @contextlib.contextmanager
    def _instrument(self) -> Iterator[None]:
        """Record which service and trigger each order belongs to (the rotator runs one at a
        time here), and each finished rotation."""
        rotator_cls = type(self.world.rotator)
        original = rotator_cls.rotate_batch
        sim = self

        def rotate_batch(self: Any, names: Any, **kw: Any) -> Any:
            trigger = kw.get("trigger", Trigger.MANUAL)
            automatic = trigger is not Trigger.MANUAL
            # Orders go out one service at a time (max_concurrent = 1): mark each in turn.
            issue_run = self._issue.run

            def run(ctx: Any, force: bool, ari_time: Any) -> None:
                sim._current = (ctx, automatic)
                try:
                    issue_run(ctx, force, ari_time)
                finally:
                    sim._current = None

            self._issue.run = run
            try:
                results = original(self, names, **kw)
            finally:
                self._issue.run = issue_run
            for r in results:
                sim._after_result(r)
            return results

        rotator_cls.rotate_batch = rotate_batch  # type: ignore[method-assign]
        try:
            yield
        finally:
            rotator_cls.rotate_batch = original  # type: ignore[method-assign]

    # ------------------------------------------------------------------ invariants

    def _check_order(self, name: str, now: datetime, automatic: bool, reason: str) -> None:
        floor = self.world.config.daemon.min_order_interval
        prev = self.last_order.get(name)
        if automatic and prev is not None and prev[1] and now - prev[0] < floor:
            self.stats.flag("runaway_floor", f"{name}: orders {prev[0]} and {now}")
        ok = self.last_success.get(name)
        if automatic and ok is not None and not reason.startswith(URGENT):
            at, lifetime = ok
            gap = max(floor, lifetime / 10)  # the rule itself, not policy's (it may be sabotaged)
            if timedelta(0) <= now - at < gap:
                self.stats.flag("runaway_interval", f"{name}: {now - at} after success ({reason})")
        self.last_order[name] = (now, automatic)

    def _refresh(self, names: Any) -> None:
        self._dirty = True
        for name in names:
            found = self.world.rotator.installed(name)
            self.installed[name] = (
                None
                if found is None
                else (found.info.serial, found.info.not_before, found.info.not_after)
            )

    def _after_result(self, r: Any) -> None:
        self._refresh([r.service])
        self.stats.rotations += 1
        if r.outcome.value == "rotated":
            info = self.world.ca.issued[-1]
            lifetime = info.not_valid_after_utc - info.not_valid_before_utc
            self.last_success[r.service] = (self.clock.now(), lifetime)
        if r.outcome.value in ("failed", "rolled_back"):
            st = service_status(self.world.rotator, r.service, self.clock.now())
            if st["failures"] < 1 or st["last_result"] != r.outcome.value:
                self.stats.flag("hidden_failure", f"{r.service}: {r.outcome} shown as {st}")

    def _check(self) -> None:
        now = self.clock.now()
        world = self.world
        limits = world.config.acme["ca"].budget
        new = world.ca.orders[self._orders_seen :]
        self._orders_seen += len(new)
        for o in new:
            self._order_times.append(o.at)
            if o.bad is not None:
                # A bad certificate is the CA failing that attempt: health resumes after it.
                self.health.add(o.at, o.at + timedelta(seconds=1))
            if o.outcome == "issued":
                self._cert_times[tuple(sorted(o.names))].append(o.at)
        orders = self._order_times
        while orders and orders[0] <= now - limits.orders_window - 2 * DAY:
            orders.popleft()
        if new and sum(1 for t in orders if now - limits.orders_window < t <= now) > limits.orders:
            self.stats.flag("budget", f"{len(orders)} orders in {limits.orders_window}")
        for o in new:
            if o.outcome != "issued":
                continue
            certs = self._cert_times[tuple(sorted(o.names))]
            while certs and certs[0] <= now - limits.certificates_window - 2 * DAY:
                certs.popleft()
            if (
                sum(1 for t in certs if now - limits.certificates_window < t <= now)
                > limits.certificates
            ):
                self.stats.flag("budget", f"{len(certs)} certificates for {o.names}")
        if not self._dirty and now < self._wake_at:
            return  # no service's validity can have changed since the last full check
        self._dirty = False
        self._wake_at = now + YEAR
        for name in self.names:
            found = self.installed.get(name)
            valid = found is not None and found[1] <= now < found[2]
            # Look again when this certificate expires, or at once while one is not valid.
            self._wake_at = min(self._wake_at, found[2] if valid and found else now)
            if found is not None and now >= found[2]:
                serial, _, na = found
                if serial not in self.checked_expiry:
                    self.checked_expiry.add(serial)
                    if self.health.healthy(na - HOUR, na) and not self._spent(name, na - HOUR):
                        self.stats.flag("expired_while_healthy", f"{name}: {serial:x} at {na}")
            if valid:
                self.invalid_since.pop(name, None)
            elif self._spent(name, now):
                # The CA's own limit (mirrored by the budget) forbids an order: the deferral is
                # in status; being stuck counts from when an order is allowed again (not from
                # this check: the next one may come only after the limit lifted).
                self.invalid_since[name] = self._spent_until(name, now)
            else:
                # Without a valid certificate for over an hour of *continuous* health: from
                # when it became invalid or the last fault ended, whichever is later.
                since = max(
                    self.invalid_since.setdefault(name, now), self.health.healthy_since(now)
                )
                limit = HOUR + 2 * world.config.daemon.min_order_interval
                if now - since > limit:
                    self.stats.flag("stuck_invalid", f"{name}: no valid certificate since {since}")
                    self.invalid_since[name] = now

    def _spent(self, name: str, at: datetime) -> bool:
        """Whether the CA's limits (the default budget is Let's Encrypt's) forbade an order for
        this service at ``at``: then an expiry is the CA's rule, not the loop's fault."""
        limits = self.world.config.acme["ca"].budget
        names = tuple(sorted(self.world.config.services[name].domains))
        certs = self._cert_times.get(names, ())
        if (
            sum(1 for t in certs if at - limits.certificates_window < t <= at)
            >= limits.certificates
        ):
            return True
        window = at - limits.orders_window
        return sum(1 for t in self._order_times if window < t <= at) >= limits.orders

    def _spent_until(self, name: str, at: datetime) -> datetime:
        """When the CA's limits that forbid an order for ``name`` at ``at`` lift."""
        limits = self.world.config.acme["ca"].budget
        names = tuple(sorted(self.world.config.services[name].domains))
        until = at
        for times, limit, window in (
            (self._cert_times.get(names, ()), limits.certificates, limits.certificates_window),
            (self._order_times, limits.orders, limits.orders_window),
        ):
            recent = sorted(t for t in times if at - window < t <= at)
            if len(recent) >= limit:
                until = max(until, recent[len(recent) - limit] + window)
        return until

    def _check_after_start(self) -> None:
        now = self.clock.now()
        if self.faults_until.get("disk") is not None:
            return
        for name in self.names:
            store = self.world.rotator.plain_store(name)
            entry = journal.read(store)
            if entry is not None and entry.phase in UNFINISHED:
                self.stats.flag("unfinished", f"{name}: {entry.phase} at {now}")
            current = store.current_version()
            served = self.world.reloader.served_version.get(name)
            if current is not None and served is not None and served != current.name:
                self.stats.flag("stale_consumer", f"{name}: serves {served}, current {current}")


# ---------------------------------------------------------------------------- sabotage


@contextlib.contextmanager
def sabotaged(name: str | None) -> Iterator[None]:
    """Remove one guard (for the tests that prove each invariant is checked)."""
    import rotatord.daemon.loop as loop_mod
    import rotatord.rotation.failure as failure_mod

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, attr: str, value: Any) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    if name == "floor":
        real_plan = policy.plan_next
        patch(policy, "next_attempt", lambda f, now, *a, **k: now + timedelta(seconds=1))
        patch(
            policy,
            "plan_next",
            lambda d, h, now, **k: real_plan(d, h, now, **{**k, "floor": timedelta(0)}),
        )
    elif name == "interval":
        patch(policy, "min_order_interval", lambda lifetime, floor=None: timedelta(0))
    elif name == "budget":
        patch(policy, "budget_free_at", lambda *a, **k: None)
    elif name == "retry_cap":
        # The old rule: retries stretch to the ladder's 6 h step once expired.
        patch(policy, "INVALID_RETRY_CAP", timedelta(hours=6))
    elif name == "resume":
        patch(loop_mod, "resume", lambda rotator, names: [])
    elif name == "status":
        original = failure_mod.record_failure

        def forgetful(ctx: Any, exc: Any, outcome: Any, **kw: Any) -> Any:
            result = original(ctx, exc, outcome, **kw)
            kw["book"].update(ctx.store, failures=0, last_result="rotated")
            return result

        patch(failure_mod, "record_failure", forgetful)
        import rotatord.rotation.rotator as rotator_mod

        patch(rotator_mod, "record_failure", forgetful)
    try:
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


# ---------------------------------------------------------------------------- entry


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The daemon's info/warning lines would drown the figures: keep errors only, and put the
    logging configuration back afterwards (a test that runs a world in-process must not leave
    every later test's warnings filtered out)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**saved)


def _world(job: tuple[float, int, str, int, str | None, int | None, str]) -> Stats:
    """One world: its own disk, CA and clock; seeded from (seed, index) so it reproduces."""
    years, seed, tag, services, sabotage, stop_after, scenario = job
    with quiet():
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        root = Path(tempfile.mkdtemp(prefix="rt-sim-", dir=base))
        try:
            with sabotaged(sabotage):
                sim = Simulation(seed, services, root / "state", sabotage, SCENARIOS[scenario])
                stats = sim.run(years, stop_after)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    stats.examples = {k: f"[{tag}] {v}" for k, v in stats.examples.items()}
    return stats


def simulate(
    service_years: float,
    seed: int,
    services: int = 20,
    sabotage: str | None = None,
    worlds: int = 1,
    jobs: int = 1,
    only: int | None = None,
    stop_after: int | None = None,
    scenario: str = "mixed",
) -> tuple[Stats, float]:
    """``service_years`` split over ``worlds`` independent worlds of ``services`` services, run
    ``jobs`` at a time in separate processes. World ``i`` is seeded from ``(seed, i)``, so the
    result depends on the seed and the number of worlds, never on ``jobs``."""
    years = service_years / services / worlds
    work = [
        (
            years,
            seed if worlds == 1 else _sub_seed(seed, i),
            f"world {i}",
            services,
            sabotage,
            stop_after,
            scenario,
        )
        for i in range(worlds)
    ]
    if only is not None:
        work = [work[only]]
    if jobs <= 1 or worlds == 1:
        results = [_world(w) for w in work]
    else:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(jobs, worlds), mp_context=ctx) as pool:
            results = list(pool.map(_world, work))
    total = Stats()
    for st in results:
        total.violations.update(st.violations)
        for k, v in st.examples.items():
            total.examples.setdefault(k, v)
        total.crashes += st.crashes
        total.rotations += st.rotations
        total.orders += st.orders
    return total, service_years


def _sub_seed(seed: int, index: int) -> int:
    return random.Random(f"{seed}/{index}").randrange(1 << 62)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--service-years", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--services", type=int, default=20, help="services per world")
    parser.add_argument(
        "--worlds", type=int, default=4, help="independent worlds the service-years are split over"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="worlds run at once (processes)"
    )
    parser.add_argument("--sabotage", choices=SABOTAGES, default=None)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed")
    parser.add_argument(
        "--world", type=int, default=None, help="replay only this world (as a violation names it)"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    t0 = time.monotonic()
    stats, years = simulate(
        args.service_years,
        seed,
        args.services,
        args.sabotage,
        args.worlds,
        args.jobs,
        args.world,
        scenario=args.scenario,
    )
    elapsed = time.monotonic() - t0
    total = sum(stats.violations.values())
    shown = years if args.world is None else years / args.worlds
    print(f"service_years={shown:g} violations={total} seed={seed}")
    print(
        f"  rotations={stats.rotations} orders={stats.orders} crashes={stats.crashes} "
        f"elapsed_s={elapsed:.1f}"
    )
    for name, count in sorted(stats.violations.items()):
        print(f"  {name}={count}  e.g. {stats.examples[name]}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
