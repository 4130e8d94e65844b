"""Test harness: run the real ``rotatord run`` as a subprocess and read its audit trail.

Readiness is the daemon's own sd_notify READY=1 on a socket the test owns (no polling, no sleep);
waiting for later events polls the audit file with a deadline, which is a wait for a condition,
never a fixed delay.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pebble import PebbleServer, roots_url_for

Record = dict[str, Any]


def write_config(
    path: Path,
    pebble: PebbleServer | str,
    state: Path,
    services: str,
    daemon_extra: str = "",
    *,
    ca_bundle: Path | None = None,
    acme_extra: str = "",
) -> Path:
    """Write a config for ``pebble`` (or a directory URL) with ``services`` appended; atomically,
    because a daemon may be watching the file."""
    directory = pebble if isinstance(pebble, str) else pebble.directory_url
    bundle = ca_bundle or (None if isinstance(pebble, str) else pebble.ca_bundle)
    # Issued chains must verify to Pebble's (per-start) root, served on its management port.
    trust = f'trust_roots_url = "{roots_url_for(bundle)}"' if bundle is not None else ""
    # Tests renew seconds-long certificates many times: a short floor between orders and a
    # budget far above a public CA's (production defaults: 1 min, and Let's Encrypt's limits).
    floor = "" if "min_order_interval" in daemon_extra else 'min_order_interval = "5s"'
    text = f"""
[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
control_socket = "{state}/ctl.sock"
{floor}
{daemon_extra}

[acme.pebble]
directory = "{directory}"
ca_bundle = "{bundle}"
{trust}
{acme_extra}

[acme.pebble.budget]
orders = 1000000
certificates = 1000000

{services}
"""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def service(
    name: str, http_port: int, extra: str = "", domains: tuple[str, ...] | None = None
) -> str:
    names = domains or (f"{name}.example.test",)
    return f"""
[services.{name}]
domains = {json.dumps(list(names))}
account = "pebble"
{extra}
[services.{name}.challenge]
listen = "127.0.0.1:{http_port}"
"""


def run_cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotatord", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class DaemonProcess:
    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.log_path = workdir / f"daemon-{os.getpid()}-{id(self)}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify_messages: list[str] = []

    def start(self, timeout: float = 30) -> None:
        """Start ``rotatord run`` and return once it has sent READY=1."""
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(0.5)
            env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "rotatord", "-c", str(self.config), "run"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    if self.proc.poll() is not None:
                        break
                    continue
                self.notify_messages.append(msg)
                if "READY=1" in msg.split("\n"):
                    return
        raise AssertionError(f"daemon did not become ready:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except FileNotFoundError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def read_audit(path: Path) -> list[Record]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def wait_for(
    path: Path,
    predicate: Callable[[list[Record]], bool],
    timeout: float,
    what: str,
    daemon: DaemonProcess | None = None,
) -> list[Record]:
    """Poll the audit file until ``predicate(records)`` holds, or fail after ``timeout``."""
    end = time.monotonic() + timeout
    records = read_audit(path)
    while not predicate(records):
        if time.monotonic() > end:
            tail = daemon.log_tail() if daemon else ""
            events = [(r.get("event"), r.get("service")) for r in records[-30:]]
            raise AssertionError(f"timed out waiting for {what}; last events {events}\n{tail}")
        time.sleep(0.05)
        records = read_audit(path)
    return records


def events(records: list[Record], event: str, service: str | None = None) -> list[Record]:
    return [
        r
        for r in records
        if r.get("event") == event and (service is None or r.get("service") == service)
    ]
