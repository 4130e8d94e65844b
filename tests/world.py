"""A whole rotation world behind the ports, for unit tests and the simulator: the real
``Rotator``, ``Planner`` and ``ServiceLoop`` over a real store in a temp dir, with the fake CA,
a recording reloader, a fake prober, a recording audit sink, a fault-injecting FsOps and a
fake clock.

What this covers is also covered once against the real parts (Pebble, nginx) in the e2e tests.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rotatord.clock import FakeClock
from rotatord.core.model import (
    AcmeSpec,
    BudgetLimits,
    CommandReload,
    Config,
    DaemonSpec,
    Http01Standalone,
    ProbeSpec,
    ReloadTarget,
    ServiceSpec,
)
from rotatord.daemon.loop import ServiceLoop
from rotatord.daemon.planner import Planner
from rotatord.rotation import Rotator
from tests.fakes import (
    DEFAULT_DIRECTORY,
    FakeCA,
    FakeProber,
    FaultyFsOps,
    RecordingReloader,
    served_from_reloader,
)

ACCOUNT = "ca"


class RecordingAudit:
    """An ``AuditSink`` that keeps every record in memory (and can be made to fail)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.records.append({"event": event, **fields})

    def events(self, event: str, service: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                r
                for r in self.records
                if r["event"] == event and (service is None or r.get("service") == service)
            ]


def service(
    name: str,
    *,
    targets: Sequence[str] = (),
    own_reload: bool = True,
    probe: bool = True,
    renew_before: timedelta | None = None,
    names: int = 2,
) -> ServiceSpec:
    domains = tuple(f"{name}{i}.example.test" for i in range(names))
    return ServiceSpec(
        name=name,
        domains=domains,
        account=ACCOUNT,
        challenge=Http01Standalone("127.0.0.1", 1),
        reload=(CommandReload(("reload", name)),) if own_reload else (),
        reload_targets=tuple(targets),
        probes=(ProbeSpec(host="127.0.0.1", port=1, sni=domains[0]),) if probe else (),
        renew_before=renew_before,
    )


def make_config(
    state: Path,
    services: Sequence[ServiceSpec],
    *,
    targets: Sequence[str] = (),
    budget: BudgetLimits | None = None,
    ladder: Sequence[timedelta] | None = None,
    min_order_interval: timedelta = timedelta(minutes=1),
) -> Config:
    daemon = DaemonSpec(
        state_dir=state,
        audit_log=state / "audit.jsonl",
        control_socket=state / "ctl.sock",
        min_order_interval=min_order_interval,
        max_concurrent=1,
    )
    if ladder is not None:
        daemon = DaemonSpec(**{**daemon.__dict__, "retry_ladder": tuple(ladder)})
    acme = AcmeSpec(ACCOUNT, DEFAULT_DIRECTORY, budget=budget or BudgetLimits())
    return Config(
        source=state / "rotatord.toml",
        daemon=daemon,
        acme=MappingProxyType({ACCOUNT: acme}),
        services=MappingProxyType({s.name: s for s in services}),
        reload_targets=MappingProxyType(
            {t: ReloadTarget(t, (CommandReload(("reload-target", t)),)) for t in targets}
        ),
    )


@dataclass
class World:
    config: Config
    clock: FakeClock
    ca: FakeCA
    reloader: RecordingReloader
    prober: FakeProber
    audit: RecordingAudit
    ops: FaultyFsOps
    rotator: Rotator = field(init=False)

    def __post_init__(self) -> None:
        self.rotator = self.new_rotator()

    def new_rotator(self) -> Rotator:
        """A fresh rotator on the same disk, CA and servers: what a restart builds."""
        return Rotator(
            self.config,
            clock=self.clock,
            audit=self.audit,
            issuer_for=lambda _account: self.ca,
            reloader=self.reloader,
            prober=self.prober,
            ops=self.ops,
        )

    def restart(self) -> Rotator:
        self.rotator = self.new_rotator()
        return self.rotator


def make_world(
    state: Path,
    services: Sequence[ServiceSpec],
    *,
    start: datetime | None = None,
    lifetime: timedelta = timedelta(days=90),
    **config_kw: Any,
) -> World:
    clock = FakeClock(start) if start is not None else FakeClock()
    reloader = RecordingReloader()
    return World(
        config=make_config(state, services, **config_kw),
        clock=clock,
        ca=FakeCA(clock, lifetime),
        reloader=reloader,
        prober=FakeProber(served_from_reloader(reloader)),
        audit=RecordingAudit(),
        ops=FaultyFsOps(),
    )


class EventLoop:
    """A single-threaded scheduler on the fake clock: what APScheduler is in the daemon."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._heap: list[tuple[datetime, int, str, Callable[[], None]]] = []
        self._pending: dict[str, int] = {}
        self._seq = itertools.count()

    def schedule(self, name: str, at: datetime, _trigger: str, run: Callable[[], None]) -> None:
        seq = next(self._seq)
        self._pending[name] = seq  # replace_existing: only the newest job of a name runs
        heapq.heappush(self._heap, (at, seq, name, run))

    def next_time(self) -> datetime | None:
        while self._heap and self._pending.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def run_next(self) -> bool:
        """Advance the clock to the next job (never backwards) and run it."""
        at = self.next_time()
        if at is None:
            return False
        _, _, name, run = heapq.heappop(self._heap)
        del self._pending[name]
        now = self.clock.now()
        if at > now:
            self.clock.advance(at - now)
        run()
        return True

    def clear(self) -> None:
        self._heap.clear()
        self._pending.clear()


def make_loop(world: World, events: EventLoop, rng: random.Random | None = None) -> ServiceLoop:
    planner = Planner(world.rotator, world.clock, rng or random.Random(0))
    holder: list[ServiceLoop] = []

    def schedule(name: str, at: datetime, trigger: str) -> None:
        events.schedule(name, at, trigger, lambda: holder[0].job(name, trigger))

    def submit(job_id: str, fn: Callable[[], None]) -> None:
        events.schedule(job_id, world.clock.now(), "", fn)

    loop = ServiceLoop(world.rotator, planner, world.clock, world.audit, schedule, submit)
    holder.append(loop)
    return loop
