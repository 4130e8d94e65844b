"""The main job, end to end: a local Pebble, the rotatord daemon and the example config.

``python -m pebble.demo`` renders ``config/rotatord.example.toml`` with the live Pebble's
directory URL, CA bundle and HTTP-01 port into ``demo-state/rotatord.toml`` (only those three
values change), then:

1. ``rotatord rotate --all`` in one process (no daemon yet): the example services get real
   certificates;
2. starts ``rotatord run`` and waits for its READY (sd_notify, as systemd would);
3. ``rotatord rotate web --force`` — done by the running daemon through its control socket;
4. optionally watches the daemon renew short-lived certificates by itself (``--watch``);
5. ``rotatord status`` from the daemon, SIGTERM, and ``rotatord audit verify``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pebble.runner import PebbleServer, roots_url_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "rotatord.example.toml"


def render(example: str, directory: str, ca_bundle: Path, http_port: int) -> str:
    roots = roots_url_for(ca_bundle)
    out, n_dir = re.subn(
        r'(?m)^directory = "https://127\.0\.0\.1:14000/dir"$',
        f'directory = "{directory}"\nca_bundle = "{ca_bundle}"\ntrust_roots_url = "{roots}"',
        example,
    )
    out, n_listen = re.subn(
        r'(?m)^listen = "127\.0\.0\.1:5002"$', f'listen = "127.0.0.1:{http_port}"', out
    )
    if n_dir != 1 or n_listen < 1:
        raise SystemExit(f"{EXAMPLE}: expected the Pebble directory and listen lines to rewrite")
    return out


def start_daemon(base: list[str], state: Path) -> subprocess.Popen[bytes]:
    """Start ``rotatord run`` and return once it said READY=1 (or fail after 30 s)."""
    notify_path = state / "notify.sock"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        proc = subprocess.Popen(
            [*base, "run"],
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdout=open(state / "daemon.log", "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
        )
        while True:
            try:
                message = notify.recv(4096).decode()
            except TimeoutError as exc:
                proc.kill()
                raise SystemExit(f"daemon not ready; see {state / 'daemon.log'}") from exc
            if "READY=1" in message.split("\n"):
                return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=ROOT / "demo-state")
    parser.add_argument(
        "--validity", type=int, default=60, help="certificate lifetime in seconds (Pebble)"
    )
    parser.add_argument(
        "--watch", type=int, default=0, help="seconds to let the daemon renew by itself"
    )
    args = parser.parse_args()
    args.state.mkdir(exist_ok=True)
    with PebbleServer(validity_seconds=args.validity) as pebble:
        config = args.state / "rotatord.toml"
        config.write_text(
            render(EXAMPLE.read_text(), pebble.directory_url, pebble.ca_bundle, pebble.http_port)
        )
        base = [sys.executable, "-m", "rotatord", "-c", str(config)]

        def step(title: str, *cli: str) -> int:
            print(f"\n### {title}\n$ rotatord -c {config} {' '.join(cli)}", flush=True)
            return subprocess.run([*base, *cli], check=False).returncode

        print(f"# Pebble at {pebble.directory_url}", flush=True)
        if step("1. issue every example service (one process, no daemon)", "rotate", "--all"):
            return 1
        print("\n### 2. start the daemon (rotatord run); log in demo-state/daemon.log", flush=True)
        daemon = start_daemon(base, args.state)
        try:
            if step("3. manual rotation, done by the running daemon", "rotate", "web", "--force"):
                return 1
            if args.watch:
                print(
                    f"\n### 4. the daemon renews {args.validity}-second certificates by itself "
                    f"for {args.watch} s",
                    flush=True,
                )
                time.sleep(args.watch)
            step("5. status, from the daemon", "status")
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=180)
            print(f"\n### daemon stopped (exit {code})", flush=True)
        return step("6. the audit log's hash chain", "audit", "verify") or code


if __name__ == "__main__":
    raise SystemExit(main())
