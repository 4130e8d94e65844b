"""The rotation story with the fakes behind its ports: batches, shared reload targets, rollback,
retries, the loop's invariants, revoke, resume and shutdown — no Pebble, in seconds.

Each fault test also checks what happens next: the CA's order count, the next attempt, status.
"""

from __future__ import annotations

import errno
import itertools
from datetime import timedelta
from pathlib import Path

import pytest

from rotatord.clock import FakeClock
from rotatord.core.errors import IssuanceError
from rotatord.core.model import BudgetLimits, Trigger
from rotatord.rotation import Outcome, Phase, ShuttingDown, resume, service_status
from rotatord.rotation import journal as journal_mod
from tests.world import World, make_world, service

RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"


def trio(tmp_path: Path, **kw: object) -> World:
    specs = [service(n, targets=["nginx"]) for n in ("a", "b", "c")]
    return make_world(tmp_path, specs, targets=["nginx"], **kw)  # type: ignore[arg-type]


def current(world: World, name: str) -> str | None:
    v = world.rotator.plain_store(name).current_version()
    return v.name if v else None


def test_batch_rotates_each_service_and_reloads_a_shared_target_once(tmp_path: Path) -> None:
    """Three services behind one nginx: three certificates, three own reloads, one nginx reload,
    every probe sees its new certificate, every journal ends finished."""
    w = trio(tmp_path)
    results = w.rotator.rotate_batch(["a", "b", "c"], trigger=Trigger.STARTUP)
    assert [r.outcome for r in results] == [Outcome.ROTATED] * 3
    assert w.ca.issued_count == 3
    actions = [c.action for c in w.reloader.calls]
    assert actions.count("command:reload-target nginx") == 1
    assert sorted(a for a in actions if a.startswith("command:reload ")) == [
        "command:reload a",
        "command:reload b",
        "command:reload c",
    ]
    assert len(w.audit.events("probe_succeeded")) == 3
    for name in "abc":
        entry = journal_mod.read(w.rotator.plain_store(name))
        assert entry is not None and entry.phase is Phase.FINISHED
        assert w.reloader.served_version[name] == current(w, name)


def test_check_again_under_the_lock_and_force(tmp_path: Path) -> None:
    """A second rotation of a fresh certificate is not due and asks nothing of the CA; force
    rotates anyway."""
    w = make_world(tmp_path, [service("a")])
    assert w.rotator.rotate("a").outcome is Outcome.ROTATED
    again = w.rotator.rotate("a")
    assert (again.outcome, w.ca.order_count) == (Outcome.NOT_DUE, 1)
    assert w.rotator.rotate("a", force=True).outcome is Outcome.ROTATED
    assert w.ca.order_count == 2


def test_shared_target_failure_rolls_back_every_user(tmp_path: Path) -> None:
    """A failing shared nginx reload rolls all its services back to their previous pair, which
    the probe must then see; status counts the failure and retries after the first step."""
    w = trio(tmp_path)
    w.rotator.rotate_batch(["a", "b", "c"])
    before = {n: current(w, n) for n in "abc"}
    w.clock.advance(timedelta(days=70))
    failed = {"n": 0}

    def fail_nginx(action: object, env: object) -> None:
        if "nginx" in str(action) and not failed["n"]:
            failed["n"] += 1
            raise_reload()

    w.reloader.on_run = fail_nginx
    results = w.rotator.rotate_batch(["a", "b", "c"], trigger=Trigger.SCHEDULE)
    assert [r.outcome for r in results] == [Outcome.ROLLED_BACK] * 3
    assert {n: current(w, n) for n in "abc"} == before
    assert all(r["ok"] for r in w.audit.events("rolled_back"))
    assert {w.reloader.served_version[n] for n in "abc"} == set(before.values())
    now = w.clock.now()
    for r in results:
        assert r.next_attempt == now + timedelta(minutes=1)
    st = service_status(w.rotator, "a", now)
    assert (st["failures"], st["last_result"]) == (1, "rolled_back")


def raise_reload() -> None:
    from rotatord.core.errors import ReloadError

    raise ReloadError("nginx -s reload: exit 1", returncode=1)


def test_probe_failure_rolls_back(tmp_path: Path) -> None:
    """A server that says it reloaded but serves the old certificate is rolled back."""
    w = make_world(tmp_path, [service("a")])
    w.rotator.rotate("a")
    old = current(w, "a")
    w.reloader.stuck = True
    res = w.rotator.rotate("a", force=True)
    assert res.outcome is Outcome.ROLLED_BACK
    assert current(w, "a") == old
    assert w.audit.events("probe_failed")


def test_expired_previous_pair_is_never_restored(tmp_path: Path) -> None:
    """If the previous certificate has expired, a failed deployment keeps the new pair and
    raises an alarm instead of rolling back to an expired one."""
    w = make_world(tmp_path, [service("a")])
    w.rotator.rotate("a")
    w.clock.advance(timedelta(days=91))
    w.reloader.fail_next(1)
    res = w.rotator.rotate("a")
    assert res.outcome is Outcome.FAILED
    assert current(w, "a") == res.version
    assert any("expired" in a["problem"] for a in w.audit.events("alarm"))
    assert not w.audit.events("rolled_back")


def test_ca_outage_retries_on_the_ladder_then_recovers(tmp_path: Path) -> None:
    """While the CA is down each failure moves the next attempt up the ladder (capped at 1 h
    without a certificate); once it is back, one rotation succeeds and the count resets."""
    w = make_world(tmp_path, [service("a")])
    w.ca.down = True
    gaps = []
    for _ in range(4):
        res = w.rotator.rotate("a", trigger=Trigger.SCHEDULE)
        assert res.outcome is Outcome.FAILED and res.next_attempt is not None
        gaps.append(res.next_attempt - w.clock.now())
        w.clock.advance(gaps[-1])
    assert gaps == [timedelta(minutes=1), timedelta(minutes=10), *[timedelta(hours=1)] * 2]
    assert w.ca.order_count == 4
    w.ca.down = False
    assert w.rotator.rotate("a", trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
    assert service_status(w.rotator, "a", w.clock.now())["failures"] == 0


def test_huge_retry_after_on_first_issuance_is_capped_at_an_hour(tmp_path: Path) -> None:
    """429 with Retry-After three years away, no certificate yet: next attempt in ≤ 1 h."""
    w = make_world(tmp_path, [service("a")])
    w.ca.rate_limit(w.clock.now() + timedelta(seconds=99_999_999))
    res = w.rotator.rotate("a", trigger=Trigger.STARTUP)
    assert res.outcome is Outcome.FAILED and res.next_attempt is not None
    assert res.next_attempt - w.clock.now() == timedelta(hours=1)
    st = service_status(w.rotator, "a", w.clock.now())
    assert st["next_action"]["why"] == "retry" and st["failures"] == 1


def test_clock_far_ahead_does_not_order_in_a_loop(tmp_path: Path) -> None:
    """Our clock 20 days ahead of the CA's: every new certificate looks expired on arrival and
    fails verification. Over 50 scheduled runs a minute apart the CA sees the ladder's pace
    (orders at +0, +1 min, +11 min), not fifty orders."""
    w = make_world(tmp_path, [service("a")], lifetime=timedelta(hours=12))
    w.rotator.rotate("a", trigger=Trigger.STARTUP)
    w.ca.clock = FakeClock(w.clock.now())  # the CA keeps real time
    w.clock.advance(timedelta(days=20))
    outcomes = []
    for _ in range(50):
        outcomes.append(w.rotator.rotate("a", trigger=Trigger.SCHEDULE).outcome)
        w.clock.advance(timedelta(minutes=1))
    assert w.ca.order_count == 1 + 3
    assert outcomes.count(Outcome.FAILED) == 3
    assert set(outcomes) == {Outcome.FAILED, Outcome.DEFERRED}
    st = service_status(w.rotator, "a", w.clock.now())
    assert st["failures"] == 3 and st["next_action"]["why"] == "retry"


def test_budget_exhausted_defers_and_refuses_force(tmp_path: Path) -> None:
    """With 2 certificates per week allowed, the third forced rotation is refused with a clear
    message, asks nothing of the CA, and status shows when the next slot opens."""
    w = make_world(tmp_path, [service("a")], budget=BudgetLimits(certificates=2))
    for _ in range(2):
        assert w.rotator.rotate("a", force=True).outcome is Outcome.ROTATED
    res = w.rotator.rotate("a", force=True)
    assert res.outcome is Outcome.DEFERRED and not res.ok
    assert res.error is not None and "budget" in res.error and "next slot" in res.error
    assert w.ca.order_count == 2
    assert w.audit.events("budget_exhausted")
    st = service_status(w.rotator, "a", w.clock.now())
    assert st["next_action"]["why"] == "budget_exhausted"
    assert st["budget"]["certificates_remaining"] == 0


def test_read_only_state_is_a_recorded_failure_not_a_crash(tmp_path: Path) -> None:
    """EROFS on the lock file fails the rotation (no exception escapes), the failure is in the
    in-memory status marked unsaved; once writable the next rotation succeeds."""
    w = make_world(tmp_path, [service("a")])
    w.ops.read_only = True
    res = w.rotator.rotate("a", trigger=Trigger.STARTUP)
    assert res.outcome is Outcome.FAILED and res.error and "Read-only" in res.error
    assert w.ca.order_count == 0
    st = service_status(w.rotator, "a", w.clock.now())
    assert (st["failures"], st["status_persisted"]) == (1, False)
    w.ops.read_only = False
    w.clock.advance(timedelta(minutes=1))
    assert w.rotator.rotate("a", trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED


def test_enospc_while_staging_keeps_old_pair_and_waits(tmp_path: Path) -> None:
    """A full disk after issuance: old pair stays current, one order counted, the next
    automatic attempt waits for the ladder's first step."""
    w = make_world(tmp_path, [service("a")])
    w.rotator.rotate("a")
    old = current(w, "a")
    w.ops.fail_once("open_excl", errno.ENOSPC, "privkey")
    res = w.rotator.rotate("a", force=True)
    assert res.outcome is Outcome.FAILED
    assert current(w, "a") == old and w.ca.order_count == 2
    again = w.rotator.rotate("a", trigger=Trigger.SCHEDULE, force=False)
    assert again.outcome is Outcome.NOT_DUE


def test_revoke_rotates_to_a_fresh_key_and_destroys_the_revoked_one(tmp_path: Path) -> None:
    """Revocation reaches the CA, a new key is current, the revoked version is destroyed."""
    w = make_world(tmp_path, [service("a")])
    w.rotator.rotate("a")
    old = current(w, "a")
    serial, res = w.rotator.revoke("a", "keyCompromise")
    assert res.outcome is Outcome.ROTATED
    assert w.ca.revoked and w.ca.revoked[0][1] == 1
    assert current(w, "a") != old
    assert not (w.rotator.plain_store("a").versions_dir / str(old)).exists()
    assert any(e["why"] == "revoked" for e in w.audit.events("key_destroyed"))
    assert serial


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the rotator may catch it."""


def test_kill_between_activation_and_reload_is_resumed_at_start(tmp_path: Path) -> None:
    """A crash after the flip leaves the consumer on the old certificate; the next start
    resumes the rotation: reloads run for the live version and it finishes resumed."""
    w = make_world(tmp_path, [service("a", targets=["nginx"])], targets=["nginx"])
    w.rotator.rotate("a")

    def crash(action: object, env: object) -> None:
        raise Killed

    w.reloader.on_run = crash
    with pytest.raises(Killed):
        w.rotator.rotate("a", force=True)
    live = current(w, "a")
    assert w.reloader.served_version["a"] != live
    entry = journal_mod.read(w.rotator.plain_store("a"))
    assert entry is not None and entry.phase in (Phase.ACTIVATED, Phase.PUBLISHED)
    w.reloader.on_run = None
    rotator = w.restart()
    results = resume(rotator, ["a"])
    assert [(r.outcome, r.resumed) for r in results] == [(Outcome.ROTATED, True)]
    assert w.reloader.served_version["a"] == live
    finished = w.audit.events("rotation_finished")[-1]
    assert finished["resumed"] is True
    assert resume(rotator, ["a"]) == []


def test_kill_between_staging_and_activation_destroys_the_unused_key(tmp_path: Path) -> None:
    """A staged version that never went live is destroyed at the next start, not resumed."""
    w = make_world(tmp_path, [service("a")])
    w.rotator.rotate("a")
    old = current(w, "a")
    w.ops.fail_once("symlink", errno.EIO)

    store = w.rotator.plain_store("a")
    res = w.rotator.rotate("a", force=True)
    assert res.outcome is Outcome.FAILED and current(w, "a") == old
    assert resume(w.restart(), ["a"]) == []
    assert [v.name for v in store.versions()] == [old]


def test_shutdown_refuses_new_batches_and_drain_waits(tmp_path: Path) -> None:
    """After begin_shutdown no batch starts, and drain reports when nothing is in flight."""
    w = make_world(tmp_path, [service("a")])
    w.rotator.begin_shutdown()
    with pytest.raises(ShuttingDown):
        w.rotator.rotate("a")
    assert w.rotator.drain(0.1)
    assert w.ca.order_count == 0


def test_permanent_error_is_recorded_with_its_type(tmp_path: Path) -> None:
    """A permanent CA refusal is a failure with its problem type in the audit and status."""
    w = make_world(tmp_path, [service("a")])
    w.ca.fail_next(
        1,
        IssuanceError("rejected", retryable=False, problem_type="urn:ietf:params:acme:error:caa"),
    )
    res = w.rotator.rotate("a")
    assert res.outcome is Outcome.FAILED and res.retryable is False
    failed = w.audit.events("rotation_failed")[-1]
    assert failed["problem_type"].endswith("caa")


def test_certificate_due_on_arrival_waits_a_tenth_of_its_lifetime(tmp_path: Path) -> None:
    """A CA that backdates certificates so far that each is due on arrival: after each
    installed certificate the next automatic order waits a tenth of the lifetime (9 days for
    90-day certificates) — hourly schedule runs over 20 days order 3 times, not 480."""
    w = make_world(tmp_path, [service("a")])
    w.ca.backdate = timedelta(days=80)
    for _ in range(20 * 24):
        w.rotator.rotate("a", trigger=Trigger.SCHEDULE)
        w.clock.advance(timedelta(hours=1))
    assert w.ca.order_count == 3
    st = service_status(w.rotator, "a", w.clock.now())
    assert st["failures"] == 0 and st["last_result"] == "rotated"


def test_renew_before_too_long_is_clamped_warned_once_and_orders_on_schedule(
    tmp_path: Path,
) -> None:
    """``renew_before = 1d`` with a CA issuing 12 h certificates (the issue's 18 rotations in
    8 s): the loop renews at the default point (½ of a short lifetime), a ``config_warning``
    names the key once per certificate, and status says why."""
    from tests.world import EventLoop, make_loop

    w = make_world(
        tmp_path,
        [service("a", renew_before=timedelta(days=1))],
        budget=BudgetLimits(certificates=1000),
    )
    w.ca.lifetime = timedelta(hours=12)
    events = EventLoop(w.clock)
    loop = make_loop(w, events)
    loop.batch(["a"], Trigger.STARTUP)
    end = w.clock.now() + timedelta(days=2)
    while (at := events.next_time()) is not None and at < end:
        events.run_next()
    # 2 days of 12 h certificates renewed at 6 h left (less up to a tenth of it of jitter):
    # one every 5.4-6 h after the first, never one right after another.
    assert 9 <= w.ca.order_count <= 10
    times = [o.at for o in w.ca.orders]
    assert min(b - a for a, b in itertools.pairwise(times)) >= timedelta(hours=5.4)
    warnings = w.audit.events("config_warning", "a")
    assert len(warnings) == w.ca.order_count  # once per certificate, not once per plan
    assert warnings[0]["key"] == "services.a.renew_before"
    assert (
        "0:06:00" not in warnings[0]["problem"] and "6:00:00 left instead" in warnings[0]["problem"]
    )
    st = service_status(w.rotator, "a", w.clock.now())
    assert st["reason"] == "renew_before_clamped" and "12:00:00 certificate" in st["warning"]
