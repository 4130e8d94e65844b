"""End to end: ``rotatord plan`` against the real daemon (real Pebble) lists exactly what a
changed config would do, and does none of it; ``rotatord reload`` prints the same summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from pebble import PebbleServer
from tests.daemon_harness import DaemonProcess, events, read_audit, run_cli, service, wait_for
from tests.daemon_harness import write_config as write

pytestmark = pytest.mark.pebble


def test_plan_lists_exactly_the_changes_and_runs_nothing(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """Five services; the candidate adds a name, adds a service, removes one, changes a key type
    and adds an output, and moves the metrics listener: plan names each (and only those), the
    audit log shows no rotation and nothing is written; reload then says the same and acts."""
    p = pebble_server.http_port
    state = short_tmp / "state"
    out = short_tmp / "out.pem"
    running = write(
        short_tmp / "r.toml",
        pebble_server,
        state,
        "".join(service(n, p) for n in ("web", "old", "k", "keep", "out")),
    )
    daemon = DaemonProcess(running, short_tmp)
    daemons.append(daemon)
    daemon.start()
    audit = state / "audit.jsonl"
    names = ("web", "old", "k", "keep", "out")
    wait_for(
        audit,
        lambda rs: all(events(rs, "rotation_finished", n) for n in names),
        60,
        "five issuances finished",
        daemon,
    )
    candidate = write(
        short_tmp / "new.toml",
        pebble_server,
        state,
        service("web", p, domains=("web.example.test", "www.web.example.test"))
        + service("api", p)
        + service("k", p, 'key_type = "ecdsa-p384"')
        + service("keep", p)
        + service("out", p, f'[[services.out.outputs]]\npath = "{out}"\nformat = "fullchain"\n')
        + '\n[metrics]\nlisten = "127.0.0.1:1"\n',
    )
    before = len(read_audit(audit))
    result = run_cli(running, "plan", str(candidate))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "api: issue: no certificate installed",
        "k: re-key: key type ecdsa-p256 -> ecdsa-p384",
        "old: stop managing: no longer configured; its files stay on disk, nothing is revoked",
        f"out: new output: {out} (fullchain), at the next rotation ("
        + lines[3].split("at the next rotation (", 1)[1],
    ]
    assert lines[4:] == [
        "web: issue: names +www.web.example.test",
        "restart needed for: metrics.listen",
    ]
    after = read_audit(audit)[before:]
    assert [r["event"] for r in after] == ["control_request"], "plan ran nothing"
    assert after[0]["verb"] == "plan"
    assert not out.exists()
    assert not (state / "services" / "api").exists()

    # Applying the same file (the daemon's watcher sees it): the reload records the same plan,
    # then does it; a reload asked for afterwards has nothing left to change.
    candidate.replace(running)
    loaded = wait_for(
        audit, lambda rs: bool(events(rs[before:], "config_loaded")), 30, "the reload", daemon
    )
    assert events(loaded[before:], "config_loaded")[0]["plan"] == lines
    reload = run_cli(running, "reload")
    assert reload.returncode == 0, reload.stderr
    assert reload.stdout.splitlines()[1:] == ["restart needed for: metrics.listen"]
    wait_for(
        audit,
        lambda rs: (
            bool(events(rs[before:], "certificate_activated", "api"))
            and bool(events(rs[before:], "certificate_activated", "k"))
        ),
        60,
        "api issued and k re-keyed",
        daemon,
    )
    assert daemon.stop() == 0
