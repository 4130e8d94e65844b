"""Reload latency: from the start of a rotation to the live TLS probe seeing the new certificate.

One job: start a local Pebble (``pebble.runner.PebbleServer`` defaults) and a real nginx on
127.0.0.1, configure one service (``web.example.test``) whose rotation reloads that nginx through a
shared reload target (``nginx -s reload``) and then probes it over TLS, and time N forced
rotations in-process (``Rotator.rotate("web", force=True)``).

Each rotation is split with the timestamps of its own audit records (``ts``, wall clock, taken
just before each record is written and fsynced):

* **issuance**: ``rotation_started`` → ``certificate_issued`` (key, CSR, the ACME order with
  rotatord's HTTP-01 listener, download);
* **publication**: ``certificate_issued`` → ``certificate_activated`` (verification, staging with
  fsyncs, the atomic ``current`` flip);
* **reload**: ``certificate_activated`` → the last ``reload_succeeded`` (the reload command:
  ``nginx -s reload`` only signals the master and returns);
* **probe**: the last ``reload_succeeded`` → ``probe_succeeded`` (nginx re-reading its config and
  handing over to new workers, observed by rotatord's TLS probe, which needs 3 matching
  handshakes in a row);
* **total**: ``rotation_started`` → ``probe_succeeded``; the four phases add up to it exactly.

The probe phase is further split by wrapping ``rotatord.deploy.probe.fetch_leaf_der`` (the
probe's one handshake) to note when each handshake returned and what it served: **wait** is the
last ``reload_succeeded`` → the first handshake serving the new certificate, **confirm** the rest
(longer when a later handshake still reaches an old nginx worker: the probe's count restarts).
The last handshake that still served the old certificate is noted too: nginx switched between the
two, and the gap between them is the probe's backoff (it sleeps 20, 40, 80, 160 ms ... between
handshakes that do not match), so "wait" is an upper bound on nginx's own switch time.

Each boundary timestamp is taken before its record's own write+fsync, so that fsync is counted in
the phase that follows it (e.g. the ``certificate_issued`` record's fsync is publication).

Not timed: starting Pebble and nginx, the first issuance (before nginx exists, with no reload
target in the config), one warm-up rotation with the full config (account, directory and
connections are then cached, as in a running daemon), and after every rotation a check, by a
handshake of this script's own, that nginx serves the new certificate.

Prints per-phase median and p90 (ms) and each phase's share of the total (``--json``: one JSON
document, with every rotation's figures). Exits 0 on a completed measurement, 1 when a rotation
or a server fails, 2 on a usage error.

Run from the repository root: ``python bench/reload_latency.py`` (the script puts the repository
root on ``sys.path`` itself, for ``pebble`` and ``tests``). Needs Pebble and nginx.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

from cryptography import x509

from rotatord.config import load_config
from rotatord.core.model import ProbeSpec
from rotatord.daemon import build_rotator
from rotatord.deploy import probe as probe_module
from rotatord.observe.logging import configure_logging
from rotatord.rotation import RotationResult, Rotator

# ``pebble`` and ``tests`` are directories of this repository, not installed packages: make them
# importable whatever the working directory (``rotatord`` itself is installed, editable).
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pebble import PebbleServer  # noqa: E402
from tests.daemon_harness import Record, read_audit, service, write_config  # noqa: E402
from tests.servers import Nginx, served_der  # noqa: E402

LOOPBACK = "127.0.0.1"
SERVICE = "web"
DOMAIN = "web.example.test"
#: rotatord's probe deadline and the reload command's timeout, in seconds.
PROBE_DEADLINE = 10
RELOAD_TIMEOUT = 10
PHASES = ("issuance", "publication", "reload", "probe")
PROBE_PARTS = ("probe_wait", "probe_confirm")
OUTSIDE = ("before_start", "after_probe", "rotate_call")


class BenchError(RuntimeError):
    """A server or a rotation failed: the figures would be meaningless."""


# --------------------------------------------------------------------------- probe handshakes


class HandshakeLog:
    """Wraps the probe's ``fetch_leaf_der``: (wall time the handshake returned, leaf SHA-256)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original: Callable[[ProbeSpec, str, float], bytes] = probe_module.fetch_leaf_der

        def fetch(spec: ProbeSpec, sni: str, timeout: float) -> bytes:
            der = original(spec, sni, timeout)
            at = time.time()
            with self._lock:
                self.seen.append((at, hashlib.sha256(der).hexdigest()))
            return der

        with mock.patch.object(probe_module, "fetch_leaf_der", fetch):
            yield

    def bracket(self, fingerprint: str, after: float) -> tuple[float, float | None]:
        """(last handshake after ``after`` serving another certificate before the first one
        serving ``fingerprint``, or ``after`` itself if none; that first one, None if unseen)."""
        with self._lock:
            seen = sorted((t, fp) for t, fp in self.seen if t >= after)
        first = next((t for t, fp in seen if fp == fingerprint), None)
        old = [t for t, fp in seen if fp != fingerprint and (first is None or t < first)]
        return (max(old) if old else after), first


# --------------------------------------------------------------------------- one rotation


@dataclass(frozen=True)
class Sample:
    """One timed rotation, in milliseconds (``probe_wait``/``probe_confirm``: None if unseen)."""

    serial: str
    issuance: float
    publication: float
    reload: float
    probe: float
    total: float
    probe_wait: float | None
    probe_confirm: float | None
    probe_last_old: float
    probe_attempts: int
    before_start: float
    after_probe: float
    rotate_call: float


def _ts(record: Record) -> float:
    return datetime.fromisoformat(str(record["ts"])).timestamp()


def _one(records: Sequence[Record], event: str) -> Record:
    found = [r for r in records if r.get("event") == event]
    if len(found) != 1:
        raise BenchError(f"expected one {event!r} audit record, found {len(found)}")
    return found[0]


def sample_of(
    result: RotationResult,
    records: Sequence[Record],
    called: float,
    returned: float,
    handshakes: HandshakeLog,
) -> Sample:
    """Split one rotation along its audit records (those with ``result.rotation_id``)."""
    mine = [r for r in records if r.get("rotation_id") == result.rotation_id]
    started = _ts(_one(mine, "rotation_started"))
    issued_rec = _one(mine, "certificate_issued")
    issued = _ts(issued_rec)
    activated = _ts(_one(mine, "certificate_activated"))
    reloads = [r for r in mine if r.get("event") == "reload_succeeded"]
    if not reloads:
        raise BenchError("no reload_succeeded audit record: is the reload target configured?")
    reloaded = max(_ts(r) for r in reloads)
    probe_rec = _one(mine, "probe_succeeded")
    probed = _ts(probe_rec)
    fingerprint = str(issued_rec["cert_fingerprint"])
    if probe_rec.get("served_fingerprint") != fingerprint:
        raise BenchError("probe_succeeded does not name the issued certificate")
    if not started <= issued <= activated <= reloaded <= probed:
        raise BenchError("audit timestamps out of order (wall clock stepped?)")
    last_old, seen = handshakes.bracket(fingerprint, reloaded)
    ms = 1000.0
    return Sample(
        serial=str(issued_rec["serial"]),
        issuance=(issued - started) * ms,
        publication=(activated - issued) * ms,
        reload=(reloaded - activated) * ms,
        probe=(probed - reloaded) * ms,
        total=(probed - started) * ms,
        probe_wait=None if seen is None else (seen - reloaded) * ms,
        probe_confirm=None if seen is None else max(0.0, probed - seen) * ms,
        probe_last_old=(last_old - reloaded) * ms,
        probe_attempts=int(probe_rec.get("attempts", 0)),
        before_start=(started - called) * ms,
        after_probe=(returned - probed) * ms,
        rotate_call=(returned - called) * ms,
    )


def rotate(rotator: Rotator) -> tuple[RotationResult, float, float]:
    """Force one rotation of the service; raise :class:`BenchError` unless it rotated."""
    called = time.time()
    result = rotator.rotate(SERVICE, force=True)
    returned = time.time()
    if result.outcome != "rotated" or not result.new_serial:
        raise BenchError(f"rotation {result.outcome}: {result.error}")
    return result, called, returned


def check_served(nginx: Nginx, state: Path) -> None:
    """Outside the timing: this script's own handshake sees what ``current`` holds."""
    der = served_der(nginx.port, DOMAIN)
    current = (state / "services" / SERVICE / "current" / "cert.pem").read_bytes()
    want = x509.load_pem_x509_certificate(current).serial_number
    got = None if der is None else x509.load_der_x509_certificate(der).serial_number
    if got != want:
        raise BenchError(f"nginx serves serial {got}, current holds {want}")


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def p90(values: Sequence[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def summarise(samples: Sequence[Sample]) -> dict[str, Any]:
    totals = [s.total for s in samples]
    grand = sum(totals)

    def row(values: Sequence[float], share: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "median_ms": round(median(values), 2),
            "p90_ms": round(p90(values), 2),
        }
        if share:
            out["share_percent"] = round(100 * sum(values) / grand, 1)
        return out

    phases = {p: row([float(getattr(s, p)) for s in samples], True) for p in PHASES}
    parts: dict[str, Any] = {}
    for p in PROBE_PARTS:
        values = [v for v in (getattr(s, p) for s in samples) if v is not None]
        parts[p] = row(values, True) if len(values) == len(samples) else None
    outside = {p: row([float(getattr(s, p)) for s in samples], False) for p in OUTSIDE}
    attempts = [s.probe_attempts for s in samples]
    return {
        "phases": phases,
        "probe_parts": parts,
        "probe_last_old": row([s.probe_last_old for s in samples], False),
        "total": row(totals, False),
        "outside_total": outside,
        "probe_attempts": {"median": median(attempts), "max": max(attempts)},
    }


# --------------------------------------------------------------------------- setup and run


def nginx_binary() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        raise BenchError("nginx is not installed ('apt-get install -y nginx-light')")
    return path


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: nginx/")


def full_services(pebble: PebbleServer, nginx: Nginx) -> str:
    """The service with the shared nginx reload target and a TLS probe of that nginx."""
    extra = f'reload_targets = ["nginx"]\nprobe_deadline = {PROBE_DEADLINE}\n'
    return (
        service(SERVICE, pebble.http_port, extra=extra, domains=(DOMAIN,))
        + f"""
[[services.{SERVICE}.probe]]
address = "{LOOPBACK}:{nginx.port}"

[reload_targets.nginx]
[[reload_targets.nginx.actions]]
command = {json.dumps(nginx.argv("-s", "reload"))}
timeout = {RELOAD_TIMEOUT}
"""
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    binary = nginx_binary()
    handshakes = HandshakeLog()
    with contextlib.ExitStack() as stack:
        devnull = stack.enter_context(open(os.devnull, "w"))
        configure_logging(fmt="json", stream=devnull)  # the audit echo, as the daemon renders it
        workdir = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="rl-", dir=args.workdir or "/tmp")
            )
        )
        state, cfg = workdir / "state", workdir / "rotatord.toml"
        pebble = stack.enter_context(PebbleServer())

        # First certificate, before nginx exists: no reload target, no probe.
        write_config(cfg, pebble, state, service(SERVICE, pebble.http_port, domains=(DOMAIN,)))
        first = build_rotator(load_config(cfg))
        try:
            rotate(first)
        finally:
            first.close()

        nginx = Nginx(binary, workdir / "nginx", {DOMAIN: state / "services" / SERVICE / "current"})
        stack.callback(nginx.stop)
        nginx.start()
        write_config(cfg, pebble, state, full_services(pebble, nginx))
        rotator = build_rotator(load_config(cfg))
        stack.callback(rotator.close)
        stack.enter_context(handshakes.installed())

        rotate(rotator)  # warm-up, not timed
        check_served(nginx, state)

        runs: list[tuple[RotationResult, float, float]] = []
        for _ in range(args.rotations):
            runs.append(rotate(rotator))
            check_served(nginx, state)  # after rotate() returned: outside every figure
        records = read_audit(state / "audit.jsonl")
        samples = [sample_of(res, records, t0, t1, handshakes) for res, t0, t1 in runs]

    return {
        "rotations": len(samples),
        "service": DOMAIN,
        "nginx": nginx_version(binary),
        "reload": "nginx -s reload (shared reload target)",
        "probe_deadline_s": PROBE_DEADLINE,
        **summarise(samples),
        "samples": [
            {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(s).items()}
            for s in samples
        ],
    }


# --------------------------------------------------------------------------- output


def render(result: dict[str, Any]) -> str:
    labels = {
        "issuance": "issuance",
        "publication": "publication",
        "reload": "reload",
        "probe": "probe",
        "probe_wait": "  wait for new cert",
        "probe_confirm": "  confirm (3 in a row)",
    }
    lines = [
        f"reload_latency: {result['rotations']} forced rotations of {result['service']}, "
        f"local Pebble, nginx {result['nginx']} reloaded with -s reload, TLS probe on loopback",
        f"{'phase':26}{'median ms':>11}{'p90 ms':>10}{'share':>9}",
    ]

    def line(label: str, row: dict[str, Any] | None) -> str:
        if row is None:
            return f"{label:26}{'n/a':>11}"
        share = f"{row['share_percent']:>7.1f} %" if "share_percent" in row else ""
        return f"{label:26}{row['median_ms']:>11.1f}{row['p90_ms']:>10.1f}{share}"

    for p in PHASES:
        lines.append(line(labels[p], result["phases"][p]))
        if p == "probe":
            lines.extend(line(labels[q], result["probe_parts"][q]) for q in PROBE_PARTS)
    lines.append(line("total: start → probe sees", result["total"]))
    out, attempts = result["outside_total"], result["probe_attempts"]
    lines.append(
        f"outside the total (median ms): before rotation_started "
        f"{out['before_start']['median_ms']:.1f}, after probe_succeeded "
        f"{out['after_probe']['median_ms']:.1f}; whole rotate() call "
        f"{out['rotate_call']['median_ms']:.1f} (p90 {out['rotate_call']['p90_ms']:.1f})"
    )
    lines.append(
        f"probe handshakes per rotation: median {attempts['median']:g}, max {attempts['max']}"
    )
    wait = result["probe_parts"]["probe_wait"]
    if wait is not None:
        lines.append(
            f"nginx switched between the last old-cert handshake, median "
            f"{result['probe_last_old']['median_ms']:.1f} ms after the reload returned, and the "
            f"first new-cert one, median {wait['median_ms']:.1f} ms (the gap is probe backoff)"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time forced rotations of one service behind a real nginx, from rotation start to the "
            "TLS probe seeing the new certificate, split into issuance, publication, reload and "
            "probe."
        )
    )

    def positive(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return value

    parser.add_argument(
        "--rotations",
        type=positive,
        default=20,
        metavar="N",
        help="timed rotations, after one warm-up rotation (default 20)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent of the fresh state dir (default /tmp); fsync costs depend on its filesystem",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except RuntimeError as exc:  # BenchError, PebbleUnavailable, a server that did not start
        print(f"reload_latency: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
