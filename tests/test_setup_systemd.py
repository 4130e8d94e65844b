"""``rotatord setup-systemd`` on a scratch root: it creates what the unit needs with the right
owners and modes, a second run changes nothing and says so, and it never loosens a directory it
does not own. (The real run, with useradd and a real systemd, is in test_systemd_container.py.)"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unavailable import unavailable

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "rotatord.service"
USER = "nobody"

CONFIG = """
[acme.le]
directory = "https://acme.example/dir"
[services.web]
domains = ["web.example.test", "www.example.test"]
[services.web.challenge]
webroot = "/srv/www"
[[services.web.outputs]]
path = "/etc/nginx/tls/web.crt"
format = "fullchain"
[[services.web.outputs]]
path = "/etc/nginx/tls/web.key"
format = "key"
[[services.web.outputs]]
path = "/srv/app/certs"
format = "directory"
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A scratch root holding only the config; chown needs real root."""
    if os.geteuid() != 0:
        unavailable("setup-systemd chowns directories: needs root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        unavailable(f"no {USER!r} user on this machine")
    r = tmp_path / "root"
    (r / "etc/rotatord").mkdir(parents=True)
    (r / "etc/rotatord/rotatord.toml").write_text(CONFIG)
    return r


def setup(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "rotatord", "-c", "/etc/rotatord/rotatord.toml",
            "setup-systemd", "--root", str(root), "--user", USER, "--unit-file", str(UNIT),
            *extra,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def owner_mode(path: Path) -> tuple[str, str, int]:
    st = os.lstat(path)
    return (
        pwd.getpwuid(st.st_uid).pw_name,
        grp.getgrgid(st.st_gid).gr_name,
        stat.S_IMODE(st.st_mode),
    )


def test_creates_directories_dropin_and_unit_then_changes_nothing(root: Path) -> None:
    """First run creates everything with its owner and mode; the second reports no change."""
    group = grp.getgrgid(pwd.getpwnam(USER).pw_gid).gr_name
    first = setup(root, "--bootstrap-certs")
    assert first.returncode == 0, first.stdout + first.stderr

    assert owner_mode(root / "var/lib/rotatord") == (USER, group, 0o700)
    assert owner_mode(root / "var/log/rotatord") == (USER, group, 0o750)
    assert owner_mode(root / "etc/rotatord/rotatord.toml") == ("root", group, 0o640)
    assert owner_mode(root / "etc/nginx/tls") == (USER, group, 0o755)
    assert owner_mode(root / "srv/www/.well-known/acme-challenge") == (USER, group, 0o755)
    assert owner_mode(root / "etc/nginx/tls/web.key") == (USER, group, 0o600)
    assert b"rotatord bootstrap placeholder" in subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(root / "etc/nginx/tls/web.crt")],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert (root / "etc/systemd/system/rotatord.service").read_text() == UNIT.read_text()
    dropin = (root / "etc/systemd/system/rotatord.service.d/50-setup-systemd.conf").read_text()
    grants = [line for line in dropin.splitlines() if line.startswith("ReadWritePaths=")]
    assert grants == [
        "ReadWritePaths=/etc/nginx/tls",
        "ReadWritePaths=/srv/app/certs",
        "ReadWritePaths=/srv/www/.well-known/acme-challenge",
    ]
    assert "nothing changed" not in first.stdout

    key_before = (root / "etc/nginx/tls/web.key").read_bytes()
    second = setup(root, "--bootstrap-certs")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing changed: already set up" in second.stdout
    assert not [
        line for line in second.stdout.splitlines() if line.startswith(("created", "updated"))
    ]
    assert (root / "etc/nginx/tls/web.key").read_bytes() == key_before


def test_fixes_its_own_directories_but_never_loosens_someone_elses(root: Path) -> None:
    """A state dir with a wrong mode is fixed; a root-owned 0755 output directory is left as
    it is and the step says how to grant access; the exit code is 1 (a step is left)."""
    (root / "var/lib/rotatord").mkdir(parents=True)
    os.chmod(root / "var/lib/rotatord", 0o755)  # noqa: S103 - the wrong mode under test
    (root / "etc/nginx/tls").mkdir(parents=True)
    os.chmod(root / "etc/nginx/tls", 0o755)  # noqa: S103 - a foreign dir

    result = setup(root)

    assert result.returncode == 1, result.stdout + result.stderr
    assert owner_mode(root / "var/lib/rotatord")[2] == 0o700
    assert "updated    /var/lib/rotatord" in result.stdout
    assert owner_mode(root / "etc/nginx/tls") == ("root", "root", 0o755)
    todo = [line for line in result.stdout.splitlines() if line.startswith("todo")]
    assert len(todo) == 1 and "/etc/nginx/tls" in todo[0]
    assert f"chgrp {USER} /etc/nginx/tls" in todo[0] and "setfacl" in todo[0]


def test_a_broken_config_is_refused_with_its_problems(root: Path) -> None:
    """Exit 2 and the config's problems, nothing created."""
    (root / "etc/rotatord/rotatord.toml").write_text("[services.web]\ndomains = 3\n")
    result = setup(root)
    assert result.returncode == 2
    assert "services.web.domains" in result.stderr
    assert not (root / "etc/systemd").exists()
