"""Start-up, memory and idle CPU of ``rotatord run`` with 10,000 realistic services, and the
cost of loading their config; every figure printed with the command that reproduces it.

The fleet is ``bench/fixtures.py``'s: each service has 2 names, 3 outputs (fullchain, key and a
``directory`` output), 1 reload command, and a pre-issued, valid, not-yet-due certificate with
its status and a finished journal, so the daemon start is a *restart*: nothing is issued.

Measured, in one run:

* **check-config**: ``rotatord check-config`` as a subprocess (wall, and its CPU from
  ``getrusage``), next to a **floor**: ``tomllib.loads`` of the same file in this process;
* **10,000 directory outputs**: ``check-config`` of a config whose every service's only output
  is a directory output (what made ``_check_output_path`` quadratic);
* **start → READY**: spawn to ``READY=1`` on a unix datagram socket this script binds as
  ``$NOTIFY_SOCKET``; at READY the script asks the daemon's control socket for ``status`` and
  verifies that every service is there with ``planned: true`` (the daemon's own plan, i.e. a
  next run scheduled), and that the reply came from the daemon. The daemon's CPU at READY is
  printed too (on a shared machine it moves far less than wall time);
* **RSS** after the start-up batch has settled and after the idle window;
* **idle CPU** over ``--idle-seconds`` (default 60) once settled.

The ACME directory is ``https://127.0.0.1:<port>/dir`` with a port this script bound and closed,
so nothing answers: the start-up batch's renewal-information (ARI) lookups fail fast and the
daemon keeps its own schedule. Everything binds or connects to 127.0.0.1 only. Building the
fixture is not timed (it runs with fsync off).

Exits 0 whatever the figures (it is a measurement); 1 when the daemon fails to start, settle,
plan every service or exit cleanly; 2 on a usage error.

    PYTHONPATH=. python3 bench/idle.py                      # 10,000 services, 60 s idle
    PYTHONPATH=. python3 bench/idle.py --services 1000 --idle-seconds 10
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fixtures import Fleet, build_state, free_port, write_config

from rotatord.runtime.control import request

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MB = 1024 * 1024  # figures are MiB, as ps/top show them

#: Targets from the acceptance list (issue 10), for 10,000 services.
TARGET_CHECK_CONFIG_S = 5.0
TARGET_DIR_OUTPUTS_S = 5.0
TARGET_READY_S = 10.0
TARGET_RSS_MIB = 150.0
TARGET_IDLE_CPU_PCT = 1.0  # strictly below

#: Settling: sample every SAMPLE_S; quiet when CPU over the last QUIET_S is at most QUIET_PCT.
SAMPLE_S = 0.5
QUIET_S = 2.0
QUIET_PCT = 1.0
READY_TIMEOUT_S = 600.0
SETTLE_TIMEOUT_S = 600.0
EXIT_TIMEOUT_S = 60.0
#: Flag a run whose neighbours kept more than this many CPUs busy while it started.
BUSY_CPUS = 0.25


class BenchError(Exception):
    """The daemon did not behave (no READY, not all planned, never settled, bad exit)."""


# ============================================================================ /proc readers


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (all threads), in clock ticks."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def system_busy_ticks() -> int:
    """Ticks all CPUs spent not idle (``/proc/stat``: total minus idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]  # guest time is already in user


class Neighbours:
    """How busy the rest of the machine was since construction, in CPUs."""

    def __init__(self) -> None:
        self._t = time.monotonic()
        self._busy = system_busy_ticks()
        self._own = cpu_ticks(os.getpid())

    def cpus(self, daemon_pid: int) -> float:
        busy = system_busy_ticks() - self._busy
        own = cpu_ticks(os.getpid()) - self._own
        others = busy - own - cpu_ticks(daemon_pid)
        return max(0.0, others / CLK_TCK / (time.monotonic() - self._t))


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def kib_to_mib(value: str) -> float:
    return int(value.split()[0]) * 1024 / PAGE_MB


# ============================================================================ one daemon run


# ============================================================================ one run


@dataclass
class RunResult:
    services: int
    config_bytes: int = 0
    build_seconds: float = 0.0
    toml_floor_seconds: float | None = None
    check_config_seconds: float | None = None
    check_config_cpu_seconds: float | None = None
    dir_outputs_seconds: float | None = None
    dir_outputs_cpu_seconds: float | None = None
    startup_seconds: float | None = None
    #: The daemon's own CPU time (all threads) at READY.
    startup_cpu_seconds: float | None = None
    #: Services the daemon's status reported with ``planned: true`` right after READY.
    planned_at_ready: int | None = None
    status_seconds: float | None = None
    settled_seconds: float | None = None
    cpu_seconds_to_settle: float | None = None
    rss_settled_mib: float | None = None
    rss_mib: float | None = None
    peak_rss_mib: float | None = None
    threads: int | None = None
    idle_seconds: float | None = None
    idle_cpu_percent: float | None = None
    exit_code: int | None = None
    exit_seconds: float | None = None
    log_lines: int = 0
    log_lines_idle: int = 0
    log_events: dict[str, int] = field(default_factory=dict)
    ari_connection_attempts: int = 0
    ari_negative_cache_hits: int = 0
    others_cpus: float | None = None
    error: str | None = None


class Daemon:
    """``rotatord run`` as a subprocess, with its sd_notify socket and its stdout in a file."""

    def __init__(self, config: Path, sock_dir: Path, log_path: Path) -> None:
        self.config = config
        self.notify_path = sock_dir / "notify.sock"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> tuple[float, float]:
        """Spawn and wait for READY=1; return (seconds from spawn to READY, CPU seconds the
        daemon had used by then)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(self.notify_path))
            notify.settimeout(0.2)
            env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
            env.pop("WATCHDOG_USEC", None)
            env.pop("WATCHDOG_PID", None)
            with open(self.log_path, "wb") as log:
                self.t0 = time.monotonic()
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "rotatord", "-c", str(self.config), "run"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            end = self.t0 + READY_TIMEOUT_S
            while time.monotonic() < end:
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    if self.proc.poll() is not None:
                        raise BenchError(
                            f"daemon exited with {self.proc.returncode} before READY=1:\n"
                            + self.log_tail()
                        ) from None
                    continue
                if "READY=1" in msg.split("\n"):
                    return time.monotonic() - self.t0, cpu_ticks(self.pid) / CLK_TCK
        raise BenchError(f"no READY=1 within {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def wait_settled(self) -> tuple[float, int]:
        """Wait until the daemon's CPU is quiet; return (seconds since spawn, ticks used)."""
        window = round(QUIET_S / SAMPLE_S)
        quiet_ticks = QUIET_PCT / 100 * QUIET_S * CLK_TCK
        samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=window + 1)
        end = time.monotonic() + SETTLE_TIMEOUT_S
        next_at = time.monotonic()
        while time.monotonic() < end:
            self._check_alive()
            samples.append((time.monotonic(), cpu_ticks(self.pid)))
            if len(samples) == window + 1 and samples[-1][1] - samples[0][1] <= quiet_ticks:
                return samples[0][0] - self.t0, samples[0][1]
            next_at += SAMPLE_S
            time.sleep(max(0.0, next_at - time.monotonic()))
        raise BenchError(f"CPU not quiet within {SETTLE_TIMEOUT_S:.0f} s")

    def idle(self, seconds: float) -> tuple[float, float]:
        """CPU % over ``seconds`` of wall time; returns (wall seconds, percent of one CPU)."""
        self._check_alive()
        w0, c0 = time.monotonic(), cpu_ticks(self.pid)
        time.sleep(seconds)
        self._check_alive()
        w1, c1 = time.monotonic(), cpu_ticks(self.pid)
        return w1 - w0, (c1 - c0) / CLK_TCK / (w1 - w0) * 100

    def stop(self) -> tuple[int, float]:
        """SIGTERM; return (exit status, seconds until exit)."""
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BenchError(f"no exit within {EXIT_TIMEOUT_S:.0f} s of SIGTERM") from None
        return rc, time.monotonic() - t

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def log_line_count(self) -> int:
        try:
            with open(self.log_path, "rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0


def summarise_log(path: Path, result: RunResult) -> None:
    counts: collections.Counter[str] = collections.Counter()
    attempts = cached = 0
    with open(path, "rb") as f:
        for raw in f:
            result.log_lines += 1
            try:
                doc = json.loads(raw)
            except ValueError:
                counts["<not json>"] += 1
                continue
            event = str(doc.get("event", "?")) if isinstance(doc, dict) else "?"
            counts[event] += 1
            if event == "renewal_info_failed":
                if "unreachable moments ago" in str(doc.get("error", "")):
                    cached += 1
                else:
                    attempts += 1
    result.log_events = dict(counts.most_common())
    result.ari_connection_attempts = attempts
    result.ari_negative_cache_hits = cached


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_check_config(config: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``rotatord check-config`` as a subprocess; BenchError unless OK."""
    c0, t0 = children_cpu(), time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rotatord", "-c", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    wall, cpu = time.monotonic() - t0, children_cpu() - c0
    if done.returncode != 0:
        raise BenchError(f"check-config exited {done.returncode}: {done.stderr[-2000:]}")
    return wall, cpu


def toml_floor(config: Path) -> float:
    """Seconds for tomllib alone to parse the file: what no validation can go below."""
    t = time.process_time()
    tomllib.loads(config.read_text())
    return time.process_time() - t


def verify_planned(fleet: Fleet) -> tuple[int, float]:
    """Ask the daemon for status right after READY; every service must be planned."""
    t = time.monotonic()
    reply = request(fleet.control_socket, {"verb": "status"}, timeout=300)
    took = time.monotonic() - t
    if not reply.get("ok"):
        raise BenchError(f"status refused: {reply.get('error')}")
    docs = reply["services"]
    planned = sum(1 for d in docs if d.get("planned") is True)
    if len(docs) != fleet.n or planned != fleet.n:
        raise BenchError(f"at READY: {len(docs)} services in status, {planned} planned")
    return planned, took


def run(n: int, idle_seconds: float, keep: bool) -> RunResult:
    result = RunResult(services=n)
    # Short directory: AF_UNIX paths are capped at 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="rib-", dir="/tmp"))
    fleet = Fleet(work / "f", n, f"https://127.0.0.1:{free_port()}/dir", free_port())
    dirs = Fleet(work / "d", n, fleet.directory, fleet.listen_port, directory_outputs_only=True)
    daemon = Daemon(fleet.config, work, work / "daemon.log")
    try:
        t = time.monotonic()
        write_config(fleet)
        write_config(dirs)
        build_state(fleet)
        result.build_seconds = time.monotonic() - t
        result.config_bytes = fleet.config.stat().st_size

        result.toml_floor_seconds = toml_floor(fleet.config)
        result.check_config_seconds, result.check_config_cpu_seconds = timed_check_config(
            fleet.config
        )
        result.dir_outputs_seconds, result.dir_outputs_cpu_seconds = timed_check_config(dirs.config)

        neighbours = Neighbours()
        result.startup_seconds, result.startup_cpu_seconds = daemon.start()
        result.planned_at_ready, result.status_seconds = verify_planned(fleet)
        result.settled_seconds, ticks = daemon.wait_settled()
        result.others_cpus = neighbours.cpus(daemon.pid)
        result.cpu_seconds_to_settle = ticks / CLK_TCK
        result.rss_settled_mib = kib_to_mib(proc_status(daemon.pid)["VmRSS"])
        lines_before = daemon.log_line_count()
        result.idle_seconds, result.idle_cpu_percent = daemon.idle(idle_seconds)
        result.log_lines_idle = daemon.log_line_count() - lines_before
        st = proc_status(daemon.pid)
        result.rss_mib = kib_to_mib(st["VmRSS"])
        result.peak_rss_mib = kib_to_mib(st["VmHWM"])
        result.threads = int(st["Threads"])
        result.exit_code, result.exit_seconds = daemon.stop()
        if result.exit_code != 0:
            raise BenchError(f"exit status {result.exit_code} after SIGTERM:\n{daemon.log_tail()}")
    except BenchError as exc:
        result.error = str(exc)
    finally:
        daemon.kill()
        with contextlib.suppress(FileNotFoundError):
            summarise_log(daemon.log_path, result)
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


# ============================================================================ report


@dataclass(frozen=True)
class Check:
    what: str
    target: str
    value: float | None
    unit: str
    ok: bool | None


def _check(what: str, value: float | None, target: float, unit: str, strict: bool = False) -> Check:
    ok = None if value is None else (value < target if strict else value <= target)
    return Check(what, f"{'<' if strict else '<='} {target:g} {unit}", value, unit, ok)


def checks(r: RunResult) -> list[Check]:
    n = r.services
    return [
        _check(f"check-config, {n} services", r.check_config_seconds, TARGET_CHECK_CONFIG_S, "s"),
        _check(
            f"check-config, {n} directory outputs", r.dir_outputs_seconds, TARGET_DIR_OUTPUTS_S, "s"
        ),
        _check(f"start -> READY (all {n} planned)", r.startup_seconds, TARGET_READY_S, "s"),
        _check(f"RSS after idle, {n} services", r.rss_mib, TARGET_RSS_MIB, "MiB"),
        _check(f"idle CPU, {n} services", r.idle_cpu_percent, TARGET_IDLE_CPU_PCT, "%", True),
    ]


def _fmt(value: float | int | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(r: RunResult, results: list[Check], argv: list[str]) -> None:
    print(
        f"rotatord idle bench: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"CLK_TCK {CLK_TCK}"
    )
    print(f"command: PYTHONPATH=. python3 bench/idle.py {' '.join(argv)}".rstrip())
    print(
        f"fixture: {r.services} services x (2 names, 3 outputs incl. a directory output, "
        f"1 reload), pre-issued; config {r.config_bytes / 1e6:.1f} MB; built in "
        f"{r.build_seconds:.0f} s (not timed)"
    )
    print()
    rows = [
        ("floor: tomllib.loads of the config", r.toml_floor_seconds, None, "s cpu"),
        ("check-config (subprocess)", r.check_config_seconds, r.check_config_cpu_seconds, "s"),
        (
            "check-config, directory outputs only",
            r.dir_outputs_seconds,
            r.dir_outputs_cpu_seconds,
            "s",
        ),
        ("spawn -> READY=1", r.startup_seconds, r.startup_cpu_seconds, "s"),
        ("status at READY (reply time)", r.status_seconds, None, "s"),
        ("spawn -> start-up batch settled", r.settled_seconds, r.cpu_seconds_to_settle, "s"),
    ]
    for what, wall, cpu, unit in rows:
        extra = "" if cpu is None else f"   (cpu {cpu:.2f} s)"
        print(f"  {what:<40} {_fmt(wall):>8} {unit}{extra}")
    print(f"  {'services planned at READY':<40} {_fmt(r.planned_at_ready, 'd'):>8}")
    print(
        f"  {'RSS settled / after idle / peak':<40} {_fmt(r.rss_settled_mib, '.1f')} / "
        f"{_fmt(r.rss_mib, '.1f')} / {_fmt(r.peak_rss_mib, '.1f')} MiB, "
        f"{_fmt(r.threads, 'd')} threads"
    )
    print(
        f"  {'idle CPU':<40} {_fmt(r.idle_cpu_percent, '.3f'):>8} % over "
        f"{_fmt(r.idle_seconds, '.0f')} s ({r.log_lines_idle} log lines meanwhile)"
    )
    print(f"  {'exit after SIGTERM':<40} {_fmt(r.exit_code, 'd'):>8} in {_fmt(r.exit_seconds)} s")
    top = ", ".join(f"{k} {v}" for k, v in list(r.log_events.items())[:6])
    print(
        f"log: {r.log_lines} lines; ARI: {r.ari_connection_attempts} connection attempts, "
        f"{r.ari_negative_cache_hits} negative-cache hits; {top}"
    )
    if r.others_cpus is not None:
        busy = r.others_cpus > BUSY_CPUS
        print(
            f"other processes, spawn to settled: {r.others_cpus:.2f} CPUs busy"
            + ("  <- shared machine busy: wall times inflated; see the cpu figures" if busy else "")
        )
    if r.error:
        print(f"ERROR: {r.error}")
    print()
    width = max(len(c.what) for c in results)
    for c in results:
        verdict = "n/a" if c.ok is None else ("PASS" if c.ok else "FAIL")
        value = _fmt(c.value, ".3f" if c.unit == "%" else ".2f")
        print(f"{c.what:<{width}}  target {c.target:<10} measured {value:>8} {c.unit:<4} {verdict}")


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--services", type=int, default=10000, metavar="N")
    ap.add_argument("--idle-seconds", type=float, default=60.0, metavar="S")
    ap.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (state, configs, log)")
    args = ap.parse_args(args_list)
    if args.services < 1 or args.idle_seconds <= 0:
        ap.error("--services must be >= 1, --idle-seconds > 0")
    r = run(args.services, args.idle_seconds, args.keep)
    results = checks(r)
    if args.json:
        doc: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "run": asdict(r),
            "checks": [asdict(c) for c in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print_report(r, results, args_list)
    return 1 if r.error else 0


if __name__ == "__main__":
    sys.exit(main())
