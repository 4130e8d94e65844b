"""The one rule for a missing real part (Pebble, nginx, haproxy, strace, systemd-analyze, root):
skip on a developer's machine, **fail** under CI=true, where every test must really run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def on_ci() -> bool:
    """True when the ``CI`` environment variable says we run in continuous integration."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def unavailable(reason: str, what: str = "this test") -> NoReturn:
    """Skip the current test for ``reason``, or fail it when CI=true."""
    if on_ci():
        pytest.fail(f"{reason}; CI=true, so {what} must run, not skip", pytrace=False)
    pytest.skip(reason)
