"""Shared pytest fixtures and hooks for the rotatord test suite.

Pebble section: the ``pebble`` marker policy and fixtures that start private Pebble ACME servers
(see ``pebble/README.md``). Add other fixtures in their own clearly headed section.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Unpack

import pytest

from pebble import PebbleFactory, PebbleOptions, PebbleServer, pebble_available
from tests.daemon_harness import DaemonProcess
from tests.installed import Installed, install
from tests.unavailable import unavailable

# --------------------------------------------------------------------------------------------
# Pebble
# --------------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before fixtures set up, so a missing Pebble is reported clearly
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``pebble`` need Pebble, tests marked ``root`` need root: skip when missing,
    fail on CI (CI=true)."""
    if item.get_closest_marker("pebble") is not None and not pebble_available():
        unavailable(
            "Pebble is not installed (needs /usr/bin/pebble and /usr/bin/pebble-challtestsrv; "
            "'apt-get install -y pebble')",
            "Pebble tests",
        )
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        unavailable("giving files to another user (chown) needs root")


@pytest.fixture(scope="session")
def pebble_server() -> Iterator[PebbleServer]:
    """One Pebble (default settings) shared by the whole session; do not restart it."""
    with PebbleServer() as server:
        yield server


@pytest.fixture
def pebble_factory() -> Iterator[PebbleFactory]:
    """A callable ``(**PebbleServer kwargs) -> started PebbleServer``; all stopped at teardown."""
    servers: list[PebbleServer] = []

    def make(**kwargs: Unpack[PebbleOptions]) -> PebbleServer:
        server = PebbleServer(**kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.stop()


# --------------------------------------------------------------------------------------------
# Filesystem
# --------------------------------------------------------------------------------------------


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh directory with a short path under /tmp (AF_UNIX socket paths max 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# rotatord daemons
# --------------------------------------------------------------------------------------------


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons a test started (append them); any still running at teardown are killed."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


# --------------------------------------------------------------------------------------------
# The installed wheel (tests/installed.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def installed() -> Iterator[Installed]:
    """This tree's wheel installed in a fresh venv of Debian's /usr/bin/python3 (built once
    per run, removed at its end)."""
    yield from install()
