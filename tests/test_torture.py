"""Crash torture, short version: the real daemon SIGKILLed at random moments against Pebble.

The full run (≥ 200 kills) is ``PYTHONPATH=. python bench/torture.py``; see ``bench/README.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/ is a directory of scripts, not a package (mypy knows bench/torture.py as `torture`).
_BENCH = str(Path(__file__).resolve().parent.parent / "bench")
sys.path.insert(0, _BENCH)
try:
    from torture import run
finally:
    sys.path.remove(_BENCH)

pytestmark = pytest.mark.pebble


def test_sigkill_mid_rotation_never_breaks_or_loses_a_pair() -> None:
    """Fifteen SIGKILLs at random moments leave every current pair complete, matching and
    verifiable, recovery leaves no temp entry, the audit chain holds, and rotations resume."""
    # force_probability=1: the background `rotate --all --force` keeps rotations running through
    # most of the kill window, so that (almost surely) some kills land mid-rotation.
    s = run(kills=15, services=4, validity=6, seed=20240611, force_probability=1.0)
    assert s.problems == []
    assert s.kills == 15
    assert s.mismatched_pairs == 0
    assert s.lost_pairs == 0
    assert s.temp_left_after_recovery == 0
    assert s.audit_broken == 0
    assert s.ok, s.failures
    assert s.kills_mid_rotation > 0, "no kill landed during a rotation"
    # One check per 10 kills plus the final, unkilled daemon: every one saw new activations.
    assert s.resume_checks == 2 and s.resume_failures == 0
    assert s.final_rotation_resumed and s.final_stop_status == 0
