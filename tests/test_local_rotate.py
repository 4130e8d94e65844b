"""`rotate --local` run by root on a state dir another user owns (the daemon's user) runs as
that user: every file it leaves is the daemon's to read, replace and prune, and the audit log
still names root as the caller. (That --local is refused while a daemon runs, before a key is
made, is tests/test_cli_codes.py's `rotate=1` case.)"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pebble import PebbleServer
from tests.installed import Installed, run
from tests.unavailable import unavailable

pytestmark = pytest.mark.pebble
NOBODY, NOGROUP = 65534, 65534


@pytest.fixture
def base() -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("needs root (rotate --local as root)")
    path = Path(tempfile.mkdtemp(prefix="rt-local-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_rotate_local_as_root_writes_as_the_state_dir_owner(
    installed: Installed, pebble_server: PebbleServer, base: Path
) -> None:
    """As root, `rotate --local web` on a state dir owned by nobody says it runs as nobody,
    rotates (exit 0), leaves nothing owned by root under the state dir, and audits uid 0."""
    state = base / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOGROUP)
    ca = base / "ca.pem"
    shutil.copyfile(pebble_server.ca_bundle, ca)  # the Pebble's own dir is root's alone
    ca.chmod(0o644)
    config = base / "r.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{state}"\naudit_log = "{state}/audit.jsonl"\n'
        f'control_socket = "{state}/ctl.sock"\n'
        f'[acme.pebble]\ndirectory = "{pebble_server.directory_url}"\nca_bundle = "{ca}"\n'
        f'trust_roots_url = "{pebble_server.roots_url}"\n'
        "[acme.pebble.budget]\norders = 1000\ncertificates = 1000\n"
        '[services.web]\ndomains = ["web.example.test"]\naccount = "pebble"\n'
        f'[services.web.challenge]\nlisten = "127.0.0.1:{pebble_server.http_port}"\n'
    )
    result = run([installed.rotatord, "rotate", "--local", "web", "-c", config], cwd=base)
    assert result.returncode == 0, result.stderr
    assert f"# running as nobody, the owner of {state}" in result.stderr
    assert "web: rotated" in result.stdout
    owners = {}
    for root, dirs, files in os.walk(state):
        for name in [*dirs, *files]:
            path = Path(root) / name
            owners[path] = path.lstat().st_uid
    assert (state / "services" / "web" / "current").is_symlink()
    assert owners and set(owners.values()) == {NOBODY}, {p: u for p, u in owners.items() if u}
    records = [json.loads(ln) for ln in (state / "audit.jsonl").read_text().splitlines()]
    started = [r for r in records if r.get("event") == "rotation_started"]
    assert started and started[0]["uid"] == 0
