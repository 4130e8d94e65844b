"""CA fallback inside the control loop on fake time: the switch moves orders to the next CA
without touching the retry ladder, the floor between orders or the per-account budgets."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

from rotatord.core.model import AcmeSpec, BudgetLimits, Trigger
from rotatord.rotation import Rotator, service_status
from tests.fakes import FakeCA
from tests.world import ACCOUNT, EventLoop, make_loop, make_world, service

BACKUP = "backup"


def test_fallback_follows_the_ladder_and_each_account_budget(tmp_path: Path) -> None:
    """Primary CA down, fallback_after = 3: the daemon's own schedule orders at the ladder's
    times (first attempt, +1 min, +10 min) from the primary; the fourth (+100 min, capped at
    1 h while no certificate is valid) goes to the backup and is installed; orders count
    against the account that got them; the backup's certificate is renewed by its lifetime,
    not as config drift."""
    svc = dataclasses.replace(service("a"), fallback_accounts=(BACKUP,), fallback_after=3)
    w = make_world(tmp_path, [svc], budget=BudgetLimits(orders=10))
    backup = FakeCA(w.clock, timedelta(days=30), directory_url="https://backup.test/directory")
    cas = {ACCOUNT: w.ca, BACKUP: backup}
    acme = dict(w.config.acme)
    acme[BACKUP] = AcmeSpec(BACKUP, backup.directory_url, budget=BudgetLimits(orders=10))
    w.config = dataclasses.replace(w.config, acme=MappingProxyType(acme))
    w.rotator = Rotator(
        w.config,
        clock=w.clock,
        audit=w.audit,
        issuer_for=cas.__getitem__,
        reloader=w.reloader,
        prober=w.prober,
        ops=w.ops,
    )
    w.ca.down = True
    events = EventLoop(w.clock)
    loop = make_loop(w, events)
    start = w.clock.now()
    loop.batch(["a"], Trigger.STARTUP)
    end = start + timedelta(days=1)
    while (at := events.next_time()) is not None and at < end:
        events.run_next()

    primary_times = [o.at - start for o in w.ca.orders]
    assert primary_times == [timedelta(0), timedelta(minutes=1), timedelta(minutes=11)]
    assert [o.at - start for o in backup.orders] == [timedelta(minutes=71)]
    assert backup.orders[0].outcome == "issued"
    gaps = [b - a for a, b in itertools.pairwise(sorted([*primary_times, timedelta(minutes=71)]))]
    assert min(gaps) >= w.config.daemon.min_order_interval
    switches = w.audit.events("account_switched", "a")
    assert [(s["from_account"], s["to_account"], s["reason"]) for s in switches] == [
        (ACCOUNT, BACKUP, "3 consecutive failures")
    ]
    assert switches[0]["next_attempt"] == (start + timedelta(minutes=71)).isoformat()
    primary_use = w.rotator.ledger.usage(
        ACCOUNT, svc.domains, BudgetLimits(orders=10), w.clock.now()
    )
    backup_use = w.rotator.ledger.usage(BACKUP, svc.domains, BudgetLimits(orders=10), w.clock.now())
    assert (primary_use["orders_used"], backup_use["orders_used"]) == (3, 1)
    st = service_status(w.rotator, "a", w.clock.now())
    assert st["issued_by"] == BACKUP and st["failures"] == 0 and not st["due_now"]
    assert st["reason"] != "config_changed"
