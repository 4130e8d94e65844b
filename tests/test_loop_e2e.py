"""Acceptance tests for the daemon's control loop: the real ``rotatord run`` against real Pebble
(and nginx), black box (audit log, ``rotatord status --json``, what the CA saw, what nginx serves).

What they pin down: the loop never orders faster than its floors (``min_order_interval``, the
retry ladder) whatever the config or the CA says; a failure that cannot even be recorded on disk
is still shown by status and retried on the ladder; storage faults never crash the daemon and
heal without a restart; a rotation cut short by SIGKILL or SIGTERM is finished (reload included)
at the next start; a CA that comes back as a new CA renews every service.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography import x509

from pebble import PebbleFactory, PebbleServer
from rotatord.core.text import serial_text
from tests.daemon_harness import (
    DaemonProcess,
    Record,
    events,
    read_audit,
    run_cli,
    service,
    wait_for,
)
from tests.loop_harness import (
    FAST_RETRIES,
    CaFront,
    ReadOnlyBind,
    Reply,
    SlowReload,
    between,
    cert_fingerprint,
    daemon_status,
    fill_up,
    loop_config,
    parse_time,
    poll,
    rotate_in_background,
    rotated,
    served_fingerprint,
    status_docs,
    tmpfs,
    ts,
)
from tests.servers import Nginx, Server, require_binary

pytestmark = pytest.mark.pebble

ENOSPC_TEXT: Final = os.strerror(errno.ENOSPC)  # "No space left on device"
EROFS_TEXT: Final = os.strerror(errno.EROFS)  # "Read-only file system"
ONE_NAME: Final = ("web.example.test",)
TWO_NAMES: Final = ("web.example.test", "www.web.example.test")
SNI: Final = "web.example.test"
#: The floor of the fast retry settings (FAST_RETRIES): min_order_interval and the first step.
FLOOR: Final = timedelta(seconds=20)
#: Slack for "X happened at least N s after Y" between two audit timestamps: the loop may stamp
#: its own order time a moment before it writes the ``rotation_started`` record.
STAMP_SLACK: Final = timedelta(seconds=1)


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """TLS servers a test started; stopped at teardown."""
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


@pytest.fixture
def state_tmpfs(short_tmp: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs at ``short_tmp/state``. Request it before ``daemons``, so the daemons are
    killed before it is unmounted."""
    with tmpfs(short_tmp / "state", "1m") as mountpoint:
        yield mountpoint


@pytest.fixture
def state_bind(short_tmp: Path) -> Iterator[ReadOnlyBind]:
    """``short_tmp/state``, which the test can turn read-only (a bind mount over it) and back.
    Request it before ``daemons``, so the daemons are killed before it is unmounted."""
    path = short_tmp / "state"
    path.mkdir()
    bind = ReadOnlyBind(path)
    try:
        yield bind
    finally:
        bind.close()


def start_daemon(config: Path, workdir: Path, daemons: list[DaemonProcess]) -> DaemonProcess:
    daemon = DaemonProcess(config, workdir)
    daemons.append(daemon)
    daemon.start()
    return daemon


def now() -> datetime:
    return datetime.now(UTC)


def leaf(state: Path, name: str = "web") -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        (state / "services" / name / "current" / "cert.pem").read_bytes()
    )


def leaf_names(cert: x509.Certificate) -> tuple[str, ...]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return tuple(sorted(san.get_values_for_type(x509.DNSName)))


def in_flight(records: list[Record], name: str) -> bool:
    """True while a rotation of ``name`` has started and not yet written its canonical line."""
    started = {r["rotation_id"] for r in events(records, "rotation_started", name)}
    finished = {r["rotation_id"] for r in events(records, "rotation_finished", name)}
    return bool(started - finished)


def quiet_status(
    config: Path, audit: Path, names: tuple[str, ...], daemon: DaemonProcess
) -> tuple[dict[str, dict[str, Any]], datetime, list[Record]]:
    """A daemon status snapshot taken while none of ``names`` was rotating (a rotation starting
    during the call makes it try again), with the time the answer was in and the audit then."""

    def attempt() -> tuple[dict[str, dict[str, Any]], datetime, list[Record]] | None:
        before = wait_for(
            audit,
            lambda rs: not any(in_flight(rs, n) for n in names),
            60,
            "no rotation in flight",
            daemon,
        )
        source, docs = status_docs(config)
        answered = now()
        assert source == "daemon", source
        after = read_audit(audit)
        starts = [len(events(rs, "rotation_started")) for rs in (before, after)]
        return (docs, answered, after) if starts[0] == starts[1] else None

    return poll(attempt, 120, "a status snapshot with no rotation running", daemon, interval=0)


def no_traceback(daemon: DaemonProcess) -> bool:
    """True while the daemon's output (stdout and stderr) holds no Python traceback; fails the
    test with the traceback as soon as one shows up."""
    output = daemon.log_path.read_text() if daemon.log_path.exists() else ""
    at = output.find("Traceback")
    assert at < 0, f"the daemon logged a traceback:\n{output[max(0, at - 500) : at + 3000]}"
    return True


def assert_healthy(doc: dict[str, Any], answered: datetime) -> None:
    """The service's last rotation succeeded and its next action lies in the future."""
    assert doc["last_result"] == "rotated", doc
    assert doc["failures"] == 0, doc
    at = parse_time(doc["next_action"]["at"])
    assert at > answered, f"next action {doc['next_action']} is not after {answered.isoformat()}"


def nginx_site(
    pebble: PebbleServer, tmp: Path, servers: list[Server], reload: SlowReload
) -> tuple[Path, Path, Nginx]:
    """``web`` with a first certificate (issued without a daemon), a real nginx serving it from
    ``current/``, and a config whose reload is ``reload`` and whose probe is that nginx."""
    state = tmp / "state"
    cfg = tmp / "r.toml"

    def write(extra: str) -> None:
        loop_config(
            cfg,
            directory=pebble.directory_url,
            ca_bundle=pebble.ca_bundle,
            state=state,
            services=service("web", pebble.http_port, "probe_deadline = 10") + extra,
        )

    write("")
    first = run_cli(cfg, "rotate", "web")
    assert first.returncode == 0, first.stderr
    nginx = Nginx(
        require_binary("nginx"), tmp / "nginx", {SNI: state / "services" / "web" / "current"}
    )
    nginx.start()
    servers.append(nginx)
    write(reload.toml(nginx) + f'\n[[services.web.probe]]\naddress = "127.0.0.1:{nginx.port}"\n')
    return cfg, state, nginx


def manual_activation(records: list[Record], since: datetime) -> Record | None:
    """The first activation of ``web`` by a manual rotation since ``since``, if any yet."""
    acts = between(events(records, "certificate_activated", "web"), since)
    manual = [r for r in acts if r["trigger"] == "manual"]
    return manual[0] if manual else None


# --------------------------------------------------------------------------------------------
# 1. renew_before longer than the lifetime
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_renew_before_longer_than_lifetime_does_not_reorder_at_once(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A renew_before of 10 min on 60-second certificates (always "due") gets at most 2
    certificates in 60 s of a running daemon, which stays healthy, and its next order comes when
    status said, ≥ 1 min (the default min_order_interval) after the last one."""
    pebble = pebble_factory(validity_seconds=60)
    state = short_tmp / "state"
    audit = state / "audit.jsonl"
    config = loop_config(
        short_tmp / "r.toml",
        directory=pebble.directory_url,
        ca_bundle=pebble.ca_bundle,
        state=state,
        services=service("web", pebble.http_port, 'renew_before = "10m"'),
    )
    window = 60.0
    start_wall, start = now(), time.monotonic()
    daemon = start_daemon(config, short_tmp, daemons)

    def at_most_two_issued() -> list[Record]:
        records = read_audit(audit)
        issued = events(records, "certificate_issued", "web")
        elapsed = time.monotonic() - start
        assert len(issued) <= 2, f"{len(issued)} certificates after {elapsed:.1f} s"
        return records

    # Status right after the first issuance (a fixed point of the cycle): healthy, and the
    # next action it announces is checked against what really happens below.
    wait_for(audit, lambda rs: bool(rotated(rs, "web")), 30, "the first issuance", daemon)
    docs, answered, records = quiet_status(config, audit, ("web",), daemon)
    assert_healthy(docs["web"], answered)
    announced = docs["web"]["next_action"]
    first_start = ts(events(records, "rotation_started", "web")[0])

    # Bounded wait over the rest of the window (measured with time.monotonic): the assertion
    # is that no third certificate is issued during it; the audit is read all along.
    while (left := start + window - time.monotonic()) > 0:
        at_most_two_issued()
        time.sleep(min(0.2, left))
    end_wall = now()
    records = at_most_two_issued()
    issued = between(events(records, "certificate_issued", "web"), start_wall, end_wall)
    assert 1 <= len(issued) <= 2, [ts(r).isoformat() for r in issued]

    # Next: the second order comes when status said, ≥ min_order_interval (1m) after the first.
    records = wait_for(
        audit,
        lambda rs: len(events(rs, "rotation_started", "web")) >= 2,
        max(0.0, (first_start + timedelta(minutes=1) - now()).total_seconds()) + 30,
        "the second order",
        daemon,
    )
    second_start = ts(events(records, "rotation_started", "web")[1])
    assert second_start >= first_start + timedelta(minutes=1) - STAMP_SLACK, (
        f"the second order started {second_start - first_start} after the first, less than "
        "min_order_interval (1m)"
    )
    assert abs(second_start - parse_time(announced["at"])) <= timedelta(seconds=5), (
        f"right after the first issuance status announced the next action {announced}, but "
        f"the next order started at {second_start.isoformat()}"
    )
    # And afterwards: still healthy, the installed pair is the latest, the next action ahead.
    docs, answered, records = quiet_status(config, audit, ("web",), daemon)
    assert_healthy(docs["web"], answered)
    assert docs["web"]["serial"] == events(records, "certificate_activated", "web")[-1]["serial"]
    assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# 2. The state dir's filesystem is full
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_state_filesystem_is_retried_on_the_ladder_and_heals_without_restart(
    pebble_server: PebbleServer,
    short_tmp: Path,
    state_tmpfs: Path,
    daemons: list[DaemonProcess],
) -> None:
    """With the state dir's tmpfs full for 30 s while the certificate is due, the CA sees at most
    3 orders, status (from the daemon) shows the ENOSPC failure although status.json cannot be
    written, and once space is freed the service gets its certificate without a restart."""
    state = state_tmpfs
    logs = short_tmp / "log"  # audit log and control socket: outside the full filesystem
    audit = logs / "audit.jsonl"
    with CaFront(pebble_server) as front:

        def write(domains: tuple[str, ...]) -> Path:
            return loop_config(
                short_tmp / "r.toml",
                directory=front.directory_url,
                ca_bundle=front.ca_bundle,
                state=state,
                log_dir=logs,
                services=service("web", pebble_server.http_port, domains=domains),
                daemon_extra=FAST_RETRIES,
            )

        config = write(ONE_NAME)
        daemon = start_daemon(config, short_tmp, daemons)
        wait_for(audit, lambda rs: bool(rotated(rs, "web")), 60, "the first issuance", daemon)
        before = leaf(state)
        filler = fill_up(state)

        # One more name makes the certificate due at once; the 30 s window starts here.
        window = 30.0
        w_wall, w_start = now(), time.monotonic()
        write(TWO_NAMES)
        # Bounded wait over the window (measured with time.monotonic): the assertion is that
        # the CA does not see a 4th order during it.
        while (left := w_start + window - time.monotonic()) > 0:
            orders = front.new_orders(w_start, status=201)
            assert len(orders) <= 3, f"{len(orders)} orders after {window - left:.1f} s"
            time.sleep(min(0.2, left))
        w_end = time.monotonic()
        assert len(front.new_orders(w_start, w_end, status=201)) <= 3

        records = read_audit(audit)
        failed = between(events(records, "rotation_failed", "web"), w_wall)
        assert failed, "the due certificate was never attempted while the disk was full"
        assert all(ENOSPC_TEXT in r["error"] for r in failed), [r["error"] for r in failed]
        doc = daemon_status(config, "web")
        assert doc["last_result"] == "failed", doc
        assert doc["failures"] >= 1, doc
        assert "no space" in (doc["last_error"] or "").lower(), doc
        assert doc["status_persisted"] is False, doc
        assert leaf(state).serial_number == before.serial_number, "the old pair stays current"

        # Next: space comes back; the daemon's own retry installs the two-name certificate.
        filler.unlink()
        freed_wall = now()
        records = wait_for(
            audit,
            lambda rs: bool(between(rotated(rs, "web"), freed_wall)),
            90,
            "a rotation after the space was freed",
            daemon,
        )
        [done] = between(rotated(records, "web"), freed_wall)
        assert leaf_names(leaf(state)) == TWO_NAMES
        assert serial_text(leaf(state).serial_number) == done["new_serial"]
        docs, answered, records = quiet_status(config, audit, ("web",), daemon)
        assert_healthy(docs["web"], answered)
        assert docs["web"]["serial"] == done["new_serial"]
        assert docs["web"]["status_persisted"] is True
        # One order per attempt at most, for the whole episode.
        attempts = between(events(records, "rotation_started", "web"), w_wall)
        assert len(front.new_orders(w_start, status=201)) <= len(attempts)
        assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# 3. The state dir is read-only
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_read_only_state_dir_fails_without_traceback_and_heals_without_restart(
    pebble_server: PebbleServer,
    short_tmp: Path,
    state_bind: ReadOnlyBind,
    daemons: list[DaemonProcess],
) -> None:
    """A read-only state dir makes the due rotation fail with no Python traceback in the
    daemon's output, status (from the daemon) shows the failure, and once the dir is writable
    again the service gets its certificate without a restart."""
    state = state_bind.path
    logs = short_tmp / "log"  # audit log and control socket: outside the read-only dir
    audit = logs / "audit.jsonl"
    with CaFront(pebble_server) as front:

        def write(domains: tuple[str, ...]) -> Path:
            return loop_config(
                short_tmp / "r.toml",
                directory=front.directory_url,
                ca_bundle=front.ca_bundle,
                state=state,
                log_dir=logs,
                services=service("web", pebble_server.http_port, domains=domains),
                daemon_extra=FAST_RETRIES,
            )

        config = write(ONE_NAME)
        daemon = start_daemon(config, short_tmp, daemons)
        wait_for(audit, lambda rs: bool(rotated(rs, "web")), 60, "the first issuance", daemon)
        before = leaf(state)

        state_bind.read_only()
        ro_wall = now()
        write(TWO_NAMES)  # due at once: one more name
        records = wait_for(
            audit,
            lambda rs: (
                no_traceback(daemon)
                and bool(between(events(rs, "rotation_failed", "web"), ro_wall))
            ),
            60,
            "a failed attempt on the read-only state dir",
            daemon,
        )
        doc = daemon_status(config, "web")
        assert doc["last_result"] == "failed", doc
        assert doc["failures"] >= 1, doc
        assert EROFS_TEXT in (doc["last_error"] or ""), doc
        assert doc["status_persisted"] is False, doc
        assert leaf(state).serial_number == before.serial_number

        # Next: writable again; the daemon's own retry installs the two-name certificate.
        state_bind.writable()
        rw_wall = now()
        records = wait_for(
            audit,
            lambda rs: no_traceback(daemon) and bool(between(rotated(rs, "web"), rw_wall)),
            90,
            "a rotation once the state dir is writable again",
            daemon,
        )
        [done] = between(rotated(records, "web"), rw_wall)
        assert leaf_names(leaf(state)) == TWO_NAMES
        docs, answered, records = quiet_status(config, audit, ("web",), daemon)
        assert_healthy(docs["web"], answered)
        assert docs["web"]["serial"] == done["new_serial"]
        assert docs["web"]["status_persisted"] is True
        issued = events(records, "certificate_issued", "web")
        failed_ro = between(events(records, "rotation_failed", "web"), ro_wall, rw_wall)
        assert len(between(issued, ro_wall, rw_wall)) <= len(failed_ro), "orders nobody retried"
        assert len(between(issued, rw_wall)) == 1, "exactly one certificate after the repair"
        assert daemon.stop() == 0
    assert no_traceback(daemon)


# --------------------------------------------------------------------------------------------
# 4. SIGKILL between activation and reload
# --------------------------------------------------------------------------------------------


def test_sigkill_during_reload_is_finished_at_next_start(
    pebble_server: PebbleServer,
    short_tmp: Path,
    servers: list[Server],
    daemons: list[DaemonProcess],
) -> None:
    """SIGKILL right after a new certificate is activated, while its slow reload runs: within
    20 s of the next start the reload runs for that version, nginx serves it, and the rotation
    is finished with resumed: true, without ordering another certificate."""
    reload = SlowReload(short_tmp / "reloads.log", short_tmp / "reload.pid")
    cfg, state, nginx = nginx_site(pebble_server, short_tmp, servers, reload)
    audit = state / "audit.jsonl"
    old_fp = served_fingerprint(nginx.port, SNI)
    assert old_fp == cert_fingerprint(state / "services" / "web" / "current" / "cert.pem")

    daemon = start_daemon(cfg, short_tmp, daemons)
    asked = now()
    cli = rotate_in_background(cfg, "web", "--force")
    try:
        records = wait_for(
            audit,
            lambda rs: manual_activation(rs, asked) is not None,
            60,
            "the activation",
            daemon,
        )
        act = manual_activation(records, asked)
        assert act is not None
        version = act["version"]
        poll(lambda: reload.started(version), 30, "the slow reload to start", daemon)
        daemon.kill()  # SIGKILL
        reload.kill_leftover()  # and, as systemd does, whatever it left in the cgroup
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.communicate(timeout=60)

    # The kill landed between the flip of `current` and the end of the reload.
    assert not reload.done(version)
    assert served_fingerprint(nginx.port, SNI) == old_fp
    assert os.readlink(state / "services" / "web" / "current").endswith(version)
    killed = read_audit(audit)
    finished = events(killed, "rotation_finished", "web")
    assert not [r for r in finished if r["rotation_id"] == act["rotation_id"]]
    new_fp = cert_fingerprint(state / "services" / "web" / "versions" / version / "cert.pem")

    restart_wall, restart = now(), time.monotonic()
    daemon = start_daemon(cfg, short_tmp, daemons)

    def left() -> float:
        return max(0.0, restart + 20 - time.monotonic())

    records = wait_for(
        audit,
        lambda rs: any(
            r.get("resumed") is True for r in between(events(rs, "rotation_finished"), restart_wall)
        ),
        left(),
        "the interrupted rotation to be finished (resumed: true)",
        daemon,
    )
    poll(lambda: reload.done(version), left(), "the reload for the new version", daemon)
    poll(
        lambda: served_fingerprint(nginx.port, SNI) == new_fp,
        left(),
        "nginx to serve the new certificate",
        daemon,
    )
    [resumed] = [
        r
        for r in between(events(records, "rotation_finished", "web"), restart_wall)
        if r.get("resumed") is True
    ]
    assert resumed["outcome"] == "rotated", resumed
    assert resumed["new_serial"] == act["serial"], resumed
    assert between(events(records, "reload_succeeded", "web"), restart_wall), "no reload audited"

    # Next: the resume ordered nothing; the pair is healthy and renewal is years away.
    records = read_audit(audit)
    assert len(events(records, "certificate_issued", "web")) == 2  # first issuance + forced
    assert reload.lines().count(f"done {version}") == 1
    docs, answered, _ = quiet_status(cfg, audit, ("web",), daemon)
    assert docs["web"]["serial"] == act["serial"]
    assert_healthy(docs["web"], answered)
    assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# 5. SIGTERM during a rotation requested over the control socket
# --------------------------------------------------------------------------------------------


def test_sigterm_during_manual_rotation_finishes_it_now_or_at_next_start(
    pebble_server: PebbleServer,
    short_tmp: Path,
    servers: list[Server],
    daemons: list[DaemonProcess],
) -> None:
    """SIGTERM while a `rotate --force` sent over the control socket is in its slow reload:
    the daemon finishes it before exiting 0 (the CLI gets its reply) or finishes it at the next
    start (resumed: true); either way the reload then ran once for the current version and nginx
    serves it."""
    reload = SlowReload(short_tmp / "reloads.log", short_tmp / "reload.pid")
    cfg, state, nginx = nginx_site(pebble_server, short_tmp, servers, reload)
    audit = state / "audit.jsonl"

    daemon = start_daemon(cfg, short_tmp, daemons)
    asked = now()
    cli = rotate_in_background(cfg, "web", "--force")
    try:
        records = wait_for(
            audit,
            lambda rs: manual_activation(rs, asked) is not None,
            60,
            "the activation",
            daemon,
        )
        act = manual_activation(records, asked)
        assert act is not None
        version = act["version"]
        poll(lambda: reload.started(version), 30, "the slow reload to start", daemon)
        assert daemon.proc is not None
        daemon.signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=60)
        # With KillMode=mixed systemd kills what the daemon left in its cgroup once it is gone.
        reload.kill_leftover()
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate(timeout=60)
    assert code == 0, daemon.log_tail()

    records = read_audit(audit)
    mine = [
        r
        for r in events(records, "rotation_finished", "web")
        if r["rotation_id"] == act["rotation_id"]
    ]
    if mine:
        # Finished before exiting: the reply reached the CLI, the canonical line precedes the
        # daemon's last record.
        assert mine[0]["outcome"] == "rotated", mine[0]
        assert cli.returncode == 0, (out, err)
        assert "rotated" in out, (out, err)
        assert ts(mine[0]) <= ts(events(records, "daemon_stopped")[-1])
        assert reload.done(version)
    else:
        # Cut short: the next start finishes it within 20 s.
        restart_wall, restart = now(), time.monotonic()
        daemon = start_daemon(cfg, short_tmp, daemons)
        records = wait_for(
            audit,
            lambda rs: any(
                r.get("resumed") is True
                for r in between(events(rs, "rotation_finished", "web"), restart_wall)
            ),
            20,
            "the interrupted rotation to be finished at the next start (resumed: true)",
            daemon,
        )
        [resumed] = [
            r
            for r in between(events(records, "rotation_finished", "web"), restart_wall)
            if r.get("resumed") is True
        ]
        assert resumed["outcome"] == "rotated", resumed
        assert resumed["new_serial"] == act["serial"], resumed
        poll(
            lambda: reload.done(version),
            max(0.0, restart + 20 - time.monotonic()),
            "the reload for the new version",
            daemon,
        )

    # Either way: current is the new version, its reload ran exactly once, nginx serves it.
    assert os.readlink(state / "services" / "web" / "current").endswith(version)
    assert reload.lines().count(f"done {version}") == 1, reload.lines()
    new_fp = cert_fingerprint(state / "services" / "web" / "versions" / version / "cert.pem")
    poll(lambda: served_fingerprint(nginx.port, SNI) == new_fp, 10, "nginx to serve the new cert")
    # Next: nothing more was ordered, the pair is healthy and renewal is years away.
    records = read_audit(audit)
    assert len(events(records, "certificate_issued", "web")) == 2  # first issuance + forced
    _source, docs = status_docs(cfg)
    answered = now()
    assert docs["web"]["serial"] == act["serial"]
    assert_healthy(docs["web"], answered)
    if daemon.proc is not None and daemon.proc.poll() is None:
        assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# 6. The CA is down for 2 minutes and comes back as a new CA
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ca_down_two_minutes_retries_on_the_ladder_then_new_ca_renews_all(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """With the CA down for 2 minutes while 3 services' 60-second certificates expire, each
    service's attempts stay ≥ 20 s apart (at most window/20 s of them), and a new Pebble at the
    same address (accounts forgotten) renews every service within 5 minutes of its return."""
    pebble = pebble_factory(validity_seconds=60)
    names = ("a", "b", "c")
    state = short_tmp / "state"
    audit = state / "audit.jsonl"
    config = loop_config(
        short_tmp / "r.toml",
        directory=pebble.directory_url,
        ca_bundle=pebble.ca_bundle,
        state=state,
        services="".join(service(n, pebble.http_port) for n in names),
        daemon_extra=FAST_RETRIES,
    )
    daemon = start_daemon(config, short_tmp, daemons)
    wait_for(
        audit, lambda rs: all(rotated(rs, n) for n in names), 60, "the first issuances", daemon
    )
    account_before = json.loads((state / "accounts" / "pebble" / "regr.json").read_text())

    window = 120.0
    max_attempts = int(window / FLOOR.total_seconds())
    pebble.pause()
    down_wall, down = now(), time.monotonic()

    def attempts(records: list[Record], name: str, end: datetime | None = None) -> list[Record]:
        return between(events(records, "rotation_started", name), down_wall, end)

    # Bounded wait: the CA stays down for exactly this window (measured with time.monotonic);
    # the assertion is that no service attempts more often than the floor allows during it.
    while (left := down + window - time.monotonic()) > 0:
        records = read_audit(audit)
        for n in names:
            assert len(attempts(records, n)) <= max_attempts, (n, len(attempts(records, n)))
        time.sleep(min(0.5, left))
    up_wall = now()
    pebble.resume()  # same ports, new CA: the account and every certificate are gone
    up = time.monotonic()

    records = read_audit(audit)
    for n in names:
        tried = attempts(records, n, up_wall)
        assert 2 <= len(tried) <= max_attempts, (n, [ts(r).isoformat() for r in tried])
        for prev, nxt in itertools.pairwise(tried):
            assert ts(nxt) - ts(prev) >= FLOOR - STAMP_SLACK, (n, ts(prev), ts(nxt))
        for failure in between(events(records, "rotation_failed", n), down_wall, up_wall):
            step = parse_time(failure["next_attempt"]) - parse_time(failure["attempt_at"])
            assert step >= FLOOR, (n, failure)
        last_issued = [r for r in events(records, "certificate_issued", n) if ts(r) < down_wall]
        assert parse_time(last_issued[-1]["not_after"]) < up_wall, "the certificate did not expire"

    records = wait_for(
        audit,
        lambda rs: all(between(rotated(rs, n), up_wall) for n in names),
        300,
        "every service renewed by the new CA",
        daemon,
    )
    assert time.monotonic() - up <= 300
    account_after = json.loads((state / "accounts" / "pebble" / "regr.json").read_text())
    assert account_after["uri"] != account_before["uri"], "the account was not registered again"
    intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem())
    for n in names:
        assert leaf(state, n).issuer == intermediate.subject, f"{n} is not from the new CA"

    # Next: every service is healthy with its next action ahead.
    docs, answered, _ = quiet_status(config, audit, names, daemon)
    for n in names:
        assert_healthy(docs[n], answered)
    assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# 7. 429 with an absurd Retry-After on a first issuance
# --------------------------------------------------------------------------------------------


def test_rate_limited_first_issuance_retries_within_an_hour(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """A first issuance answered 429 rateLimited with Retry-After: 99999999 (3 years) is shown
    as failed by status, with the next attempt at most 1 h away (no certificate, so no wait may
    be longer), and nothing more is ordered meanwhile."""
    state = short_tmp / "state"
    audit = state / "audit.jsonl"
    limited = Reply(
        429,
        "rateLimited",
        "too many new orders recently (CaFront test reply)",
        (("Retry-After", "99999999"),),
    )
    with CaFront(pebble_server) as front:
        new_order = front.new_order_path
        front.respond = lambda method, path: (
            limited if (method, path) == ("POST", new_order) else None
        )
        config = loop_config(
            short_tmp / "r.toml",
            directory=front.directory_url,
            ca_bundle=front.ca_bundle,
            state=state,
            services=service("web", pebble_server.http_port),
        )
        daemon = start_daemon(config, short_tmp, daemons)
        records = wait_for(
            audit,
            lambda rs: bool(events(rs, "rotation_failed", "web")),
            60,
            "the rate-limited first attempt",
            daemon,
        )
        [failure] = events(records, "rotation_failed", "web")
        assert failure["retryable"] is True, failure
        assert "rateLimited" in failure["error"], failure
        step = parse_time(failure["next_attempt"]) - parse_time(failure["attempt_at"])
        assert timedelta(0) < step <= timedelta(hours=1), failure

        doc = daemon_status(config, "web")
        answered = now()
        assert doc["serial"] is None
        assert doc["last_result"] == "failed", doc
        assert doc["failures"] == 1, doc
        assert "rateLimited" in (doc["last_error"] or ""), doc
        at = parse_time(doc["next_action"]["at"])
        assert answered < at <= answered + timedelta(hours=1), doc["next_action"]

        # Next: the CA saw that one order and no other; nothing was issued.
        assert [s.status for s in front.new_orders()] == [429]
        assert not events(read_audit(audit), "certificate_issued")
        assert daemon.stop() == 0
