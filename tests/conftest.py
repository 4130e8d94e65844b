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

# --------------------------------------------------------------------------------------------
# Pebble
# --------------------------------------------------------------------------------------------


def _on_ci() -> bool:
    """True when the ``CI`` environment variable says we run in continuous integration."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


@pytest.hookimpl(tryfirst=True)  # before fixtures set up, so a missing Pebble is reported clearly
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``pebble`` skip when Pebble is missing, but fail on CI (CI=true)."""
    if item.get_closest_marker("pebble") is None or pebble_available():
        return
    message = (
        "Pebble is not installed (needs /usr/bin/pebble and /usr/bin/pebble-challtestsrv; "
        "'apt-get install -y pebble')"
    )
    if _on_ci():
        pytest.fail(f"{message}; CI=true, so Pebble tests must run, not skip", pytrace=False)
    pytest.skip(message)


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
