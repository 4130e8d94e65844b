"""The main job, end to end: start a local Pebble, rotate the example services, show status.

``python -m pebble.demo`` renders ``config/rotatord.example.toml`` with the live Pebble's
directory URL, CA bundle and HTTP-01 port into ``demo-state/rotatord.toml`` (only those three
values change), then runs ``rotatord rotate --all`` and ``rotatord status`` with it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from pebble.runner import PebbleServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "rotatord.example.toml"


def render(example: str, directory: str, ca_bundle: Path, http_port: int) -> str:
    out, n_dir = re.subn(
        r'(?m)^directory = "https://127\.0\.0\.1:14000/dir"$',
        f'directory = "{directory}"\nca_bundle = "{ca_bundle}"',
        example,
    )
    out, n_listen = re.subn(
        r'(?m)^listen = "127\.0\.0\.1:5002"$', f'listen = "127.0.0.1:{http_port}"', out
    )
    if n_dir != 1 or n_listen < 1:
        raise SystemExit(f"{EXAMPLE}: expected the Pebble directory and listen lines to rewrite")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=ROOT / "demo-state")
    parser.add_argument("--rounds", type=int, default=1, help="rotate --all --force this often")
    args = parser.parse_args()
    args.state.mkdir(exist_ok=True)
    with PebbleServer() as pebble:
        config = args.state / "rotatord.toml"
        config.write_text(
            render(EXAMPLE.read_text(), pebble.directory_url, pebble.ca_bundle, pebble.http_port)
        )
        base = [sys.executable, "-m", "rotatord", "-c", str(config)]
        print(f"# Pebble at {pebble.directory_url}; config {config}", flush=True)
        for _ in range(args.rounds):
            rc = subprocess.run([*base, "rotate", "--all", "--force"], check=False).returncode
            if rc != 0:
                return rc
        print("# rotatord status", flush=True)
        return subprocess.run([*base, "status"], check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
