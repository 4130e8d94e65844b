"""Audit append cost: milliseconds per record on an empty log versus a large one.

One job: build two audit logs in a temporary directory on the same file system (``--dir``,
default the system temp dir), one empty and one of ``--log-mb`` MB (default 100) of valid,
hash-chained records written by ``AuditLog`` itself, then time ``--records`` appends (default
300, sealed: a host key is created first, as ``rotatord audit init-seal`` would) on each, with a
fresh ``AuditLog`` object each time (so the one-time tail check at open is part of the figure),
interleaved in blocks so a noisy neighbour weighs on both alike. Every append is fsynced, as
the daemon's are.

Building the large log is not timed; it writes the records with fsync turned off (``os.fsync``
patched to a no-op while building only), then checks the file's size.

Prints both figures, their ratio against the 1.2x target, and the command that reproduces it
(``--json``: one JSON document). Exits 0 whatever the ratio (it is a measurement); 2 on a usage
error.

Run from the repository root: ``python bench/audit_append.py`` (``--log-mb 100 --records 300``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rotatord.clock import SystemClock  # noqa: E402 - after the sys.path fix above
from rotatord.observe.audit import AuditLog  # noqa: E402
from rotatord.observe.verify import verify_chain  # noqa: E402

TARGET = 1.2
BLOCK = 25
FIELDS: dict[str, Any] = {
    "service": "svc-00042",
    "rotation_id": "0123456789abcdef",
    "trigger": "schedule",
    "serial": "04a1b2c3d4e5f60718293a4b5c6d7e8f9a0b",
    "version": "20261202T101010Z-04a1b2c3",
    "key_fingerprint": "sha256:" + "ab" * 32,
}


def new_log(path: Path) -> AuditLog:
    audit = AuditLog(path, SystemClock(), echo=False, seal_key=path.with_suffix(".key"))
    audit.start_sealing(os.urandom(32))
    return audit


def fill(audit: AuditLog, target_bytes: int) -> int:
    """Append records (fsync off) until the file holds ``target_bytes``; returns how many."""
    n = 0
    with mock.patch("os.fsync", lambda _fd: None):
        while True:
            for _ in range(1000):
                audit.emit("certificate_activated", n=n, **FIELDS)
                n += 1
            if audit.path.stat().st_size >= target_bytes:
                return n


def time_block(path: Path, records: int) -> list[float]:
    """Open the log afresh (the tail check at open is counted) and time ``records`` appends."""
    out: list[float] = []
    t_open = time.perf_counter()
    audit = AuditLog(path, SystemClock(), echo=False, seal_key=path.with_suffix(".key"))
    for i in range(records):
        t0 = time.perf_counter() if i else t_open
        audit.emit("rotation_finished", i=i, **FIELDS)
        out.append(time.perf_counter() - t0)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="rotatord-audit-bench-") as tmp:
        empty, big = Path(tmp) / "empty.log", Path(tmp) / "big.log"
        new_log(empty)
        built = fill(new_log(big), args.log_mb * 1_000_000)
        size = big.stat().st_size
        times: dict[str, list[float]] = {"empty": [], "big": []}
        for block in range(0, args.records, BLOCK):
            n = min(BLOCK, args.records - block)
            times["empty"] += time_block(empty, n)
            times["big"] += time_block(big, n)
        ok = verify_chain(big)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        mean = {k: statistics.fmean(v) * 1000 for k, v in times.items()}
        return {
            "records_timed": args.records,
            "big_log_bytes": size,
            "big_log_records_before": built,
            "empty_ms_median": round(med["empty"], 4),
            "big_ms_median": round(med["big"], 4),
            "empty_ms_mean": round(mean["empty"], 4),
            "big_ms_mean": round(mean["big"], 4),
            "ratio_median": round(med["big"] / med["empty"], 3),
            "ratio_mean": round(mean["big"] / mean["empty"], 3),
            "target_ratio": TARGET,
            "big_chain_ok_after": ok.ok,
            "command": f"python bench/audit_append.py --log-mb {args.log_mb} "
            f"--records {args.records}",
        }


def render(r: dict[str, Any]) -> str:
    verdict = "PASS" if r["ratio_mean"] <= TARGET else "FAIL"
    return "\n".join(
        [
            f"audit append, {r['records_timed']} fsynced sealed records per log "
            f"(fresh AuditLog per block of {BLOCK})",
            f"{'log':>14}{'median ms':>12}{'mean ms':>10}",
            f"{'empty':>14}{r['empty_ms_median']:>12.4f}{r['empty_ms_mean']:>10.4f}",
            f"{r['big_log_bytes'] / 1e6:>11.1f} MB{r['big_ms_median']:>12.4f}"
            f"{r['big_ms_mean']:>10.4f}",
            f"ratio big/empty: median {r['ratio_median']:.3f}, mean {r['ratio_mean']:.3f} "
            f"(target <= {TARGET}: {verdict}); chain intact after: {r['big_chain_ok_after']}",
            f"reproduce: {r['command']}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-mb", type=int, default=100, help="size of the big log (MB)")
    parser.add_argument("--records", type=int, default=300, help="appends timed per log")
    parser.add_argument("--dir", default=None, help="where to build the logs (default: tmp)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.log_mb < 1 or args.records < 1:
        parser.error("--log-mb and --records must be at least 1")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
