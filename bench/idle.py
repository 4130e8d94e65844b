"""Startup time, memory and idle CPU of ``rotatord run`` with many services and nothing to do.

One job: build a state directory where every service already holds a valid certificate (one
throwaway ECDSA CA from ``tests.certs``, one P-256 leaf per service, valid from now-1d to now+89d,
with ``meta.json`` matching the config so no "config drift" is seen), start the real daemon as a
subprocess and measure, from the outside, what an operator would see:

* **startup seconds**: from ``Popen`` to the daemon's sd_notify ``READY=1`` on a unix datagram
  socket this script binds (READY is sent once the control socket is bound and every service is
  scheduled);
* **settled seconds**: from ``Popen`` until the daemon's CPU goes quiet, i.e. its first planning
  pass over every service is over. ``/proc/<pid>/stat`` utime+stime is sampled every 0.5 s; the
  daemon has settled when it used at most 1 % of one CPU over the last 2 s. The figure is the
  start of that quiet window. The count of ``renewal_info_failed`` log lines (one per service
  planned, see below) cross-checks it;
* **RSS** (``VmRSS``), peak RSS (``VmHWM``) and threads after the idle window;
* **idle CPU %** = Δ(utime+stime) / CLK_TCK / wall x 100 over ``--idle-seconds`` after settling;
* **exit**: SIGTERM, then the exit status (must be 0) and the time until the process is gone.

The ACME directory is ``https://127.0.0.1:<port>/dir`` with a port this script bound and closed,
so nothing answers: the daemon's ARI lookups fail fast (connection refused) and it falls back to
its own schedule; the issuer negative-caches a failed directory fetch for 5 s. The daemon's
stdout (JSON log lines) is kept and summarised: lines per event, and how many
``renewal_info_failed`` lines were real connection attempts versus negative-cache hits.

A second daemon run (``--startup-only N2``, default 10 000; 0 skips it) measures startup and
settling only, for N2 services.

Everything binds or connects to 127.0.0.1 only. Building the state directory is not timed; it
writes through the store's own ``stage``/``activate`` with the fsyncs turned off (the daemon under
test never sees the difference, the build just avoids 10 fsyncs per service).

Prints a table with the targets and PASS/FAIL (``--json``: one JSON document). Exits 0 whatever
the figures (it is a measurement); 1 when the daemon fails to start, settle, or exit cleanly;
2 on a usage error.

Run from the repository root: ``python bench/idle.py`` (the script puts the repository root on
``sys.path`` itself, for ``tests.certs``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rotatord.core.model import IssuedMeta, KeyType
from rotatord.fsutil import FsOps
from rotatord.store import Bundle, ServiceStore

# ``tests`` is a directory of this repository, not an installed package: make it importable
# whatever the working directory (``rotatord`` itself is installed, editable).
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.certs import CertificateAuthority, cert_to_pem, key_to_pem, make_ca  # noqa: E402

LOOPBACK = "127.0.0.1"
ACCOUNT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MB = 1024 * 1024  # figures are MiB, as ps/top show them

#: Targets from the acceptance list.
TARGET_STARTUP_S = 5.0  # with --startup-only services (10 000)
TARGET_RSS_MIB = 80.0  # with --services services (1 000)
TARGET_IDLE_CPU_PCT = 1.0  # with --services services, strictly below

#: Settling: sample every SAMPLE_S; quiet when CPU over the last QUIET_S is at most QUIET_PCT.
SAMPLE_S = 0.5
QUIET_S = 2.0
QUIET_PCT = 1.0
READY_TIMEOUT_S = 300.0
SETTLE_TIMEOUT_S = 600.0
EXIT_TIMEOUT_S = 60.0
#: Flag a run whose neighbours kept more than this many CPUs busy while it started.
BUSY_CPUS = 0.25


class BenchError(Exception):
    """The daemon did not behave (no READY, never settled, bad exit): the run is void."""


class _NoSyncOps(FsOps):
    """The store's syscalls without fsync: building the fixture is not what is measured."""

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: Path) -> None:
        pass


# ============================================================================ fixture


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and has nothing listening on it now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


def service_name(i: int) -> str:
    return f"svc{i:05d}"


def write_config(
    path: Path, state: Path, sock_dir: Path, directory: str, listen_port: int, n: int
) -> None:
    """A daemon config with ``n`` services sharing one account and one (never started) listener."""
    parts = [
        f"""[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
control_socket = "{sock_dir}/ctl.sock"
log_format = "json"

[acme.{ACCOUNT}]
directory = "{directory}"
"""
    ]
    for i in range(n):
        name = service_name(i)
        parts.append(
            f"""
[services.{name}]
domains = ["{name}.example.test"]
account = "{ACCOUNT}"
key_type = "ecdsa-p256"
[services.{name}.challenge]
listen = "{LOOPBACK}:{listen_port}"
"""
        )
    path.write_text("".join(parts))


def issue_leaf(
    ca: CertificateAuthority,
    key: ec.EllipticCurvePrivateKey,
    name: str,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """Like ``tests.certs.issue_leaf`` plus the Authority Key Identifier every public CA (and
    Pebble) puts in a leaf: without it there is no RFC 9773 certificate id, and the daemon would
    skip ARI entirely, which is not what a real deployment does."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def build_state(state: Path, n: int, directory: str) -> None:
    """Give each of ``n`` services a current, valid, not-yet-due certificate from one CA."""
    ca = make_ca("rotatord idle bench")
    # Fixture validity is relative to the real now: the daemon reads the real clock.
    now = datetime.now(UTC).replace(microsecond=0)
    not_before, not_after = now - timedelta(days=1), now + timedelta(days=89)
    ops = _NoSyncOps()
    for i in range(n):
        name = service_name(i)
        domain = f"{name}.example.test"
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = issue_leaf(ca, key, domain, not_before, not_after)
        meta = IssuedMeta(
            names=(domain,),
            key_type=KeyType.ECDSA_P256,
            account=ACCOUNT,
            directory=directory,
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            issued_at=not_before,
        )
        bundle = Bundle(key_to_pem(key), cert_to_pem(leaf), ca.chain_pem, meta)
        store = ServiceStore(state, name, ops=ops)
        store.activate(store.stage(bundle))


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


@dataclass
class RunResult:
    services: int
    build_seconds: float = 0.0
    startup_seconds: float | None = None
    #: The daemon's own CPU time (all threads) at READY: unlike startup_seconds, it hardly
    #: depends on what else the machine is doing.
    startup_cpu_seconds: float | None = None
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
    #: CPUs' worth of work done by *other* processes (system busy time minus the daemon's and
    #: this script's) from spawn to settled: on a shared machine it inflates startup and settled
    #: times, not the daemon's own CPU figures.
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


def run_daemon(n: int, idle_seconds: float | None, keep: bool) -> RunResult:
    """Build a state dir for ``n`` services, run the daemon, measure; ``idle_seconds=None`` skips
    the idle window (startup-only run)."""
    result = RunResult(services=n)
    # Short directory: AF_UNIX paths are capped at 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="rib-", dir="/tmp"))
    state, conf_dir = work / "state", work / "conf"
    conf_dir.mkdir()  # its own directory: the daemon watches the config's directory
    config = conf_dir / "rotatord.toml"
    directory = f"https://{LOOPBACK}:{free_port()}/dir"
    daemon = Daemon(config, work, work / "daemon.log")
    try:
        t = time.monotonic()
        build_state(state, n, directory)
        write_config(config, state, work, directory, free_port(), n)
        result.build_seconds = time.monotonic() - t

        neighbours = Neighbours()
        result.startup_seconds, result.startup_cpu_seconds = daemon.start()
        result.settled_seconds, ticks = daemon.wait_settled()
        result.others_cpus = neighbours.cpus(daemon.pid)
        result.cpu_seconds_to_settle = ticks / CLK_TCK
        result.rss_settled_mib = kib_to_mib(proc_status(daemon.pid)["VmRSS"])
        lines_before = daemon.log_line_count()
        if idle_seconds is not None:
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


def checks(main: RunResult, big: RunResult | None) -> list[Check]:
    out = []
    if big is not None:
        s = big.startup_seconds
        out.append(
            Check(
                f"startup, {big.services} services",
                f"<= {TARGET_STARTUP_S:g} s",
                s,
                "s",
                None if s is None else s <= TARGET_STARTUP_S,
            )
        )
    r = main.rss_mib
    out.append(
        Check(
            f"RSS, {main.services} services, after idle",
            f"<= {TARGET_RSS_MIB:g} MiB",
            r,
            "MiB",
            None if r is None else r <= TARGET_RSS_MIB,
        )
    )
    c = main.idle_cpu_percent
    out.append(
        Check(
            f"idle CPU, {main.services} services",
            f"< {TARGET_IDLE_CPU_PCT:g} %",
            c,
            "%",
            None if c is None else c < TARGET_IDLE_CPU_PCT,
        )
    )
    return out


def _fmt(value: float | int | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(runs: list[RunResult], results: list[Check]) -> None:
    print(
        f"rotatord idle bench: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"CLK_TCK {CLK_TCK}"
    )
    print()
    head = (
        f"{'services':>8} {'build s':>8} {'startup s':>9} {'(cpu s)':>7} {'settled s':>9} "
        f"{'(cpu s)':>7} "
        f"{'RSS MiB':>8} {'peak MiB':>8} {'thr':>4} {'idle s':>6} {'idle CPU%':>9} "
        f"{'exit':>4} {'exit s':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in runs:
        print(
            f"{r.services:>8} {_fmt(r.build_seconds, '.1f'):>8} {_fmt(r.startup_seconds):>9} "
            f"{_fmt(r.startup_cpu_seconds):>7} {_fmt(r.settled_seconds, '.1f'):>9} "
            f"{_fmt(r.cpu_seconds_to_settle):>7} "
            f"{_fmt(r.rss_mib, '.1f'):>8} {_fmt(r.peak_rss_mib, '.1f'):>8} "
            f"{_fmt(r.threads, 'd'):>4} {_fmt(r.idle_seconds, '.1f'):>6} "
            f"{_fmt(r.idle_cpu_percent, '.3f'):>9} {_fmt(r.exit_code, 'd'):>4} "
            f"{_fmt(r.exit_seconds):>6}"
        )
    print()
    for r in runs:
        top = ", ".join(f"{k} {v}" for k, v in list(r.log_events.items())[:6])
        print(
            f"log, {r.services} services: {r.log_lines} lines ({r.log_lines_idle} during idle); "
            f"ARI: {r.ari_connection_attempts} connection attempts, "
            f"{r.ari_negative_cache_hits} negative-cache hits; {top}"
        )
        if r.others_cpus is not None:
            busy = r.others_cpus > BUSY_CPUS
            print(
                f"other processes, {r.services} services, spawn to settled: "
                f"{r.others_cpus:.2f} CPUs busy"
                + ("  <- shared machine busy: startup/settled inflated" if busy else "")
            )
        if r.error:
            print(f"ERROR, {r.services} services: {r.error}")
    print()
    width = max(len(c.what) for c in results)
    for c in results:
        verdict = "n/a" if c.ok is None else ("PASS" if c.ok else "FAIL")
        value = _fmt(c.value, ".3f" if c.unit == "%" else ".2f")
        print(f"{c.what:<{width}}  target {c.target:<10} measured {value:>8} {c.unit:<4} {verdict}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--services", type=int, default=1000, metavar="N")
    ap.add_argument("--idle-seconds", type=float, default=60.0, metavar="S")
    ap.add_argument(
        "--startup-only", type=int, default=10000, metavar="N2", help="0 skips the second run"
    )
    ap.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    ap.add_argument("--keep", action="store_true", help="keep the work dirs (state, config, log)")
    args = ap.parse_args(argv)
    if args.services < 1 or args.startup_only < 0 or args.idle_seconds <= 0:
        ap.error("--services must be >= 1, --startup-only >= 0, --idle-seconds > 0")

    runs = [run_daemon(args.services, args.idle_seconds, args.keep)]
    big = run_daemon(args.startup_only, None, args.keep) if args.startup_only else None
    if big is not None:
        runs.append(big)
    results = checks(runs[0], big)
    if args.json:
        doc: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "runs": [asdict(r) for r in runs],
            "checks": [asdict(c) for c in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print_table(runs, results)
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
