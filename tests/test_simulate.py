"""The deterministic simulator (bench/simulate.py) in CI: short runs with a random seed that they
print, so a failing seed can be replayed exactly; and for every guard of the loop, a run with that
guard removed, showing that the simulator's invariants catch it."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

# bench/ is a directory of scripts, not a package (as in test_torture).
_ROOT = Path(__file__).resolve().parent.parent
_BENCH = str(_ROOT / "bench")
sys.path.insert(0, _BENCH)
try:
    from simulate import SABOTAGES, SCENARIOS, simulate
finally:
    sys.path.remove(_BENCH)


@pytest.mark.parametrize(
    ("scenario", "service_years"),
    [("mixed", 20), ("backdated", 10), ("disk_full", 10), ("bad_ca", 10), ("long_outage", 4)],
)
def test_short_simulation_has_no_violations(scenario: str, service_years: int) -> None:
    """Outages, rate limits, bad responses, disk faults, crashes and clock jumps (or one of them,
    concentrated) against the real rotator and loop: no invariant is violated."""
    seed = random.SystemRandom().randrange(1 << 31)
    print(f"simulate --scenario {scenario} --seed {seed}")
    stats, _ = simulate(service_years, seed, services=10, scenario=scenario)
    assert stats.rotations > 0
    assert not stats.violations, (seed, dict(stats.violations), stats.examples)


# (guard removed, the scenario that exercises it, the invariants that may catch it)
GUARDS = [
    ("floor", "mixed", {"runaway_floor"}),
    ("interval", "backdated", {"runaway_interval"}),
    ("budget", "bad_ca", {"budget"}),
    ("retry_cap", "long_outage", {"stuck_invalid"}),
    ("resume", "mixed", {"unfinished", "stale_consumer"}),
    ("status", "mixed", {"hidden_failure"}),
]


def test_every_guard_has_a_catching_test() -> None:
    assert {g for g, _, _ in GUARDS} == set(SABOTAGES)
    assert {s for _, s, _ in GUARDS} <= set(SCENARIOS)


@pytest.mark.parametrize(("sabotage", "scenario", "caught_by"), GUARDS)
@pytest.mark.parametrize("seed", [1, 2])
def test_removing_a_guard_is_caught(
    sabotage: str, scenario: str, caught_by: set[str], seed: int
) -> None:
    """With the guard removed the same kind of run reports violations of its invariant (and
    stops at the first one: a removed floor makes a run spin)."""
    stats, _ = simulate(40, seed, services=10, sabotage=sabotage, stop_after=1, scenario=scenario)
    assert set(stats.violations) & caught_by, (dict(stats.violations), stats.examples)


def test_the_command_prints_its_seed_and_a_seed_replays_exactly() -> None:
    """The script's own output (what CI logs and an operator pastes into a bug report); the same
    seed and number of worlds give the same run, whatever the number of processes."""
    cmd = [
        sys.executable,
        str(_ROOT / "bench" / "simulate.py"),
        "--service-years",
        "4",
        "--seed",
        "11",
        "--worlds",
        "2",
        "--services",
        "5",
    ]
    env = {"PYTHONPATH": str(_ROOT), "PATH": "/usr/bin:/bin"}
    runs = [
        subprocess.run([*cmd, "--jobs", jobs], capture_output=True, text=True, env=env, check=False)
        for jobs in ("1", "2")
    ]
    assert runs[0].returncode == 0, runs[0].stdout + runs[0].stderr
    assert runs[0].stdout.splitlines()[0] == "service_years=4 violations=0 seed=11"
    strip = [
        [ln for ln in r.stdout.splitlines() if "elapsed_s=" not in ln] for r in runs
    ]  # all but the wall time
    assert strip[0] == strip[1]
