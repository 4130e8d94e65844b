"""Accounts, profiles and CA fallback without a CA: config parsing (every problem with its
file and key path) and the fallback decision (pure)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from rotatord.config import parse_config
from rotatord.core.errors import ConfigError, IssuanceError, StoreError
from rotatord.core.model import Http01Standalone, ServiceSpec
from rotatord.issuing import PROFILE_NOT_OFFERED
from rotatord.rotation import fallback
from rotatord.store import ServiceStatus

BASE: dict[str, Any] = {
    "daemon": {"state_dir": "state", "control_socket": "/tmp/rotatord-test.sock"},
    "acme": {
        "le": {"directory": "https://127.0.0.1:14000/dir"},
        "zerossl": {"directory": "https://127.0.0.1:15000/dir"},
    },
    "services": {"web": {"domains": ["web.example.test"], "account": "le"}},
}


def service(tmp_path: Path, **changes: Any) -> ServiceSpec:
    data = copy.deepcopy(BASE)
    data["services"]["web"].update(changes)
    return parse_config(data, tmp_path / "r.toml").services["web"]


def problems(tmp_path: Path, **changes: Any) -> list[str]:
    data = copy.deepcopy(BASE)
    data["services"]["web"].update(changes)
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "r.toml")
    for p in info.value.problems:
        assert p.file == str(tmp_path / "r.toml")
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def test_account_list_profile_and_fallback_after_parse(tmp_path: Path) -> None:
    """``account = [..]`` gives the first account and the fallbacks in order; defaults hold."""
    spec = service(tmp_path, account=["zerossl", "le"], fallback_after=5, profile="shortlived")
    assert (spec.account, spec.fallback_accounts, spec.accounts) == (
        "zerossl",
        ("le",),
        ("zerossl", "le"),
    )
    assert (spec.fallback_after, spec.profile) == (5, "shortlived")
    plain = service(tmp_path)
    assert (plain.accounts, plain.fallback_after, plain.profile) == (("le",), 3, None)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"account": []}, "services.web.account: expected an [acme.<name>] name or a non-empty"),
        ({"account": ["le", "le"]}, "services.web.account[1]: 'le' is listed twice"),
        ({"account": ["le", "zerosl"]}, "services.web.account[1]: account 'zerosl' does not"),
        ({"account": ["le", 3]}, "services.web.account[1]: expected an [acme.<name>] name"),
        ({"fallback_after": 0}, "services.web.fallback_after: must be between 1 and 100"),
        ({"fallback_after": "3"}, "services.web.fallback_after: expected an integer"),
        ({"profile": 6}, "services.web.profile: expected a profile name string"),
        ({"profile": "short lived"}, "services.web.profile: invalid profile name"),
    ],
)
def test_bad_accounts_and_profiles_name_their_key(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    """Each mistake is reported with its key path (and the file)."""
    found = problems(tmp_path, **changes)
    assert any(p.startswith(expected) for p in found), found


def test_unknown_fallback_account_suggests_the_close_name(tmp_path: Path) -> None:
    """A misspelt fallback account gets a 'did you mean'."""
    assert any("did you mean 'zerossl'" in p for p in problems(tmp_path, account=["le", "zerosl"]))


SPEC = ServiceSpec(
    name="web",
    domains=("web.example.test",),
    account="a",
    challenge=Http01Standalone(),
    fallback_accounts=("b", "c"),
    fallback_after=3,
)
DOWN = IssuanceError("cannot reach the CA", retryable=True)


def refused(code: str) -> IssuanceError:
    return IssuanceError("no", retryable=False, problem_type=f"urn:ietf:params:acme:error:{code}")


def test_switch_after_n_failures_in_a_row_then_wraps() -> None:
    """Failures 1 and 2 stay on 'a', the third moves to 'b'; from the last account the next
    is the first again."""
    status = ServiceStatus()
    for n in (1, 2):
        changes, switch = fallback.after_failure(SPEC, status, "a", DOWN)
        assert switch is None and changes == {"account": "a", "account_failures": n}
        status = ServiceStatus(account="a", account_failures=n)
    changes, switch = fallback.after_failure(SPEC, status, "a", DOWN)
    assert changes == {"account": "b", "account_failures": 0}
    assert switch == fallback.Switch("a", "b", "3 consecutive failures", 3)
    last = ServiceStatus(account="c", account_failures=2)
    assert fallback.after_failure(SPEC, last, "c", DOWN)[0]["account"] == "a"


@pytest.mark.parametrize(
    "code", ["unauthorized", "rejectedIdentifier", "caa", "externalAccountRequired"]
)
def test_refusals_another_ca_may_not_share_switch_at_once(code: str) -> None:
    """These problems move to the next account on the first failure."""
    changes, switch = fallback.after_failure(SPEC, ServiceStatus(), "a", refused(code))
    assert changes["account"] == "b" and switch is not None
    assert switch.reason == f"{code} (switch at once)"


def test_profile_not_offered_switches_at_once() -> None:
    """A CA without the configured profile hands over to the next account at once."""
    exc = IssuanceError("x", retryable=False, problem_type=PROFILE_NOT_OFFERED)
    assert fallback.after_failure(SPEC, ServiceStatus(), "a", exc)[1] is not None


def test_failures_not_at_the_ca_do_not_count() -> None:
    """A reload or store failure (the CA was not the problem) leaves the account alone, as
    does a service with one account however often its CA fails."""
    assert fallback.after_failure(SPEC, ServiceStatus(), None, DOWN) == ({}, None)
    assert fallback.after_failure(SPEC, ServiceStatus(), "a", StoreError("disk")) == ({}, None)
    single = ServiceSpec(name="s", domains=("s.test",), account="a", challenge=SPEC.challenge)
    changes, switch = fallback.after_failure(single, ServiceStatus(account_failures=9), "a", DOWN)
    assert switch is None and changes["account"] == "a"


def test_in_use_ignores_an_account_no_longer_listed() -> None:
    """After a config change dropped the account in use, orders go to the first again."""
    assert fallback.in_use(SPEC, ServiceStatus(account="b")) == "b"
    assert fallback.in_use(SPEC, ServiceStatus(account="gone")) == "a"
    assert fallback.in_use(SPEC, ServiceStatus()) == "a"


def test_status_round_trips_fallback_fields() -> None:
    """status.json keeps the account in use and its failure count; bad values read as defaults."""
    st = ServiceStatus(account="b", account_failures=2)
    assert ServiceStatus.from_doc(st.to_doc()) == st
    bad = ServiceStatus.from_doc({"account": 5, "account_failures": -1})
    assert (bad.account, bad.account_failures) == (None, 0)


def test_account_files_pending_key_and_deactivation(tmp_path: Path) -> None:
    """The pending key is 0600 and, once promoted, is key.json (the old key gone); dropped, the
    old key stays; a deactivated account is refused, never silently re-registered."""
    from rotatord.issuing import account

    adir = tmp_path / "acct"
    old = account.load_or_create_key(adir)
    new = account.new_key()
    account.write_pending(adir, new)
    assert (adir / account.PENDING_NAME).stat().st_mode & 0o777 == 0o600
    account.drop_pending(adir)
    assert account.load_or_create_key(adir).thumbprint() == old.thumbprint()
    account.write_pending(adir, new)
    stamp = account.key_stamp(adir)
    account.promote_pending(adir)
    assert account.load_pending(adir) is None
    assert account.key_stamp(adir) != stamp
    assert account.load_or_create_key(adir).thumbprint() == new.thumbprint()
    assert (adir / account.KEY_NAME).stat().st_mode & 0o777 == 0o600

    account.save_uri(adir, "https://ca/acct/1", "https://ca/dir", ("mailto:a@b.test",))
    assert account.load_uri(adir, "https://ca/dir") == "https://ca/acct/1"
    assert account.load_uri(adir, "https://other/dir") is None
    account.save_uri(adir, "https://ca/acct/1", "https://ca/dir", status="deactivated")
    with pytest.raises(IssuanceError, match="deactivated") as info:
        account.load_uri(adir, "https://ca/dir")
    assert info.value.retryable is False
