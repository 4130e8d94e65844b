"""End to end: the real ``rotatord run`` daemon against a real Pebble."""

from __future__ import annotations

import itertools
import json
import os
import signal
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pebble import PebbleFactory, PebbleServer
from tests.daemon_harness import (
    DaemonProcess,
    Record,
    events,
    read_audit,
    run_cli,
    service,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.pebble


def start_daemon(config: Path, workdir: Path, daemons: list[DaemonProcess]) -> DaemonProcess:
    d = DaemonProcess(config, workdir)
    daemons.append(d)
    d.start()
    return d


def issued_web_daemon(
    pebble: PebbleServer, tmp: Path, daemons: list[DaemonProcess]
) -> tuple[Path, Path, DaemonProcess]:
    """A daemon running service ``web``, returned once its start-up issuance is audited."""
    state = tmp / "state"
    config = write_config(tmp / "r.toml", pebble, state, service("web", pebble.http_port))
    daemon = start_daemon(config, tmp, daemons)
    audit = state / "audit.jsonl"
    wait_for(audit, lambda rs: len(activated(rs, "web")) >= 1, 60, "startup issuance", daemon)
    return config, audit, daemon


def activated(records: list[Record], name: str) -> list[Record]:
    return events(records, "certificate_activated", name)


def test_daemon_renews_two_minute_certs_three_times(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """Alone, the daemon renews a 2-minute certificate three times in a row, each before expiry."""
    pebble = pebble_factory(validity_seconds=120)
    state = short_tmp / "state"
    config = write_config(short_tmp / "r.toml", pebble, state, service("web", pebble.http_port))
    daemon = start_daemon(config, short_tmp, daemons)
    audit = state / "audit.jsonl"

    def rotated(rs: list[Record]) -> list[Record]:
        return [r for r in events(rs, "rotation_finished", "web") if r["outcome"] == "rotated"]

    # Wait for the canonical lines, not the activations: the 4th activation precedes its
    # rotation_finished record by a moment.
    records = wait_for(
        audit, lambda rs: len(rotated(rs)) >= 4, 300, "1 issuance + 3 renewals", daemon
    )
    issued = events(records, "certificate_issued", "web")
    finished = rotated(records)
    assert [r["trigger"] for r in finished[:4]] == ["startup", "schedule", "schedule", "schedule"]
    for prev, new in itertools.pairwise(finished[:4]):
        assert new["old_serial"] == prev["new_serial"], "each renewal replaces the one before"
    # Each renewal is activated before the certificate it replaces expires.
    not_after = {r["serial"]: r["not_after"] for r in issued}
    acts = activated(records, "web")
    for prev, new in itertools.pairwise(acts[:4]):
        assert new["ts"] < not_after[prev["serial"]]
    assert daemon.stop() == 0


def test_manual_rotate_is_done_by_the_daemon_with_caller_uid(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """`rotatord rotate web --force` while the daemon runs goes through its socket, uid audited."""
    config, audit, daemon = issued_web_daemon(pebble_server, short_tmp, daemons)

    result = run_cli(config, "rotate", "web", "--force")
    assert result.returncode == 0, result.stderr
    assert "done by the running daemon" in result.stdout
    records = read_audit(audit)
    manual = [r for r in events(records, "rotation_finished", "web") if r["trigger"] == "manual"]
    assert len(manual) == 1
    assert manual[0]["uid"] == os.getuid()
    assert manual[0]["outcome"] == "rotated"
    requests = events(records, "control_request")
    assert any(r["verb"] == "rotate" and r["uid"] == os.getuid() for r in requests)
    # The daemon's process did it: every record of that rotation predates the CLI's exit and
    # the CLI process never opened the store itself (its output says so); status agrees.
    status = json.loads(run_cli(config, "status", "--json").stdout)
    assert status["source"] == "daemon"
    assert status["services"][0]["serial"] == manual[0]["new_serial"]
    assert daemon.stop() == 0


def test_control_socket_refuses_uid_not_allowed(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A caller whose uid is not in control_allowed_uids is refused, and the refusal audited."""
    state = short_tmp / "state"
    config = write_config(
        short_tmp / "r.toml",
        pebble_server,
        state,
        service("web", pebble_server.http_port),
        "control_allowed_uids = [54321]",
    )
    daemon = start_daemon(config, short_tmp, daemons)
    result = run_cli(config, "rotate", "web", "--force")
    assert result.returncode == 4  # refused: uid not in control_allowed_uids
    assert "not allowed" in result.stderr
    refused = [
        r for r in events(read_audit(state / "audit.jsonl"), "control_request") if not r["allowed"]
    ]
    assert refused and refused[0]["uid"] == os.getuid()
    assert daemon.stop() == 0


def test_hot_config_add_service_and_reject_broken_edit(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A rename-save adds a service that gets its cert; a broken edit is rejected and audited."""
    pebble = pebble_factory(validity_seconds=20)
    state = short_tmp / "state"
    cfg = short_tmp / "r.toml"
    write_config(cfg, pebble, state, service("web", pebble.http_port))
    daemon = start_daemon(cfg, short_tmp, daemons)
    audit = state / "audit.jsonl"
    wait_for(audit, lambda rs: len(activated(rs, "web")) >= 1, 60, "web issued", daemon)

    # Editors save by writing a new file and renaming it over the old one.
    write_config(
        cfg, pebble, state, service("web", pebble.http_port) + service("api", pebble.http_port)
    )
    records = wait_for(audit, lambda rs: len(activated(rs, "api")) >= 1, 60, "api issued", daemon)
    loaded = events(records, "config_loaded")
    assert loaded and loaded[-1]["added"] == ["api"]

    broken = cfg.read_text().replace('account = "pebble"', 'account = "nope"', 1)
    broken = broken.replace("[services.api]", '[services.api]\nkey_type = "dsa-512"')
    tmp = cfg.with_name("r.toml.new")
    tmp.write_text(broken)
    tmp.replace(cfg)
    records = wait_for(
        audit, lambda rs: bool(events(rs, "config_rejected")), 30, "rejection", daemon
    )
    problems = events(records, "config_rejected")[-1]["problems"]
    assert any("services.web.account" in p for p in problems)
    assert any("services.api.key_type" in p for p in problems)

    # The old config keeps running: web renews again (20-second certificates).
    seen = len(activated(records, "web"))
    wait_for(
        audit, lambda rs: len(activated(rs, "web")) > seen, 60, "web renews after rejection", daemon
    )
    assert daemon.stop() == 0


def test_sighup_reload_and_sigterm_exit_zero(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """SIGHUP re-reads the config (audited config_loaded); SIGTERM exits 0 after a clean stop."""
    _config, audit, daemon = issued_web_daemon(pebble_server, short_tmp, daemons)
    daemon.signal(signal.SIGHUP)
    wait_for(audit, lambda rs: bool(events(rs, "config_loaded")), 30, "config_loaded", daemon)
    assert daemon.stop() == 0
    assert events(read_audit(audit), "daemon_stopped")
    assert not (audit.parent / "ctl.sock").exists()


def test_second_daemon_on_same_state_refuses(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A second daemon on the same state dir exits 1 and says another daemon runs."""
    state = short_tmp / "state"
    config = write_config(
        short_tmp / "r.toml", pebble_server, state, service("web", pebble_server.http_port)
    )
    daemon = start_daemon(config, short_tmp, daemons)
    second = run_cli(config, "run", timeout=30)
    assert second.returncode == 1
    assert "another rotatord daemon is running" in second.stderr
    assert daemon.stop() == 0


def test_retry_ladder_persists_across_restart_and_reregisters(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """CA down: retries climb the ladder, the count survives a daemon restart, and once the CA
    is back (new CA, our account unknown) the account is re-registered and renewal succeeds."""
    pebble = pebble_factory()
    state = short_tmp / "state"
    cfg = short_tmp / "r.toml"
    ladder = 'retry_ladder = ["5s", "6s", "7s"]'
    write_config(cfg, pebble, state, service("web", pebble.http_port), ladder)
    assert run_cli(cfg, "rotate", "web").returncode == 0
    regr = json.loads((state / "accounts" / "pebble" / "regr.json").read_text())

    pebble.pause()
    # A config change (one more name) makes the certificate due at once.
    two_names = ("web.example.test", "www.web.example.test")
    write_config(cfg, pebble, state, service("web", pebble.http_port, domains=two_names), ladder)
    audit = state / "audit.jsonl"
    daemon = start_daemon(cfg, short_tmp, daemons)
    records = wait_for(
        audit, lambda rs: len(events(rs, "rotation_failed", "web")) >= 2, 60, "2 failures", daemon
    )
    assert daemon.stop() == 0

    daemon = start_daemon(cfg, short_tmp, daemons)
    records = wait_for(
        audit, lambda rs: len(events(rs, "rotation_failed", "web")) >= 3, 60, "3rd failure", daemon
    )
    failures = events(records, "rotation_failed", "web")
    assert [f["failures"] for f in failures[:3]] == [1, 2, 3], "the count survived the restart"
    steps = [5, 6, 7]
    for f, step in zip(failures[:3], steps, strict=True):
        delta = datetime.fromisoformat(f["next_attempt"]) - datetime.fromisoformat(f["attempt_at"])
        assert delta == timedelta(seconds=step)
        assert f["retryable"] is True
    for prev, nxt in itertools.pairwise(failures[:3]):
        assert nxt["attempt_at"] >= prev["next_attempt"], "no retry before its time"

    pebble.resume()
    records = wait_for(
        audit,
        lambda rs: any(
            r["outcome"] == "rotated" for r in events(rs, "rotation_finished", "web")[1:]
        ),
        60,
        "renewal after the CA came back",
        daemon,
    )
    new_regr = json.loads((state / "accounts" / "pebble" / "regr.json").read_text())
    assert new_regr["uri"] != regr["uri"], "the account was registered again at the new CA"
    status = json.loads((state / "services" / "web" / "status.json").read_text())
    assert status["failures"] == 0
    assert daemon.stop() == 0
