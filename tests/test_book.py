"""The ledger's order write also holds the service's last order (the minimum-interval guard's
memory across a crash mid-order); certificates count only once the CA issued them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from rotatord.core.model import BudgetLimits, Trigger
from rotatord.rotation import Outcome, service_status
from rotatord.rotation.book import BudgetLedger
from tests.world import make_world, service

LIMITS = BudgetLimits(certificates=2)


def test_one_order_write_holds_the_order_and_the_services_last_order(tmp_path: Path) -> None:
    w = make_world(tmp_path, [service("a")])
    now = w.clock.now()
    ledger = BudgetLedger(tmp_path / "state")
    ledger.record_order("le", now, LIMITS, service="a")
    on_disk = json.loads((tmp_path / "state" / "budget" / "le.json").read_text())
    assert on_disk["orders"] == [now.isoformat()]
    assert on_disk["certificates"] == {}
    assert on_disk["last_order"] == {"a": now.isoformat()}
    again = BudgetLedger(tmp_path / "state")  # what a restarted daemon reads
    assert again.usage("le", ["a.example.test"], LIMITS, now)["orders_used"] == 1
    assert again.last_order("le", "a") == now


def test_last_order_is_forgotten_after_the_orders_window(tmp_path: Path) -> None:
    w = make_world(tmp_path, [service("a"), service("b")])
    t0 = w.clock.now()
    ledger = BudgetLedger(tmp_path / "state")
    ledger.record_order("le", t0, LIMITS, service="a")
    later = t0 + LIMITS.orders_window + timedelta(seconds=1)
    ledger.record_order("le", later, LIMITS, service="b")
    assert ledger.last_order("le", "a") is None
    assert ledger.last_order("le", "b") == later


def test_ca_failures_do_not_spend_the_duplicate_certificate_budget(tmp_path: Path) -> None:
    """Ten failed orders (CA down) then one success: only the success counts as a certificate,
    so the service is not held back by a budget its failures never used."""
    w = make_world(tmp_path, [service("a")])
    w.ca.down = True
    for _ in range(10):
        res = w.rotator.rotate("a", trigger=Trigger.MANUAL)
        assert res.outcome is Outcome.FAILED
        w.clock.advance(timedelta(minutes=2))
    w.ca.down = False
    assert w.rotator.rotate("a", trigger=Trigger.MANUAL).outcome is Outcome.ROTATED
    st = service_status(w.rotator, "a", w.clock.now())
    assert st["budget"]["certificates_used"] == 1
    assert w.ca.order_count == 11 and w.ca.issued_count == 1


def test_a_crash_mid_order_still_spaces_the_next_automatic_order(tmp_path: Path) -> None:
    """Killed while the order is at the CA (status.json never learnt of it): after restart the
    ledger's record of the order keeps the minimum interval; the next scheduled run waits."""
    w = make_world(tmp_path, [service("a")])
    assert w.rotator.rotate("a", trigger=Trigger.STARTUP).outcome is Outcome.ROTATED
    w.clock.advance(timedelta(days=80))  # due again (90-day certificate)

    class Killed(BaseException):
        pass

    def kill(_number: int) -> None:
        raise Killed

    w.ca.before_issue = kill
    orders = w.ca.order_count
    with pytest.raises(Killed):
        w.rotator.rotate("a", trigger=Trigger.SCHEDULE)
    w.ca.before_issue = None
    rotator = w.restart()
    res = rotator.rotate("a", trigger=Trigger.SCHEDULE)
    assert res.outcome is Outcome.DEFERRED
    assert w.ca.order_count == orders + 1  # the killed order only
    w.clock.advance(rotator.config.daemon.min_order_interval)
    assert rotator.rotate("a", trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED


def test_a_kill_before_the_ca_issued_counts_no_certificate(tmp_path: Path) -> None:
    """Counting the certificate with the order would leave one counted per kill mid-order; with
    6-day certificates and 5 per week a few kills would defer renewals past expiry."""
    w = make_world(tmp_path, [service("a")])

    class Killed(BaseException):
        pass

    def kill(_number: int) -> None:
        raise Killed

    w.ca.before_issue = kill
    for _ in range(3):
        with pytest.raises(Killed):
            w.rotator.rotate("a", trigger=Trigger.MANUAL)
        w.restart()
    w.ca.before_issue = None
    rotator = w.restart()
    assert rotator.rotate("a", trigger=Trigger.MANUAL).outcome is Outcome.ROTATED
    st = service_status(rotator, "a", w.clock.now())
    assert st["budget"]["certificates_used"] == 1 and st["budget"]["orders_used"] == 4
