"""End to end: a hostile CA front (pebble/hostile_front.py) over real Pebble. Each fault is
refused, the old pair stays current, audit and status carry a clear, bounded error, the
rotating process grows by less than 20 MB, the rotation ends within its deadline, and the
next rotation through the healed front works.

These tests need Pebble and fail (never skip) without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pebble import PebbleServer, pebble_available
from pebble.hostile_front import HostileFront, Mode
from rotatord.core.text import MAX_ERROR_CHARS
from tests.daemon_harness import DaemonProcess, events, read_audit, service, write_config

TIMEOUT_S = 4
ORDER_DEADLINE_S = 8
MAX_GROWTH_KB = 20 * 1024
# Python start-up, config load and key generation around the order itself.
STARTUP_SLACK_S = 6.0


@pytest.fixture(autouse=True)
def _require_pebble() -> None:
    if not pebble_available():
        pytest.fail("Pebble is not installed ('apt-get install -y pebble'): these tests must run")


@pytest.fixture
def front(pebble_server: PebbleServer) -> Iterator[HostileFront]:
    with HostileFront(pebble_server) as f:
        yield f


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    maxrss_kb: int


def run_measured(config: Path, tmp: Path, *args: str, timeout: float = 60) -> Run:
    """Run the CLI; return its exit code, output, wall time and peak RSS (from wait4)."""
    out, err = tmp / "out.txt", tmp / "err.txt"
    with out.open("wb") as o, err.open("wb") as e:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rotatord", "-c", str(config), *args], stdout=o, stderr=e
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    return Run(proc.returncode, out.read_text(), err.read_text(), seconds, usage.ru_maxrss)


def current_target(state: Path) -> str:
    return os.readlink(state / "services" / "web" / "current")


UNTRUSTED = "does not verify to a trust anchor"
# (id, fault, what the error says, the account's per-exchange timeout)
FAULTS: list[tuple[str, Mode, str, int]] = [
    ("foreign_leaf", "foreign_leaf", UNTRUSTED, TIMEOUT_S),
    (
        "foreign_leaf_with_ca",
        "foreign_leaf_with_ca",
        UNTRUSTED,
        TIMEOUT_S,
    ),
    ("huge_body", "huge_body", "exceeds 1048576 bytes; refused", TIMEOUT_S),
    ("trickle", "trickle", "did not arrive before the deadline", TIMEOUT_S),
    # timeout longer than order_deadline: the order's deadline ends the trickle
    ("trickle_order_deadline", "trickle", "did not arrive before the deadline", 30),
    (
        "trickle_headers",
        "trickle_headers",
        "cannot reach the CA: no answer before the deadline",
        TIMEOUT_S,
    ),
    ("huge_url", "huge_url", "exceeds 1048576 bytes; refused", TIMEOUT_S),
    ("off_host_url", "off_host_url", "must be https://", TIMEOUT_S),
    ("garbage_pem", "garbage_pem", "not a PEM certificate chain", TIMEOUT_S),
]


@pytest.mark.parametrize(
    ("mode", "fragment", "timeout"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_a_hostile_answer_is_refused_and_the_next_rotation_works(
    front: HostileFront,
    pebble_server: PebbleServer,
    short_tmp: Path,
    mode: Mode,
    fragment: str,
    timeout: int,
) -> None:
    """The fault is refused with a clear bounded error in audit and status, the old pair stays
    current, memory and time stay bounded, and a rotation after the front heals succeeds."""
    state = short_tmp / "state"
    config = write_config(
        short_tmp / "r.toml",
        front.directory_url,
        state,
        service("web", pebble_server.http_port),
        ca_bundle=front.ca_bundle,
        acme_extra=f"timeout = {timeout}\norder_deadline = {ORDER_DEADLINE_S}",
    )
    first = run_measured(config, short_tmp, "rotate", "web")
    assert first.returncode == 0, first.stderr
    old = current_target(state)

    front.mode = mode
    bad = run_measured(config, short_tmp, "rotate", "web", "--force")
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert front.served and front.served[-1][0] == mode
    assert current_target(state) == old
    growth = bad.maxrss_kb - first.maxrss_kb
    assert growth < MAX_GROWTH_KB, f"peak RSS grew by {growth} kB"
    assert bad.seconds < ORDER_DEADLINE_S + STARTUP_SLACK_S, bad.seconds

    records = read_audit(state / "audit.jsonl")
    failed = events(records, "rotation_failed", "web")[-1]
    assert fragment in failed["error"], failed["error"]
    assert len(failed["error"]) <= MAX_ERROR_CHARS + 40
    finished = events(records, "rotation_finished", "web")[-1]
    assert finished["outcome"] == "failed"
    assert finished["duration_ms"] <= ORDER_DEADLINE_S * 1000 + 1500
    status = run_measured(config, short_tmp, "status", "web", "--json")
    (doc,) = json.loads(status.stdout)["services"]
    assert fragment in doc["last_error"]
    assert len(doc["last_error"]) <= MAX_ERROR_CHARS + 40
    print(f"{mode}: {bad.seconds:.2f} s, peak RSS +{growth} kB, error: {failed['error'][:160]}")

    front.mode = "pass"
    good = run_measured(config, short_tmp, "rotate", "web", "--force")
    assert good.returncode == 0, good.stderr
    assert current_target(state) != old


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux: clear_refs "5")."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_the_daemon_refuses_faults_stays_small_and_recovers(
    front: HostileFront,
    pebble_server: PebbleServer,
    short_tmp: Path,
    daemons: list[DaemonProcess],
) -> None:
    """In the long-running daemon: a cached directory pointing newOrder off-host is refused and
    not kept, a 200 MB body leaves the daemon's peak RSS within 20 MB, and once the front heals
    the next rotation through the same daemon works."""
    state = short_tmp / "state"
    config = write_config(
        short_tmp / "r.toml",
        front.directory_url,
        state,
        service("web", pebble_server.http_port),
        ca_bundle=front.ca_bundle,
        acme_extra=f"timeout = {TIMEOUT_S}\norder_deadline = {ORDER_DEADLINE_S}",
    )
    assert run_measured(config, short_tmp, "rotate", "web").returncode == 0
    old = current_target(state)
    front.mode = "off_host_url"
    daemon = DaemonProcess(config, short_tmp)
    daemons.append(daemon)
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid

    refused = run_measured(config, short_tmp, "rotate", "web", "--force")
    assert refused.returncode == 1, refused.stdout
    assert (
        "must be https://"
        in events(read_audit(state / "audit.jsonl"), "rotation_failed")[-1]["error"]
    )
    front.mode = "huge_body"
    before = _status_kb(pid, "VmRSS")
    _reset_peak(pid)
    flooded = run_measured(config, short_tmp, "rotate", "web", "--force")
    assert flooded.returncode == 1, flooded.stdout
    growth = _status_kb(pid, "VmHWM") - before
    assert growth < MAX_GROWTH_KB, f"daemon peak RSS grew by {growth} kB"
    assert current_target(state) == old
    print(f"daemon: 200 MB body refused in {flooded.seconds:.2f} s, peak RSS +{growth} kB")

    front.mode = "pass"
    healed = run_measured(config, short_tmp, "rotate", "web", "--force")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert current_target(state) != old
    assert daemon.stop() == 0
