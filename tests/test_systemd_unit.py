"""Checks for ``systemd/rotatord.service``: it verifies cleanly, scores <= 2.0, keeps its promises.

``systemd-analyze`` works here without systemd as PID 1: ``verify`` loads the unit file from a
path, and ``security --offline=true`` (systemd >= 250) assesses a unit file instead of asking the
service manager over D-Bus. If ``systemd-analyze`` is missing or too old, these tests skip, but
fail when ``CI=true`` so CI can never silently lose them.

``verify`` checks that ``ExecStart=``'s binary exists. The unit names ``/usr/local/bin/rotatord``
(where ``pip install`` puts the console script); in a development checkout the package is usually
installed elsewhere (a venv, pyenv), so the verify test runs on a temporary copy whose ExecStart
points at the ``rotatord`` actually on PATH, falling back to ``python -m rotatord``. Everything
else in the copy is byte-for-byte the repository's unit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unavailable import unavailable

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "rotatord.service"
INSTALLED_BINARY = "/usr/local/bin/rotatord"
MAX_EXPOSURE = 2.0
# `security --offline=` first shipped in systemd 250.
MIN_SYSTEMD_VERSION = 250
REQUIRED_CAPABILITIES = {"CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_KILL"}
# Plain ASCII, no colours, no pager, whatever the caller's terminal and locale are.
ANALYZE_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a ``systemd-analyze`` command and capture its text output."""
    return subprocess.run(
        argv, capture_output=True, text=True, errors="replace", env=ANALYZE_ENV, timeout=120
    )


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """Path of a ``systemd-analyze`` new enough for ``security --offline=true``."""
    path = shutil.which("systemd-analyze")
    if path is None:
        unavailable("systemd-analyze is not installed ('apt-get install -y systemd')")
    first_line = (_run([path, "--version"]).stdout.splitlines() or [""])[0]
    match = re.match(r"systemd (\d+)", first_line)
    if match is None or int(match.group(1)) < MIN_SYSTEMD_VERSION:
        unavailable(
            f"systemd-analyze at {path} is {first_line!r}; "
            f"'security --offline=true' needs systemd >= {MIN_SYSTEMD_VERSION}"
        )
    return path


def _service_section(text: str) -> dict[str, list[str]]:
    """Map each key of the unit's ``[Service]`` section to its assignments, in file order."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _real_exec_start() -> str:
    """The command line ExecStart= can use on this machine for the rotatord console script."""
    if os.access(INSTALLED_BINARY, os.X_OK):
        return INSTALLED_BINARY
    found = shutil.which("rotatord")
    if found is not None:
        return found
    return f"{sys.executable} -m rotatord"


def test_unit_passes_systemd_analyze_verify(systemd_analyze: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit with no diagnostics about it and exit code 0."""
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={INSTALLED_BINARY} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(
        text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={_real_exec_start()} "),
        encoding="utf-8",
    )

    result = _run([systemd_analyze, "verify", str(copy)])

    output = result.stdout + result.stderr
    # verify exits 0 even for unknown keys or unparsable values, so the output is what counts.
    # Lines that name another unit file (a dependency shipped by the distribution) are not ours.
    ours = [
        line
        for line in output.splitlines()
        if line.strip() and (UNIT.name in line or str(tmp_path) in line or line[0] != "/")
    ]
    assert ours == [], f"systemd-analyze verify complained:\n{output}"
    assert result.returncode == 0, f"systemd-analyze verify exited {result.returncode}:\n{output}"


def test_unit_security_exposure_is_at_most_two(systemd_analyze: str) -> None:
    """``systemd-analyze security --offline=true`` rates the unit's overall exposure <= 2.0."""
    result = _run([systemd_analyze, "security", "--no-pager", "--offline=true", str(UNIT)])

    output = result.stdout + result.stderr
    assert result.returncode == 0, f"systemd-analyze security exited {result.returncode}:\n{output}"
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match is not None, f"no 'Overall exposure level' line in:\n{output}"
    score = float(match.group(1))
    # Items that are not fully hardened start with "-" in the C locale ("✗" in UTF-8 ones).
    exposed = "\n".join(line for line in output.splitlines() if line.startswith(("- ", "✗")))
    assert score <= MAX_EXPOSURE, (
        f"exposure {score} > {MAX_EXPOSURE}; items not hardened:\n{exposed}"
    )


def test_unit_declares_lifecycle_and_core_hardening() -> None:
    """The unit keeps Type=notify, the watchdog, SIGHUP reload, no restart on a config error,
    NoNewPrivileges and strict FS."""
    service = _service_section(UNIT.read_text(encoding="utf-8"))

    assert service.get("Type") == ["notify"]
    assert service.get("NotifyAccess") == ["main"]
    assert service.get("WatchdogSec") == ["60"]
    assert service.get("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    # A config error (exit 2) is not retried: restarting cannot fix the file.
    assert service.get("RestartPreventExitStatus") == ["2"]
    assert service.get("NoNewPrivileges") == ["yes"]
    assert service.get("ProtectSystem") == ["strict"]
    assert service.get("ExecStart") == [f"{INSTALLED_BINARY} -c /etc/rotatord/rotatord.toml run"]


def test_unit_grants_exactly_the_capabilities_rotatord_needs() -> None:
    """Bounding and ambient capability sets are exactly bind-80, chown, fowner and kill."""
    service = _service_section(UNIT.read_text(encoding="utf-8"))

    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assigned = service.get(key, [])
        assert len(assigned) == 1, f"{key}= should be assigned once, got {assigned}"
        assert set(assigned[0].split()) == REQUIRED_CAPABILITIES, f"{key}={assigned[0]}"
    assert service.get("User") == ["rotatord"]
    assert "DynamicUser" not in service
    assert "PrivateUsers" not in service, "PrivateUsers= would make CAP_CHOWN/CAP_KILL useless"
