"""The command line's contract: messages and exit codes (0 ok, 1 failed, 2 usage/config,
3 daemon unreachable), run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotatord", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


BROKEN = """
[daemon]
keep_versions = 1
log_format = "xml"

[acme.le]
directory = "ftp://ca.example/dir"

[services.web]
domain = ["web.example.test"]
account = "nope"
key_type = "dsa-1024"

[services.web.challenge]
listen = "127.0.0.1:99999"

[[services.web.reload]]
command = "nginx -s reload"
"""


def test_check_config_reports_every_mistake_with_its_path(tmp_path: Path) -> None:
    """A config with many different mistakes is reported in one run, each with its dotted path,
    exit code 2 and no traceback."""
    config = tmp_path / "bad.toml"
    config.write_text(BROKEN)
    result = cli("-c", str(config), "check-config")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for path in (
        "daemon.keep_versions",
        "daemon.log_format",
        "acme.le.directory",
        "services.web.domain",
        "services.web.account",
        "services.web.key_type",
        "services.web.challenge.listen",
        "services.web.reload[0].command",
    ):
        assert f"{config}: {path}" in result.stderr, path


def test_check_config_ok(tmp_path: Path) -> None:
    """A valid config passes with exit 0 and a one-line summary."""
    config = tmp_path / "ok.toml"
    config.write_text(
        '[daemon]\nstate_dir = "s"\n[acme.a]\ndirectory = "https://ca.example/dir"\n'
        '[services.web]\ndomains = ["web.example.test"]\n'
    )
    result = cli("-c", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    assert "OK (1 services, 1 accounts)" in result.stdout


def test_check_config_warns_of_a_renew_before_it_will_clamp(tmp_path: Path) -> None:
    """A ``renew_before`` that would make a new certificate due at once: warned against the
    installed certificate's lifetime when there is one, else Let's Encrypt's 90 days; a warning
    is not an error (exit 0)."""
    from datetime import timedelta

    from rotatord.store import ServiceStore
    from tests.certs import T0, make_bundle

    state = tmp_path / "s"
    store = ServiceStore(state, "short")
    version = store.stage(
        make_bundle(("short.example.test",), not_before=T0, not_after=T0 + timedelta(seconds=60))
    )
    store.activate(version)
    config = tmp_path / "ok.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{state}"\n[acme.a]\ndirectory = "https://ca.example/dir"\n'
        '[services.short]\ndomains = ["short.example.test"]\nrenew_before = "2m"\n'
        '[services.long]\ndomains = ["long.example.test"]\nrenew_before = "85d"\n'
        '[services.fine]\ndomains = ["fine.example.test"]\nrenew_before = "30d"\n'
    )
    result = cli("-c", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    warnings = [ln for ln in result.stdout.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2, result.stdout
    assert f"warning: {config}: services.long.renew_before: too long for a 90-day" in warnings[0]
    assert (
        f"warning: {config}: services.short.renew_before: too long for the installed"
        in (warnings[1])
    )
    assert "0:01:00 certificate" in warnings[1] and "0:00:30 left instead" in warnings[1]


def test_usage_errors_and_unreachable_daemon(tmp_path: Path) -> None:
    """Unknown services are usage errors (2); `reload` without a daemon is unreachable (3)."""
    config = tmp_path / "ok.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "s"\ncontrol_socket = "{tmp_path}/c.sock"\n'
        '[acme.a]\ndirectory = "https://ca.example/dir"\n'
        '[services.web]\ndomains = ["web.example.test"]\n'
    )
    assert cli("-c", str(config), "rotate", "nope").returncode == 2
    assert cli("-c", str(config), "status", "nope").returncode == 2
    assert cli("-c", str(config), "rotate").returncode == 2
    reload = cli("-c", str(config), "reload")
    assert reload.returncode == 3
    assert "no daemon listening" in reload.stderr
    missing = cli("-c", str(tmp_path / "absent.toml"), "check-config")
    assert missing.returncode == 2
    assert "cannot read config file" in missing.stderr
