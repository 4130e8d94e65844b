"""Seconds per certificate: rotatord versus a bare ``acme`` loop, against a private Pebble.

One job: start a local Pebble (``pebble.runner.PebbleServer`` defaults: 5 % of nonces rejected,
no authorization reuse, everything on 127.0.0.1), then time, in the same run and the same Pebble,

* **rotatord**: ``Rotator.rotate(name, force=True)`` for N services, one after the other, on a
  fresh state dir. This is the whole story (key, CSR, order, HTTP-01 listener, verification,
  staging with fsyncs, activation, hash-chained audit records, status file);
* **bare acme**: the same N orders (one name, ECDSA P-256, HTTP-01) written directly with the
  ``acme`` library the way its ``http01_example.py`` reads, but polling on rotatord's schedule
  (10 ms, 20 ms, 50 ms ... 2 s) so that only the work around the protocol differs. acme's own
  ``poll_and_finalize`` sleeps a fixed second per poll; it is measured separately, on a few orders
  (``--stock-orders``), and printed as an informational line only.

Fairness rules, and why:

* account registration, the directory fetch and one warm-up order per side are not timed;
* both sides survive Pebble's badNonce rejections by retrying a bounded number of times (acme
  alone retries once, which a 50-order run at 5 % outruns);
* the N orders run in chunks of ``--block`` (default 5) orders; each chunk is done by both sides,
  in the order bare-rotatord, then rotatord-bare for the next chunk, and so on. A Pebble that
  slows down as it accumulates orders, or a neighbour that loads the CPU for a while, weighs on
  both sides alike;
* the bare loop keeps one HTTP-01 listener up for a whole block (a bare loop has no reason to do
  otherwise); rotatord does whatever it does per rotation, and that is part of what is measured;
* rotatord's structlog output is rendered as JSON (as the daemon would) but written to
  ``os.devnull``, so the terminal does not slow either side.

It prints a short table (``--json``: one JSON document) and exits 0 whatever the ratio: it is a
measurement. It exits 1 when an order or a rotation fails, 2 on a usage error.

Run from the repository root: ``python bench/rotate_many.py --services 50``.
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

from rotatord.config import parse_config
from rotatord.daemon import build_rotator
from rotatord.issuing import acme_issuer
from rotatord.observe.logging import configure_logging
from rotatord.rotation import Rotator

# ``pebble`` is a directory of this repository, not an installed package: make it importable
# whatever the working directory (``rotatord`` itself is installed, editable).
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LOOPBACK = "127.0.0.1"
#: rotatord's polling schedule (``rotatord.issuing.acme_issuer.POLL_SCHEDULE``), repeated here
#: so the bare loop polls exactly as often; ``run`` checks the two are still equal.
POLL_SCHEDULE: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
#: badNonce retries per request (rotatord's ``MAX_BAD_NONCE_RETRIES``).
MAX_BAD_NONCE_RETRIES = 10
#: Give up on one order after this long (rotatord's default ``order_deadline``).
ORDER_DEADLINE = 120.0
#: HTTP timeout of one request to Pebble.
REQUEST_TIMEOUT = 30
TARGET_RATIO = 1.5
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
    """A fresh ECDSA P-256 key and a CSR for ``domain`` (the key is dropped: nothing is stored)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return crypto_util.make_csr(key_pem, [domain])


def _sleep(attempt: int, deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise BenchError("order did not complete before the deadline")
    time.sleep(POLL_SCHEDULE[min(attempt, len(POLL_SCHEDULE) - 1)])


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
    """One order with acme's own calls, polled on :data:`POLL_SCHEDULE`; returns the fullchain."""
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
    """The TOML-shaped config: one Pebble account, one single-name service per entry."""
    from pebble.runner import roots_url_for  # after REPO_ROOT is on sys.path

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
            }
        },
        "services": {
            name: {
                "domains": [f"{name}.{DOMAIN_SUFFIX}"],
                "account": "pebble",
                "key_type": "ecdsa-p256",
                "challenge": {"type": "http-01", "listen": f"{LOOPBACK}:{http_port}"},
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
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pebble.runner import PebbleServer  # after REPO_ROOT is on sys.path

    if tuple(acme_issuer.POLL_SCHEDULE) != POLL_SCHEDULE:
        raise BenchError(
            f"rotatord polls on {acme_issuer.POLL_SCHEDULE}, the bare loop on {POLL_SCHEDULE}: "
            "update POLL_SCHEDULE in this script so the comparison stays fair"
        )

    n, k = args.services, args.block
    services = [f"svc-{i:03d}" for i in range(n)]
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
                workdir, pebble.directory_url, pebble.ca_bundle, port, ["warmup", *services]
            ),
            workdir / "rotatord.toml",
        )
        rotator = build_rotator(config)
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

        def rotatord_block(part: slice) -> None:
            with profiler or contextlib.nullcontext():
                timed_block(rot, services[part], lambda s: rotate(rotator, s))
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
        stock: dict[str, Any] | None = None
        if args.stock_orders:
            stock_side = Side("stock")
            names = [f"stock-{i:03d}.{DOMAIN_SUFFIX}" for i in range(args.stock_orders)]
            with bare_listener(bare, port):
                timed_block(stock_side, names, lambda d: stock_order(bare, d))
            stock = stock_side.summary()

    if profiler is not None:
        profiler.dump_stats(args.profile)
        top = io.StringIO()
        pstats.Stats(profiler, stream=top).sort_stats("cumulative").print_stats(40)
        print(top.getvalue(), file=sys.stderr)

    ratio = rot.per_cert / bare_side.per_cert
    return {
        "services": n,
        "pebble": {"nonce_reject_percent": 5, "authz_reuse_percent": 0, "host": LOOPBACK},
        "block": k,
        "profiled": profiler is not None,
        "poll_schedule_s": list(POLL_SCHEDULE),
        "rotatord": rot.summary(),
        "bare_acme": {**bare_side.summary(), "bad_nonce_retries": bad_nonces},
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
        "stock_poll_and_finalize": stock,
    }


def render(result: dict[str, Any]) -> str:
    rot, bare = result["rotatord"], result["bare_acme"]
    lines = [
        f"rotate_many: {result['services']} services, sequential, local Pebble "
        f"(5 % nonce rejection, no authz reuse), sides alternating every {result['block']} orders",
        f"{'':22}{'total s':>9}{'s/cert':>10}{'median':>10}{'p90':>10}",
        f"{'rotatord':22}{rot['total_s']:>9.3f}{rot['s_per_cert']:>10.4f}"
        f"{rot['median_s']:>10.4f}{rot['p90_s']:>10.4f}",
        f"{'bare acme (tight poll)':22}{bare['total_s']:>9.3f}{bare['s_per_cert']:>10.4f}"
        f"{bare['median_s']:>10.4f}{bare['p90_s']:>10.4f}",
        f"{'ratio':22}{'':>9}{result['ratio']:>9.2f}×",
        f"target ≤ {result['target_ratio']}×: {'PASS' if result['target_met'] else 'FAIL'}",
    ]
    if result["profiled"]:
        lines.append("(profiled run: rotatord's figures include cProfile's overhead)")
    stock = result["stock_poll_and_finalize"]
    if stock is not None:
        lines.append(
            f"(informational) acme stock poll_and_finalize, {stock['orders']} orders: "
            f"{stock['s_per_cert']:.3f} s/cert — fixed 1 s sleeps, not part of the ratio"
        )
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
