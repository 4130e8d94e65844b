"""Seconds per certificate: rotatord versus a raw-protocol floor, and concurrent versus sequential.

One job: start a local Pebble (``pebble.runner.PebbleServer`` defaults: 5 % of nonces rejected,
no authorization reuse, everything on 127.0.0.1) and, in the same run and the same Pebble, time:

1. **sequential, rotatord vs the floor** (``--services N``, default 50). rotatord:
   ``Rotator.rotate(name, force=True)`` for N *realistic* services one after the other on a
   fresh state dir: two names each, three outputs (``fullchain``, ``combined`` and a
   ``directory`` output) and one reload action (``/bin/true``), so the whole story runs (key,
   CSR, order, HTTP-01 listener, verification, staging with fsyncs, activation, outputs, reload,
   hash-chained sealed audit records, journal, status). **The floor**: the same N two-name orders
   written directly with the ``acme`` library the way its ``http01_example.py`` reads, one
   process, keep-alive, **polling every 5 ms** (not rotatord's schedule): what the protocol
   itself costs at this Pebble. The ratio rotatord / floor is the figure (goal <= 1.5x).
2. **concurrent vs sequential, rotatord only** (``--batch M``, default 200; 0 skips it): the
   same M realistic services rotated as one ``rotate_batch(force=True)`` with
   ``max_workers=1``, then again with the default concurrency (``[daemon] max_concurrent``,
   default 4). The speed-up is the figure (goal >= 1.8x). ``nstat -az TcpExtListenOverflows``
   is read before and after: a dropped HTTP-01 validation connection (a full accept queue)
   shows there, and costs an order Pebble's 1 s retry (goal: 0).

acme's stock ``poll_and_finalize`` (fixed 1 s sleeps) is measured on a few orders
(``--stock-orders``), informational only.

Fairness rules, and why:

* account registration, the directory fetch and one warm-up order per side are not timed;
* both sides survive Pebble's badNonce rejections by retrying a bounded number of times (acme
  alone retries once, which a 50-order run at 5 % outruns);
* the N orders run in chunks of ``--block`` (default 5) orders; each chunk is done by both sides,
  in the order floor-rotatord, then rotatord-floor for the next chunk, and so on. A Pebble that
  slows down as it accumulates orders, or a neighbour that loads the CPU for a while, weighs on
  both sides alike;
* the floor keeps one HTTP-01 listener up for a whole block (a bare loop has no reason to do
  otherwise); rotatord does whatever it does per rotation, and that is part of what is measured;
* rotatord's structlog output is rendered as JSON (as the daemon would) but written to
  ``os.devnull``, so the terminal does not slow either side; the audit log is sealed (a host key
  is created first, as ``rotatord audit init-seal`` would).

It prints a short table (``--json``: one JSON document) and the command that reproduces it, and
exits 0 whatever the ratios: it is a measurement. It exits 1 when an order or a rotation fails,
2 on a usage error.

Run from the repository root: ``python bench/rotate_many.py --services 50 --batch 200``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from acme import challenges, client, crypto_util, messages, standalone
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from rotatord.clock import SystemClock
from rotatord.config import parse_config
from rotatord.daemon import build_rotator
from rotatord.observe.audit import open_audit, verify_chain
from rotatord.observe.logging import configure_logging
from rotatord.observe.sealkey import new_initial_key
from rotatord.rotation import Rotator

# ``pebble`` is a directory of this repository, not an installed package: make it importable
# whatever the working directory (``rotatord`` itself is installed, editable).
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LOOPBACK = "127.0.0.1"
#: The floor polls this often, every time (the raw-protocol floor of the issue: 5 ms polls).
FLOOR_POLL = 0.005
#: badNonce retries per request (rotatord's ``MAX_BAD_NONCE_RETRIES``).
MAX_BAD_NONCE_RETRIES = 10
#: Give up on one order after this long (rotatord's default ``order_deadline``).
ORDER_DEADLINE = 120.0
#: HTTP timeout of one request to Pebble.
REQUEST_TIMEOUT = 30
TARGET_RATIO = 1.5
TARGET_SPEEDUP = 1.8
USER_AGENT = "rotatord-bench/0.1 (+acme-python)"
DOMAIN_SUFFIX = "bench.test"


class BenchError(RuntimeError):
    """An order or a rotation failed: the figures would be meaningless."""


# --------------------------------------------------------------------------- bare acme loop


class RetryingNetwork(client.ClientNetwork):
    """``ClientNetwork`` that retries badNonce up to :data:`MAX_BAD_NONCE_RETRIES` times.

    acme 5.9 retries once; at Pebble's default 5 % rejection two in a row hit 0.25 % of
    requests, so a 50-order run (about 400 signed requests) crashes more often than not.
    """

    bad_nonces: int = 0

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for _ in range(MAX_BAD_NONCE_RETRIES):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
                self.bad_nonces += 1
        return self._post_once(*args, **kwargs)


@dataclass
class BareClient:
    """One registered account and the HTTP-01 resources its listener serves."""

    acme: client.ClientV2
    net: RetryingNetwork
    key: JWK
    resources: set[standalone.HTTP01RequestHandler.HTTP01Resource] = field(default_factory=set)

    def post_as_get(self, url: str) -> requests.Response:
        return self.net.post(url, None, new_nonce_url=self.acme.directory["newNonce"])


def bare_register(directory_url: str, ca_bundle: Path) -> BareClient:
    """Fetch the directory and register a fresh ES256 account (not timed)."""
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = RetryingNetwork(
        key=key,
        alg=ES256,
        # acme types this as bool; requests takes a CA bundle path here too. Explicit, because
        # the environment points REQUESTS_CA_BUNDLE at the system store, not Pebble's CA.
        verify_ssl=str(ca_bundle),  # type: ignore[arg-type]
        user_agent=USER_AGENT,
        timeout=REQUEST_TIMEOUT,
    )
    directory = client.ClientV2.get_directory(directory_url, net)
    acme = client.ClientV2(directory, net)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return BareClient(acme=acme, net=net, key=key)


@contextlib.contextmanager
def bare_listener(bare: BareClient, port: int) -> Iterator[None]:
    """acme's standalone HTTP-01 server on 127.0.0.1:``port``, serving ``bare.resources``."""
    server = standalone.HTTP01Server((LOOPBACK, port), bare.resources)
    thread = threading.Thread(target=server.serve_forever, name="bare-http01", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def new_csr(domain: str) -> bytes:
    """A fresh ECDSA P-256 key and a CSR for ``domain`` and its ``-b`` sibling (two names, like
    rotatord's services; the key is dropped: nothing is stored)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return crypto_util.make_csr(key_pem, two_names(domain))


def two_names(first: str) -> list[str]:
    label, _, rest = first.partition(".")
    return [first, f"{label}-b.{rest}"]


def _sleep(attempt: int, deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise BenchError("order did not complete before the deadline")
    time.sleep(FLOOR_POLL)


def _http01(
    bare: BareClient, authzr: messages.AuthorizationResource
) -> tuple[messages.ChallengeBody, challenges.ChallengeResponse]:
    """Pick the http-01 challenge, serve its key authorization, return it with its response."""
    for challb in authzr.body.challenges:
        chall = challb.chall
        if isinstance(chall, challenges.HTTP01):
            response, validation = chall.response_and_validation(bare.key)
            bare.resources.add(
                standalone.HTTP01RequestHandler.HTTP01Resource(
                    chall=chall, response=response, validation=validation
                )
            )
            return challb, response
    raise BenchError(f"no http-01 challenge for {authzr.body.identifier.value}")


def bare_order(bare: BareClient, domain: str) -> str:
    """One order with acme's own calls, polled every :data:`FLOOR_POLL`; returns the fullchain."""
    deadline = time.monotonic() + ORDER_DEADLINE
    orderr = bare.acme.new_order(new_csr(domain))
    pending: list[messages.AuthorizationResource] = []
    try:
        for authzr in orderr.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue  # reused authorization (never with Pebble's authz reuse at 0)
            challb, response = _http01(bare, authzr)
            bare.acme.answer_challenge(challb, response)
            pending.append(authzr)
        attempt = 0
        while pending:
            _sleep(attempt, deadline)
            attempt += 1
            still = []
            for authzr in pending:
                authzr, _ = bare.acme.poll(authzr)
                if authzr.body.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                    still.append(authzr)
                elif authzr.body.status != messages.STATUS_VALID:
                    raise BenchError(f"{domain}: authorization is {authzr.body.status}")
            pending = still
    finally:
        bare.resources.clear()  # sequential: only this order's resources are in the set

    order = bare.acme.begin_finalization(orderr).body
    attempt = 0
    while not (order.status == messages.STATUS_VALID and order.certificate):
        if order.status == messages.STATUS_INVALID:
            raise BenchError(f"{domain}: order invalid: {order.error}")
        _sleep(attempt, deadline)
        attempt += 1
        order = messages.Order.from_json(bare.post_as_get(orderr.uri).json())
    return bare.post_as_get(order.certificate).text


def stock_order(bare: BareClient, domain: str) -> str:
    """One order exactly as acme's example does it: ``poll_and_finalize`` (1 s fixed sleeps)."""
    orderr = bare.acme.new_order(new_csr(domain))
    try:
        for authzr in orderr.authorizations:
            challb, response = _http01(bare, authzr)
            bare.acme.answer_challenge(challb, response)
        finished = bare.acme.poll_and_finalize(orderr)
    finally:
        bare.resources.clear()
    return finished.fullchain_pem


# --------------------------------------------------------------------------- rotatord


def rotatord_config(
    workdir: Path, directory_url: str, ca_bundle: Path, http_port: int, services: Sequence[str]
) -> dict[str, Any]:
    """The TOML-shaped config: one Pebble account; per service two names, three outputs (one
    of them a directory output) and one reload action."""
    from pebble.runner import roots_url_for  # after REPO_ROOT is on sys.path

    out = workdir / "out"
    return {
        "daemon": {
            "state_dir": str(workdir / "state"),
            "audit_log": str(workdir / "audit.jsonl"),
            "control_socket": str(workdir / "control.sock"),
        },
        "acme": {
            "pebble": {
                "directory": directory_url,
                "ca_bundle": str(ca_bundle),
                "trust_roots_url": roots_url_for(ca_bundle),
                # A private test CA: the default budget (300 orders / 3 h) would defer the batch.
                "budget": {"orders": 1_000_000, "certificates": 1_000_000},
            }
        },
        "services": {
            name: {
                "domains": two_names(f"{name}.{DOMAIN_SUFFIX}"),
                "account": "pebble",
                "key_type": "ecdsa-p256",
                "challenge": {"type": "http-01", "listen": f"{LOOPBACK}:{http_port}"},
                "outputs": [
                    {"path": str(out / name / "fullchain.pem"), "format": "fullchain"},
                    {"path": str(out / name / "combined.pem"), "format": "combined"},
                    {"path": str(out / name / "tls"), "format": "directory"},
                ],
                "reload": [{"command": ["/bin/true"], "timeout": 10}],
            }
            for name in services
        },
    }


def rotate(rotator: Rotator, name: str) -> None:
    """Force one rotation; raise :class:`BenchError` unless it rotated."""
    result = rotator.rotate(name, force=True)
    if result.outcome != "rotated" or not result.new_serial:
        raise BenchError(f"rotatord: {name}: {result.outcome}: {result.error}")


# --------------------------------------------------------------------------- measurement


@dataclass
class Side:
    """One side's timings: the wall time of its timed blocks and each order's own time."""

    name: str
    wall: float = 0.0
    times: list[float] = field(default_factory=list)

    @property
    def per_cert(self) -> float:
        return self.wall / len(self.times)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.times)
        return {
            "orders": len(ordered),
            "total_s": round(self.wall, 4),
            "s_per_cert": round(self.per_cert, 5),
            "median_s": round(statistics.median(ordered), 5),
            "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 5),
            "max_s": round(ordered[-1], 5),
        }


def timed_block(side: Side, names: Sequence[str], one: Callable[[str], object]) -> None:
    """Run ``one(name)`` for each name in sequence, adding the block's wall time to ``side``.

    The wall time (one clock read around the whole loop) is what s/cert and the ratio use; the
    per-order times only feed the median, p90 and max.
    """
    block_start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        one(name)
        side.times.append(time.perf_counter() - t0)
    side.wall += time.perf_counter() - block_start


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Rotate N services through rotatord and do the same N orders with a bare acme loop "
            "against a private Pebble; print seconds per certificate and their ratio."
        )
    )

    def positive(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return value

    def non_negative(text: str) -> int:
        value = int(text)
        if value < 0:
            raise argparse.ArgumentTypeError("must be 0 or more")
        return value

    parser.add_argument(
        "--services",
        type=positive,
        default=50,
        metavar="N",
        help="services to rotate, and bare orders to place (default 50)",
    )
    parser.add_argument(
        "--stock-orders",
        type=non_negative,
        default=3,
        metavar="K",
        help="orders through acme's stock poll_and_finalize, informational (default 3; 0: skip)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent of the fresh state dir (default: a new directory under /tmp); the fsync "
        "cost depends on its filesystem",
    )
    parser.add_argument(
        "--block",
        type=positive,
        default=5,
        metavar="K",
        help="orders per block; the sides alternate every block (default 5)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="profile rotatord's timed blocks with cProfile, write the stats to FILE and print "
        "the top costs to stderr (rotatord's figures then include the profiler's overhead)",
    )
    parser.add_argument(
        "--batch",
        type=non_negative,
        default=200,
        metavar="M",
        help="services rotated as one batch, sequentially then concurrently (default 200; 0: skip)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


class FsyncCount:
    """Counts ``os.fsync`` calls while ``on``, by the rotatord module and function that asked
    (``fsutil`` helpers are charged to their caller): where a rotation's fsyncs come from."""

    def __init__(self) -> None:
        self.on = False
        self.by_site: dict[str, int] = {}
        self._real = os.fsync
        self._lock = threading.Lock()

    def __enter__(self) -> FsyncCount:
        os.fsync = self._fsync  # type: ignore[assignment]  # counts only int descriptors
        return self

    def __exit__(self, *_exc: object) -> None:
        os.fsync = self._real

    def _fsync(self, fd: int) -> None:
        self._real(fd)
        if not self.on:
            return
        frame = sys._getframe(1)
        while frame.f_back is not None and frame.f_code.co_filename.endswith("fsutil.py"):
            frame = frame.f_back
        site = f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}"
        with self._lock:
            self.by_site[site] = self.by_site.get(site, 0) + 1

    def per(self, n: int) -> dict[str, float]:
        ranked = sorted(self.by_site.items(), key=lambda kv: -kv[1])
        return {"total": round(sum(self.by_site.values()) / n, 2)} | {
            k: round(v / n, 2) for k, v in ranked
        }


def listen_overflows() -> int | None:
    """``TcpExtListenOverflows`` of this network namespace (absolute), or None without nstat."""
    try:
        out = subprocess.run(
            ["nstat", "-az", "TcpExtListenOverflows"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == "TcpExtListenOverflows":
            return int(fields[1])
    return None


def timed_batch(rotator: Rotator, names: Sequence[str], workers: int | None) -> float:
    """Wall seconds of one forced ``rotate_batch``; raise unless every service rotated."""
    t0 = time.perf_counter()
    results = rotator.rotate_batch(names, force=True, max_workers=workers)
    took = time.perf_counter() - t0
    bad = [r for r in results if r.outcome != "rotated"]
    if bad:
        raise BenchError(f"rotatord batch: {len(bad)} not rotated, first: {bad[0]}")
    return took


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pebble.runner import PebbleServer  # after REPO_ROOT is on sys.path

    n, k, m = args.services, args.block, args.batch
    services = [f"svc-{i:03d}" for i in range(n)]
    batch = [f"bat-{i:03d}" for i in range(m)]
    bare_domains = [f"bare-{i:03d}.{DOMAIN_SUFFIX}" for i in range(n)]
    profiler = cProfile.Profile() if args.profile else None

    with contextlib.ExitStack() as stack:
        devnull = stack.enter_context(open(os.devnull, "w"))
        configure_logging(fmt="json", stream=devnull)
        workdir = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="rot-bench-", dir=args.workdir or "/tmp")
            )
        )
        pebble = stack.enter_context(PebbleServer())
        port = pebble.http_port

        config = parse_config(
            rotatord_config(
                workdir, pebble.directory_url, pebble.ca_bundle, port, ["warmup", *services, *batch]
            ),
            workdir / "rotatord.toml",
        )
        rotator = build_rotator(config)
        open_audit(config, SystemClock(), echo=False).start_sealing(new_initial_key())
        bare = bare_register(pebble.directory_url, pebble.ca_bundle)

        # Warm-up, not timed: rotatord registers its account and caches the directory; each side
        # imports, connects and fills its caches once.
        rotate(rotator, "warmup")
        rotator.close()  # frees the HTTP-01 port for the bare side's own listener
        with bare_listener(bare, port):
            bare_order(bare, f"bare-warmup.{DOMAIN_SUFFIX}")

        def bare_block(part: slice) -> None:
            # The listener is started and stopped outside the timed loop (see the module doc).
            with bare_listener(bare, port):
                timed_block(bare_side, bare_domains[part], lambda d: bare_order(bare, d))

        fsyncs = stack.enter_context(FsyncCount())

        def rotatord_block(part: slice) -> None:
            fsyncs.on = True
            with profiler or contextlib.nullcontext():
                timed_block(rot, services[part], lambda s: rotate(rotator, s))
            fsyncs.on = False
            # Outside the timing, like the bare side's listener stop: rotatord's listener lingers
            # between rotations of a batch and must free the port before the bare block.
            rotator.close()

        rot, bare_side = Side("rotatord"), Side("bare")
        nonces_before = bare.net.bad_nonces
        for number, start in enumerate(range(0, n, k)):
            part = slice(start, min(start + k, n))
            pair = (bare_block, rotatord_block)
            for block in pair if number % 2 == 0 else reversed(pair):
                block(part)
        bad_nonces = bare.net.bad_nonces - nonces_before

        concurrency: dict[str, Any] | None = None
        if m:
            overflows_before = listen_overflows()
            sequential = timed_batch(rotator, batch, 1)
            concurrent = timed_batch(rotator, batch, None)
            rotator.close()
            overflows_after = listen_overflows()
            concurrency = {
                "certificates": m,
                "workers": config.daemon.max_concurrent,
                "sequential_s": round(sequential, 3),
                "concurrent_s": round(concurrent, 3),
                "sequential_s_per_cert": round(sequential / m, 5),
                "concurrent_s_per_cert": round(concurrent / m, 5),
                "speedup": round(sequential / concurrent, 3),
                "target_speedup": TARGET_SPEEDUP,
                "target_met": sequential / concurrent >= TARGET_SPEEDUP,
                "listen_overflows": (
                    None
                    if overflows_before is None or overflows_after is None
                    else overflows_after - overflows_before
                ),
            }

        stock: dict[str, Any] | None = None
        if args.stock_orders:
            stock_side = Side("stock")
            names = [f"stock-{i:03d}.{DOMAIN_SUFFIX}" for i in range(args.stock_orders)]
            with bare_listener(bare, port):
                timed_block(stock_side, names, lambda d: stock_order(bare, d))
            stock = stock_side.summary()
        audit_ok = verify_chain(config.daemon.audit_log).ok

    if profiler is not None:
        profiler.dump_stats(args.profile)
        top = io.StringIO()
        pstats.Stats(profiler, stream=top).sort_stats("cumulative").print_stats(40)
        print(top.getvalue(), file=sys.stderr)

    ratio = rot.per_cert / bare_side.per_cert
    return {
        "services": n,
        "fixture": "2 names, outputs fullchain + combined + directory, 1 reload (/bin/true)",
        "pebble": {"nonce_reject_percent": 5, "authz_reuse_percent": 0, "host": LOOPBACK},
        "block": k,
        "profiled": profiler is not None,
        "floor_poll_s": FLOOR_POLL,
        "rotatord": rot.summary(),
        "rotatord_fsyncs_per_rotation": fsyncs.per(n),
        "floor": {**bare_side.summary(), "bad_nonce_retries": bad_nonces},
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
        "batch": concurrency,
        "audit_chain_ok": audit_ok,
        "stock_poll_and_finalize": stock,
        "command": f"python bench/rotate_many.py --services {n} --block {k} --batch {m}",
    }


def render(result: dict[str, Any]) -> str:
    rot, bare = result["rotatord"], result["floor"]
    lines = [
        f"rotate_many: {result['services']} services ({result['fixture']}), sequential, local "
        f"Pebble (5 % nonce rejection, no authz reuse), sides alternating every "
        f"{result['block']} orders",
        f"{'':26}{'total s':>9}{'s/cert':>10}{'median':>10}{'p90':>10}",
        f"{'rotatord':26}{rot['total_s']:>9.3f}{rot['s_per_cert']:>10.4f}"
        f"{rot['median_s']:>10.4f}{rot['p90_s']:>10.4f}",
        f"{'floor (acme, 5 ms polls)':26}{bare['total_s']:>9.3f}{bare['s_per_cert']:>10.4f}"
        f"{bare['median_s']:>10.4f}{bare['p90_s']:>10.4f}",
        f"{'ratio':26}{'':>9}{result['ratio']:>9.2f}x",
        f"target <= {result['target_ratio']}x: {'PASS' if result['target_met'] else 'FAIL'}",
        "rotatord fsyncs per rotation: "
        + ", ".join(f"{k} {v:g}" for k, v in result["rotatord_fsyncs_per_rotation"].items()),
    ]
    b = result["batch"]
    if b is not None:
        overflows = "nstat unavailable" if b["listen_overflows"] is None else b["listen_overflows"]
        lines += [
            f"batch of {b['certificates']} (same fixture): sequential {b['sequential_s']:.2f} s "
            f"({b['sequential_s_per_cert']:.4f} s/cert), {b['workers']} workers "
            f"{b['concurrent_s']:.2f} s ({b['concurrent_s_per_cert']:.4f} s/cert)",
            f"speed-up {b['speedup']:.2f}x (target >= {b['target_speedup']}x: "
            f"{'PASS' if b['target_met'] else 'FAIL'}); TcpExtListenOverflows during the "
            f"batches: {overflows} (target 0)",
        ]
    lines.append(f"audit chain intact: {result['audit_chain_ok']}")
    if result["profiled"]:
        lines.append("(profiled run: rotatord's figures include cProfile's overhead)")
    stock = result["stock_poll_and_finalize"]
    if stock is not None:
        lines.append(
            f"(informational) acme stock poll_and_finalize, {stock['orders']} orders: "
            f"{stock['s_per_cert']:.3f} s/cert — fixed 1 s sleeps, not part of the ratio"
        )
    lines.append(f"reproduce: {result['command']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except BenchError as exc:
        print(f"rotate_many: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
