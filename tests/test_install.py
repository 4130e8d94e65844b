"""The documented install on Debian's own Python: ``python -m build`` makes a clean sdist and
wheel (the sdist carries pebble/ so its tests run), a venv made with ``/usr/bin/python3 -m venv``
installs the wheel, and the installed ``rotatord`` answers ``--version``, ``check-config -c FILE``
(subcommand first) and prints the packaged example config and unit, byte for byte the files in
config/ and systemd/."""

from __future__ import annotations

import os
import sys
import tarfile
import zipfile
from pathlib import Path

from tests.installed import Installed, run

REPO = Path(__file__).resolve().parent.parent


def test_debian_python_venv_install_runs(installed: Installed, tmp_path: Path) -> None:
    """On Debian's Python 3.11, the venv install gives a working `rotatord`: --version, and
    check-config with -c after the subcommand."""
    python = installed.venv / "bin" / "python"
    version = run([python, "-c", "import sys; print(sys.version_info[:2])"])
    assert version.stdout.strip() == "(3, 11)"
    got = run([installed.rotatord, "--version"])
    assert got.returncode == 0 and got.stdout.strip() == "rotatord 0.1.0", got
    config = tmp_path / "rotatord.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/state"\n[acme.le]\n'
        'directory = "https://acme-v02.api.letsencrypt.org/directory"\n'
        '[services.web]\ndomains = ["web.example.test"]\n'
    )
    checked = run([installed.rotatord, "check-config", "-c", config])
    assert checked.returncode == 0, checked.stderr
    assert f"{config}: OK (1 services, 1 accounts)" in checked.stdout


def test_the_wheel_carries_the_example_config_and_unit(installed: Installed) -> None:
    """`example-config` and `systemd-unit` from the installed wheel print exactly the files in
    config/ and systemd/ (one copy each, mapped into the wheel at build time)."""
    for command, source in (
        ("example-config", REPO / "config" / "rotatord.example.toml"),
        ("systemd-unit", REPO / "systemd" / "rotatord.service"),
    ):
        got = run([installed.rotatord, command])
        assert got.returncode == 0, got.stderr
        assert got.stdout == source.read_text(), command
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
    assert "rotatord-0.1.0.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith(("tests/", "pebble/")) for n in names)


def test_build_is_clean_and_the_sdist_runs_its_tests(installed: Installed) -> None:
    """`python -m build` warns of nothing but the environment's own PYTHONDONTWRITEBYTECODE; the
    sdist carries LICENSE, pebble/ and tests/, and pytest collects its suite from the unpacked
    sdist alone."""
    noise = ("byte-compiling is disabled",)
    warnings = [
        ln for ln in installed.build_output.splitlines()
        if ("warning" in ln.lower() or "deprecat" in ln.lower()) and not any(n in ln for n in noise)
    ]  # fmt: skip
    assert warnings == []
    unpacked = installed.root / "sdist"
    with tarfile.open(installed.sdist) as tar:
        tar.extractall(unpacked, filter="data")
    (top,) = unpacked.iterdir()
    needed = ("LICENSE", "pebble/runner.py", "tests/conftest.py", "config/rotatord.example.toml")
    for need in needed:
        assert (top / need).is_file(), need
    collected = run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "tests/test_policy.py", "tests/test_e2e_rotate.py"],
        cwd=top, env={**os.environ, "PYTHONPATH": str(top)},
    )  # fmt: skip
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-2000:]
    assert "test_e2e_rotate.py::" in collected.stdout
