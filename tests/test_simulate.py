"""The deterministic simulator (bench/simulate.py) in CI: a short run with a random seed that
it prints, so a failing seed can be replayed exactly."""

from __future__ import annotations

import random
import sys
from pathlib import Path

# bench/ is a directory of scripts, not a package (as in test_torture).
_BENCH = str(Path(__file__).resolve().parent.parent / "bench")
sys.path.insert(0, _BENCH)
try:
    from simulate import simulate
finally:
    sys.path.remove(_BENCH)


def test_short_simulation_has_no_violations() -> None:
    """3 service-years of outages, rate limits, bad responses, disk faults, crashes and clock
    jumps against the real rotator and loop: no invariant is violated."""
    seed = random.SystemRandom().randrange(1 << 31)
    print(f"simulate seed={seed}")
    stats, _ = simulate(3, seed, services=6)
    assert stats.rotations > 0
    assert not stats.violations, (seed, dict(stats.violations), stats.examples)
