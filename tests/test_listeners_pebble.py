"""The listeners under load against real Pebble: orders and the daemon keep working.

Marked ``pebble``: these fail (never skip) when CI=true and Pebble is missing. Idle connections
come from a separate process (``tests/flood.py``); waits poll a condition under a deadline.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pebble import PebbleServer
from rotatord.clock import SystemClock
from rotatord.core import keys
from rotatord.core.model import AcmeSpec, Http01Standalone, KeyType
from rotatord.issuing.acme_issuer import AcmeIssuer
from rotatord.issuing.challenges.http01 import HTTP01_LIMITS, StandalonePool
from rotatord.issuing.challenges.solver import Solvers
from rotatord.runtime.control import CONTROL_LIMITS
from tests.daemon_harness import (
    DaemonProcess,
    events,
    run_cli,
    service,
    wait_for,
    write_config,
)
from tests.test_listeners import IDLE, all_accepted, fds, flood, poll, threads

pytestmark = pytest.mark.pebble


def issuer_for(pebble: PebbleServer, tmp: Path, pool: StandalonePool) -> AcmeIssuer:
    spec = AcmeSpec(
        "pebble",
        pebble.directory_url,
        ca_bundle=pebble.ca_bundle,
        trust_roots_url=pebble.roots_url,
    )
    return AcmeIssuer(spec, tmp / "account", SystemClock(), Solvers(pool))


def order(issuer: AcmeIssuer, name: str, port: int) -> float:
    """One real order for ``name`` answered on ``port``; returns its duration in seconds."""
    csr = keys.make_csr(keys.generate_key(KeyType.ECDSA_P256), [name])
    start = time.monotonic()
    issued = issuer.issue(csr, [name], Http01Standalone("127.0.0.1", port))
    assert issued.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    return time.monotonic() - start


def test_order_validates_while_the_http01_port_holds_1000_idle_connections(
    pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """With 1,000 idle connections held on the HTTP-01 port, a real Pebble order still
    validates (Pebble's three concurrent fetches get in) and the listener runs one thread and at
    most its cap of descriptors."""
    port = pebble_server.http_port
    spec = Http01Standalone("127.0.0.1", port)
    pool = StandalonePool(linger=0)
    issuer = issuer_for(pebble_server, short_tmp, pool)
    order(issuer, "warm.example.test", port)  # the account and a pooled connection to Pebble
    base_threads, base_fds = threads(), fds()
    try:
        with pool.serving(spec, {}), flood("--tcp", f"127.0.0.1:{port}", str(IDLE)):
            listener = pool.listener_for(spec)
            assert listener is not None
            poll(lambda: all_accepted(listener), what="every flood connection accepted")
            took = order(issuer, "flooded.example.test", port)
            held_threads, held_fds = threads() - base_threads, fds() - base_fds
        print(
            f"\n[measured] order under {IDLE} idle: {took:.3f}s, extra threads={held_threads}, "
            f"extra fds={held_fds}, evicted={listener.evicted}"
        )
        # One listener thread; a thread per connection would be 1,000. The margin of two is
        # for OS-level threads outside rotatord that come and go under load (seen 1 in 3 runs
        # on a busy machine, also before the listener changed): not a per-connection cost.
        assert held_threads <= 3
        # The cap, the listener's own 4, the flood's 2 pipes, a few for the ACME session.
        assert held_fds <= HTTP01_LIMITS.max_connections + 4 + 2 + 4
    finally:
        pool.close()
        issuer.close()


def test_twelve_concurrent_orders_are_validated_without_a_syn_retry(
    pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """Twelve orders at once through one listener (36 concurrent validation connections) all
    finish within 0.9 s of each other. With the old backlog of 5 some of Pebble's connections
    overflowed it and waited for the kernel's SYN retry (1 s, then 2 s): measured here, orders
    took 0.4 s and 1.4 s and 2.7 s in the same batch. The spread, not the absolute time, is
    asserted, so a loaded machine slowing every order alike does not fail it."""
    port = pebble_server.http_port
    pool = StandalonePool(linger=5.0)
    issuer = issuer_for(pebble_server, short_tmp, pool)
    n_orders = 12
    try:
        order(issuer, "warm.example.test", port)  # account registered, listener bound
        took: dict[str, float | str] = {}
        gate = threading.Barrier(n_orders)

        def one(n: int) -> None:
            gate.wait()
            try:
                took[f"o{n}"] = order(issuer, f"o{n}.concurrent.example.test", port)
            except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                took[f"o{n}"] = repr(exc)

        workers = [threading.Thread(target=one, args=(n,)) for n in range(n_orders)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(120)
    finally:
        pool.close()
        issuer.close()
    times = sorted(v for v in took.values() if isinstance(v, float))
    print(f"\n[measured] {n_orders} concurrent orders: {', '.join(f'{t:.2f}' for t in times)} s")
    assert len(times) == n_orders, took
    assert times[-1] - times[0] < 0.9, took


def test_daemon_answers_status_and_rotate_while_1000_idle_connections_are_held(
    pebble_server: PebbleServer, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """The real daemon with 1,000 idle connections held on its control socket: its threads do
    not grow, its descriptors grow by at most the control cap, and `rotatord status` and
    `rotatord rotate web --force` both succeed through the daemon meanwhile."""
    state = short_tmp / "state"
    config = write_config(
        short_tmp / "r.toml", pebble_server, state, service("web", pebble_server.http_port)
    )
    daemon = DaemonProcess(config, short_tmp)
    daemons.append(daemon)
    daemon.start()
    audit = state / "audit.jsonl"
    wait_for(
        audit, lambda rs: len(events(rs, "rotation_finished", "web")) >= 1, 60, "issued", daemon
    )
    assert daemon.proc is not None
    pid = daemon.proc.pid

    def task_count() -> int:
        return len(os.listdir(f"/proc/{pid}/task"))

    def fd_count() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    # The start-up listener lingers 5 s after the issuance: wait until it has closed.
    poll(lambda: not (Path(f"/proc/{pid}").exists() and _listening(pebble_server.http_port)), 30)
    base_threads, base_fds = task_count(), fd_count()
    with flood("--unix", str(state / "ctl.sock"), str(IDLE)):
        poll(lambda: fd_count() >= base_fds + CONTROL_LIMITS.max_connections, 30, "cap filled")
        held_threads, held_fds = task_count() - base_threads, fd_count() - base_fds
        status = run_cli(config, "status", "--json")
        rotate = run_cli(config, "rotate", "web", "--force")
    print(
        f"\n[measured] daemon, {IDLE} idle control connections: extra threads={held_threads}, "
        f"extra fds={held_fds}"
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["source"] == "daemon"
    assert rotate.returncode == 0, rotate.stderr
    assert "done by the running daemon" in rotate.stdout
    assert held_threads <= 2  # a thread per connection would be 1,000
    assert held_fds <= CONTROL_LIMITS.max_connections + 4  # + whatever the daemon opened meanwhile
    assert daemon.stop() == 0


def _listening(port: int) -> bool:
    """Whether anything listens on 127.0.0.1:``port`` (from /proc/net/tcp, state 0A)."""
    needle = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(line.split()[1] == needle and line.split()[3] == "0A" for line in lines)
