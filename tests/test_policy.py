"""Tests of the pure renewal/retry policy (``rotatord.core.policy``): tables and properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rotatord.core import policy
from rotatord.core.model import (
    BudgetLimits,
    CertInfo,
    Http01Standalone,
    IssuedMeta,
    KeyType,
    ServiceSpec,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DIRECTORY = "https://acme.test/directory"


def cert(lifetime: timedelta, not_before: datetime = T0) -> CertInfo:
    """A certificate valid from ``not_before`` for ``lifetime``."""
    return CertInfo(
        serial=1, names=("example.test",), not_before=not_before, not_after=not_before + lifetime
    )


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "renew_before", "want"),
    [
        (timedelta(days=90), None, timedelta(days=30)),
        (timedelta(days=30), None, timedelta(days=10)),
        (timedelta(days=10), None, timedelta(days=5)),
        (timedelta(days=6), None, timedelta(days=3)),
        (timedelta(hours=160), None, timedelta(hours=80)),
        (timedelta(days=90), timedelta(days=7), timedelta(days=7)),
        (timedelta(days=6), timedelta(days=1), timedelta(days=1)),
    ],
)
def test_renew_threshold(
    lifetime: timedelta, renew_before: timedelta | None, want: timedelta
) -> None:
    """Renewal starts with ⅓ of the lifetime left, ½ for ≤ 10-day certificates; an override wins."""
    assert policy.renew_threshold(lifetime, renew_before) == want


def test_renewal_time_without_jitter() -> None:
    """Without jitter a 90-day certificate is due exactly 30 days before it expires."""
    info = cert(timedelta(days=90))
    assert policy.renewal_time(info) == info.not_after - timedelta(days=30)


def test_renewal_time_full_jitter_moves_earlier_by_at_most_a_tenth() -> None:
    """Jitter moves renewal earlier by at most 10% of the threshold, never later."""
    info = cert(timedelta(days=90))
    base = policy.renewal_time(info)
    jittered = policy.renewal_time(info, jitter=0.999999)
    assert base - timedelta(days=3) <= jittered < base


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 2.0])
def test_renewal_time_rejects_bad_jitter(jitter: float) -> None:
    """Jitter outside [0, 1) is a programming error."""
    with pytest.raises(ValueError, match="jitter"):
        policy.renewal_time(cert(timedelta(days=90)), jitter=jitter)


def test_decide_missing() -> None:
    """No installed certificate means due now, reason "missing"."""
    d = policy.decide(None, T0)
    assert (d.due, d.at, d.reason) == (True, T0, "missing")


def test_decide_drift() -> None:
    """A config drift makes a fresh certificate due now, naming the drifted fields."""
    now = T0 + timedelta(days=1)
    d = policy.decide(cert(timedelta(days=90)), now, drift=("names", "key_type"))
    assert (d.due, d.at, d.reason) == (True, now, "config_change:names,key_type")


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=400)])
def test_decide_expired(after: timedelta) -> None:
    """At or after not_after the certificate is due, reason "expired", even with an ARI window."""
    info = cert(timedelta(days=90))
    now = info.not_after + after
    d = policy.decide(info, now, ari_time=now + timedelta(days=30))
    assert (d.due, d.reason) == (True, "expired")


@pytest.mark.parametrize(
    ("now_offset", "due"),
    [
        (timedelta(days=1), False),
        (timedelta(days=60) - timedelta(microseconds=1), False),
        (timedelta(days=60), True),
        (timedelta(days=89), True),
    ],
)
def test_decide_lifetime_fraction(now_offset: timedelta, due: bool) -> None:
    """A 90-day certificate becomes due at day 60 and says when."""
    info = cert(timedelta(days=90))
    d = policy.decide(info, T0 + now_offset)
    assert d.due is due
    assert d.at == T0 + timedelta(days=60)
    assert d.reason == "lifetime_fraction"


def test_decide_renew_before_override() -> None:
    """renew_before moves the due point and is named as the reason."""
    info = cert(timedelta(days=90))
    d = policy.decide(info, T0 + timedelta(days=70), renew_before=timedelta(days=7))
    assert (d.due, d.at, d.reason) == (False, info.not_after - timedelta(days=7), "renew_before")


def test_decide_ari_window_replaces_lifetime_rule() -> None:
    """An ARI time earlier than the emergency point is used as is."""
    info = cert(timedelta(days=90))
    ari = T0 + timedelta(days=75)
    d = policy.decide(info, T0 + timedelta(days=61), ari_time=ari)
    assert (d.due, d.at, d.reason) == (False, ari, "ari_window")
    assert policy.decide(info, ari, ari_time=ari).due


def test_decide_emergency_beats_far_ari() -> None:
    """An ARI time far in the future is capped at not_after - lifetime/20 (emergency)."""
    info = cert(timedelta(days=90))
    d = policy.decide(info, T0 + timedelta(days=80), ari_time=T0 + timedelta(days=3650))
    assert d.at == info.not_after - timedelta(days=90) / 20
    assert d.at == policy.emergency_time(info)
    assert (d.due, d.reason) == (False, "emergency")
    assert policy.decide(info, d.at, ari_time=T0 + timedelta(days=3650)).due


def test_renewal_due_uses_lifetime_rule() -> None:
    """renewal_due is decide() without jitter or ARI."""
    info = cert(timedelta(days=90))
    assert not policy.renewal_due(info, T0 + timedelta(days=59))
    assert policy.renewal_due(info, T0 + timedelta(days=60))
    assert policy.renewal_due(None, T0)
    assert policy.renewal_due(info, T0 + timedelta(days=84), renew_before=timedelta(days=6))


@pytest.mark.parametrize(
    ("failures", "step"),
    [
        (1, timedelta(minutes=1)),
        (2, timedelta(minutes=10)),
        (3, timedelta(minutes=100)),
        (4, timedelta(hours=6)),
        (10, timedelta(hours=6)),
    ],
)
def test_next_attempt_ladder_while_valid(failures: int, step: timedelta) -> None:
    """With a valid certificate retries back off 1 min, 10 min, 100 min, then every 6 h."""
    assert policy.next_attempt(failures, T0, T0 + timedelta(days=30)) == T0 + step


@pytest.mark.parametrize(
    ("failures", "step"),
    [
        (1, timedelta(minutes=1)),
        (2, timedelta(minutes=10)),
        (3, timedelta(hours=1)),
        (10, timedelta(hours=1)),
    ],
)
def test_next_attempt_without_valid_certificate_is_capped_at_an_hour(
    failures: int, step: timedelta
) -> None:
    """Missing or expired: the ladder's long steps are cut to 1 h (never 6 h of outage)."""
    assert policy.next_attempt(failures, T0, None) == T0 + step
    assert policy.next_attempt(failures, T0, T0 - timedelta(hours=1)) == T0 + step


def test_next_attempt_retry_after_later_wins_but_is_capped() -> None:
    """A later Retry-After is honoured, capped at 1 day (1 h without a valid certificate)."""
    valid = T0 + timedelta(days=30)
    assert policy.next_attempt(1, T0, valid, T0 + timedelta(hours=3)) == T0 + timedelta(hours=3)
    huge = T0 + timedelta(seconds=99_999_999)
    assert policy.next_attempt(1, T0, valid, huge) == T0 + timedelta(days=1)
    assert policy.next_attempt(1, T0, None, huge) == T0 + timedelta(hours=1)
    earlier = T0 + timedelta(seconds=5)
    assert policy.next_attempt(1, T0, valid, earlier) == T0 + timedelta(minutes=1)


def test_next_attempt_clamped_before_expiry() -> None:
    """Near expiry a retry that would overshoot not_after is moved half way to it."""
    not_after = T0 + timedelta(hours=2)
    assert policy.next_attempt(4, T0, not_after) == T0 + timedelta(hours=1)
    far_retry_after = T0 + timedelta(days=1)
    assert policy.next_attempt(1, T0, not_after, far_retry_after) == T0 + timedelta(hours=1)


def test_next_attempt_never_collapses_below_the_floor() -> None:
    """Close to expiry halving stops at the floor: no sequence of retries seconds apart."""
    not_after = T0 + timedelta(seconds=30)
    assert policy.next_attempt(4, T0, not_after) == T0 + timedelta(minutes=1)
    ladder = (timedelta(seconds=1),)
    assert policy.next_attempt(1, T0, None, ladder=ladder) == T0 + timedelta(minutes=1)
    floor = timedelta(seconds=20)
    assert policy.next_attempt(1, T0, None, ladder=ladder, floor=floor) == T0 + floor


def test_next_attempt_rejects_zero_failures() -> None:
    """next_attempt is only meaningful after at least one failure."""
    with pytest.raises(ValueError, match="failures"):
        policy.next_attempt(0, T0, None)


def test_renew_before_longer_than_lifetime_is_clamped() -> None:
    """renew_before ≥ 9/10 of the lifetime falls back to the default rule, named as clamped."""
    info = CertInfo(1, ("a.test",), T0, T0 + timedelta(seconds=60))
    assert policy.renew_before_clamped(info.lifetime, timedelta(minutes=2))
    assert policy.renew_threshold(info.lifetime, timedelta(minutes=2)) == timedelta(seconds=30)
    d = policy.decide(info, T0 + timedelta(seconds=1), renew_before=timedelta(minutes=2))
    assert (d.due, d.reason) == (False, "renew_before_clamped")
    assert not policy.renew_before_clamped(timedelta(days=90), timedelta(days=30))


DUE = policy.Decision(True, T0, "lifetime_fraction")


def test_plan_next_waits_a_tenth_of_the_lifetime_after_an_issuance() -> None:
    """A certificate due again right after its issuance waits max(floor, lifetime/10)."""
    hist = policy.History(last_issued_at=T0, issued_lifetime=timedelta(hours=12))
    plan = policy.plan_next(DUE, hist, T0)
    assert (plan.at, plan.why) == (T0 + timedelta(hours=1, minutes=12), "min_interval")
    short = policy.History(last_issued_at=T0, issued_lifetime=timedelta(seconds=60))
    assert policy.plan_next(DUE, short, T0).at == T0 + timedelta(minutes=1)


def test_plan_next_missing_or_config_change_skip_the_lifetime_interval_not_the_floor() -> None:
    """A deleted certificate or a changed config renews at once, but never twice a minute."""
    hist = policy.History(last_order_at=T0, last_issued_at=T0, issued_lifetime=timedelta(days=90))
    for reason in ("missing", "config_change:names"):
        plan = policy.plan_next(policy.Decision(True, T0, reason), hist, T0 + timedelta(seconds=10))
        assert plan.at == T0 + timedelta(minutes=1), reason


def test_plan_next_honours_retry_budget_and_clock_going_back() -> None:
    """Retry time and budget defer a due order; a future stamp counts as now."""
    hist = policy.History(failures=2, retry_at=T0 + timedelta(minutes=10))
    assert policy.plan_next(DUE, hist, T0).why == "retry"
    assert policy.plan_next(DUE, hist, T0, ignore_retry=True).at == T0
    budget = policy.plan_next(DUE, policy.History(), T0, budget_free_at=T0 + timedelta(days=2))
    assert (budget.at, budget.why) == (T0 + timedelta(days=2), "budget_exhausted")
    future = policy.History(last_order_at=T0 + timedelta(days=365))
    assert policy.plan_next(DUE, future, T0).at == T0 + timedelta(minutes=1)


def test_budget_free_at_counts_sliding_windows() -> None:
    """The 6th certificate for a name set in a week waits until the first one leaves the week."""
    limits = BudgetLimits(orders=300, certificates=5)
    certs = [T0 + timedelta(hours=i) for i in range(5)]
    now = T0 + timedelta(hours=5)
    assert policy.budget_free_at([], certs[:4], limits, now) is None
    assert policy.budget_free_at([], certs, limits, now) == T0 + timedelta(days=7)
    orders = [now] * 300
    assert policy.budget_free_at(orders, [], limits, now) == now + timedelta(hours=3)


BASE_META = IssuedMeta(
    names=("a.test", "b.test"),
    key_type=KeyType.ECDSA_P256,
    account="main",
    directory=DIRECTORY,
    serial=1,
    not_before=T0,
    not_after=T0 + timedelta(days=90),
    issued_at=T0,
)


SPEC = ServiceSpec(
    name="web", domains=("b.test", "a.test"), account="main", challenge=Http01Standalone()
)


@pytest.mark.parametrize(
    ("meta", "directory", "want"),
    [
        (BASE_META, DIRECTORY, ()),
        (replace(BASE_META, names=("a.test",)), DIRECTORY, ("names",)),
        (replace(BASE_META, key_type=KeyType.RSA_2048), DIRECTORY, ("key_type",)),
        (replace(BASE_META, account="other"), DIRECTORY, ("account",)),
        (BASE_META, "https://other.test/dir", ("account",)),
        (
            replace(BASE_META, names=("c.test",), key_type=KeyType.RSA_2048),
            DIRECTORY,
            ("names", "key_type"),
        ),
    ],
)
def test_config_drift(meta: IssuedMeta, directory: str, want: tuple[str, ...]) -> None:
    """Drift is reported per field; name order does not matter."""
    assert policy.config_drift(meta, SPEC, directory) == want


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------

aware = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by contract
    max_value=datetime(2090, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
lifetimes = st.timedeltas(min_value=timedelta(hours=1), max_value=timedelta(days=800))
renew_befores = st.none() | st.timedeltas(
    min_value=timedelta(minutes=1), max_value=timedelta(days=400)
)
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
steps = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=1000))


@st.composite
def certs(draw: st.DrawFn) -> CertInfo:
    """Any certificate with a positive lifetime."""
    return cert(draw(lifetimes), draw(aware))


@settings(max_examples=500)
@given(
    info=certs(),
    jitter=jitters,
    renew_before=renew_befores,
    ari_offset=st.none()
    | st.timedeltas(min_value=timedelta(days=-900), max_value=timedelta(days=900)),
    now=aware,
    later=steps,
)
def test_once_due_stays_due(
    info: CertInfo,
    jitter: float,
    renew_before: timedelta | None,
    ari_offset: timedelta | None,
    now: datetime,
    later: timedelta,
) -> None:
    """If a certificate is due at ``now`` it is due at every later instant (same inputs)."""
    ari_time = None if ari_offset is None else info.not_before + ari_offset
    first = policy.decide(info, now, renew_before=renew_before, jitter=jitter, ari_time=ari_time)
    if first.due:
        second = policy.decide(
            info, now + later, renew_before=renew_before, jitter=jitter, ari_time=ari_time
        )
        assert second.due


@settings(max_examples=500)
@given(
    info=certs(),
    jitter=jitters,
    renew_before=renew_befores,
    ari_offset=st.none()
    | st.timedeltas(min_value=timedelta(days=-900), max_value=timedelta(days=900)),
    after=steps,
)
def test_never_not_due_after_expiry(
    info: CertInfo,
    jitter: float,
    renew_before: timedelta | None,
    ari_offset: timedelta | None,
    after: timedelta,
) -> None:
    """At or after not_after a certificate is always due, whatever jitter, override or ARI say."""
    ari_time = None if ari_offset is None else info.not_before + ari_offset
    now = info.not_after + after
    d = policy.decide(info, now, renew_before=renew_before, jitter=jitter, ari_time=ari_time)
    assert d.due


@settings(max_examples=500)
@given(
    failures=st.integers(min_value=1, max_value=1000),
    now=aware,
    not_after_offset=st.none()
    | st.timedeltas(min_value=timedelta(days=-100), max_value=timedelta(days=100)),
    retry_after_offset=st.none()
    | st.timedeltas(min_value=timedelta(days=-10), max_value=timedelta(days=10000)),
)
@example(failures=4, now=T0, not_after_offset=timedelta(microseconds=2), retry_after_offset=None)
def test_next_attempt_invariants(
    failures: int,
    now: datetime,
    not_after_offset: timedelta | None,
    retry_after_offset: timedelta | None,
) -> None:
    """Every retry is at least the floor away, at most a day (an hour without a valid
    certificate), and, while valid with room to spare, before expiry."""
    floor = policy.MIN_ORDER_INTERVAL
    not_after = None if not_after_offset is None else now + not_after_offset
    retry_after = None if retry_after_offset is None else now + retry_after_offset
    at = policy.next_attempt(failures, now, not_after, retry_after)
    assert at >= now + floor
    valid = not_after is not None and now < not_after
    assert at <= now + (timedelta(days=1) if valid else timedelta(hours=1))
    if valid and not_after is not None and not_after - now > 2 * floor:
        assert at < not_after


@settings(max_examples=500)
@given(info=certs(), jitter=jitters, renew_before=renew_befores)
def test_jitter_never_delays_renewal(
    info: CertInfo, jitter: float, renew_before: timedelta | None
) -> None:
    """Renewal with any jitter is never later than without jitter."""
    assert policy.renewal_time(info, renew_before, jitter) <= policy.renewal_time(
        info, renew_before, 0.0
    )
