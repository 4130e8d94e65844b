"""The installed ``rotatord`` run by users without rights: ``nobody``, and a member of the
control socket's group whose uid is not in ``control_allowed_uids``.

- Every subcommand, as ``nobody``, with a 0640 config it cannot read and with a config it can
  read but whose state it cannot: a documented exit code and a one-line reason, never a
  traceback.
- A ``control_socket_group`` admin (allowed uid, config unreadable) gets ``status`` from the
  running daemon through ``--socket``; a group member who is not allowed is told so (exit 4)
  and nothing is read from disk.

Needs root (to switch users with setpriv); the installed copy comes from tests/installed.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess
from tests.installed import Installed
from tests.test_cli_codes import leaf_parsers
from tests.unavailable import unavailable

NOBODY, NOGROUP = 65534, 65534
STRANGER = 65533  # a uid with no passwd entry, in the socket's group by its gid only


def as_user(
    installed: Installed, uid: int, *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={NOGROUP}", "--clear-groups", "--",
         str(installed.rotatord), *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"},
    )  # fmt: skip


def config_text(base: Path, name: str, allowed: str) -> str:
    return (
        f'[daemon]\nstate_dir = "{base}/{name}-state"\naudit_log = "{base}/{name}-state/a.jsonl"\n'
        f'control_socket = "{base}/{name}-run/ctl.sock"\ncontrol_socket_group = "nogroup"\n'
        f"control_allowed_uids = {allowed}\n"
        '[acme.a]\ndirectory = "https://127.0.0.1:9/dir"\n'
        '[services.web]\ndomains = ["web.example.test"]\naccount = "a"\n'
        '[services.web.challenge]\nlisten = "127.0.0.1:1"\n'
    )


@pytest.fixture(scope="module")
def world(installed: Installed) -> Iterator[dict[str, Path]]:
    """A root daemon whose 0640 config allows uids 0 and nobody on a nogroup socket, and a
    world-readable config whose 0700 state dir belongs to root (no daemon)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        unavailable("needs root and setpriv to run the CLI as other users")
    base = Path(tempfile.mkdtemp(prefix="rt-np-", dir="/tmp"))
    base.chmod(0o755)
    daemon = None
    try:
        secret = base / "secret.toml"
        secret.write_text(config_text(base, "secret", f"[0, {NOBODY}]"))
        secret.chmod(0o640)
        (base / "secret-run").mkdir(mode=0o755)
        readable = base / "readable.toml"
        readable.write_text(config_text(base, "readable", "[0]"))
        readable.chmod(0o644)
        (base / "readable-state").mkdir(mode=0o700)
        daemon = DaemonProcess(secret, base)
        daemon.start()
        yield {"base": base, "secret": secret, "readable": readable,
               "socket": base / "secret-run" / "ctl.sock"}  # fmt: skip
    finally:
        if daemon is not None:
            daemon.kill()
        shutil.rmtree(base, ignore_errors=True)


def argv_for(name: str, base: Path) -> list[str]:
    extra = {
        "revoke": ["web"],
        "rotate": ["web"],
        "audit init-seal": ["--out", str(base / "verify.key")],
    }
    return [*name.split(), *extra.get(name, [])]


def test_every_subcommand_as_nobody_fails_cleanly(
    installed: Installed, world: dict[str, Path]
) -> None:
    """As `nobody`, every subcommand (and `rotate --local`) with an unreadable config and with
    one whose state is unreadable: a documented exit code, a reason, no traceback."""
    parsers = leaf_parsers()
    runs = []
    for config in (world["secret"], world["readable"]):
        for name in parsers:
            runs.append((name, [*argv_for(name, world["base"]), "-c", str(config)]))
        runs.append(("rotate", ["rotate", "--local", "web", "-c", str(config)]))

    def one(run: tuple[str, list[str]]) -> tuple[str, list[str], subprocess.CompletedProcess[str]]:
        return run[0], run[1], as_user(installed, NOBODY, *run[1], cwd=world["base"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, runs))
    for name, argv, result in results:
        out = result.stdout + result.stderr
        assert "Traceback" not in out, (argv, out)
        codes = parsers[name].get_default("exit_codes") or {}
        assert result.returncode in codes, (argv, result.returncode, out)
        if result.returncode != 0:
            assert result.stderr.strip(), argv  # a reason, on stderr
    # nothing as nobody wrote into root's state
    assert not any((world["base"] / "readable-state").iterdir())


def test_a_socket_group_admin_uses_the_daemon_without_the_config(
    installed: Installed, world: dict[str, Path]
) -> None:
    """An allowed uid in the socket's group who cannot read the 0640 config gets `status` from
    the running daemon with --socket; without --socket (the default socket: no daemon there)
    it is told that no daemon answered (exit 3), not shown a traceback."""
    got = as_user(installed, NOBODY, "status", "--socket", str(world["socket"]), cwd=world["base"])
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("# from daemon") and "web:" in got.stdout
    unknown = as_user(
        installed, NOBODY, "status", "nope", "--socket", str(world["socket"]), cwd=world["base"]
    )
    assert unknown.returncode == 2 and "unknown service" in unknown.stderr
    default = as_user(installed, NOBODY, "-c", str(world["secret"]), "status", cwd=world["base"])
    assert default.returncode == 3, default.stderr
    assert "Permission denied" in default.stderr and "Traceback" not in default.stderr


def test_a_group_member_not_allowed_is_refused_clearly(
    installed: Installed, world: dict[str, Path]
) -> None:
    """A uid in the socket's group but not in control_allowed_uids: `status` and `rotate` are
    refused with a message naming control_allowed_uids (exit 4), with no fall-back to the
    files it may not read and no traceback."""
    for args in (["status"], ["rotate", "web"]):
        got = as_user(
            installed, STRANGER, *args, "--socket", str(world["socket"]), cwd=world["base"]
        )
        assert got.returncode == 4, (args, got.stdout, got.stderr)
        assert "control_allowed_uids" in got.stderr and f"uid {STRANGER}" in got.stderr
        assert "Traceback" not in got.stderr and "# from files" not in got.stdout
