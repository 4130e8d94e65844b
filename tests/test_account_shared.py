"""One ACME account for concurrent workers: with a fresh state dir, N first orders started at
once through one issuer register exactly one account at real Pebble, and every order uses it.

Marked ``pebble``: fails (never skips) when CI=true and Pebble is missing.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pebble import PebbleServer
from rotatord.core import keys
from rotatord.core.model import Http01Standalone, KeyType
from rotatord.issuing.challenges.http01 import StandalonePool
from tests.test_listeners_pebble import issuer_for

pytestmark = pytest.mark.pebble

WORKERS = 6


def test_concurrent_first_orders_register_one_account(
    pebble_server: PebbleServer, short_tmp: Path
) -> None:
    """Six first orders released together on a fresh account dir: one newAccount reaches
    Pebble (its log counts accounts in memory), one registration is logged, regr.json names
    that account, and all six certificates are issued."""
    port = pebble_server.http_port
    pool = StandalonePool(linger=0)
    issuer = issuer_for(pebble_server, short_tmp, pool)
    log_path = pebble_server.workdir / "pebble.log"
    before = log_path.read_text(errors="replace")
    start = threading.Barrier(WORKERS)
    issued: list[bytes] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        name = f"shared-{i}.example.test"
        csr = keys.make_csr(keys.generate_key(KeyType.ECDSA_P256), [name])
        start.wait()
        try:
            cert = issuer.issue(csr, [name], Http01Standalone("127.0.0.1", port))
            issued.append(cert.cert_pem)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with capture_logs() as logs:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    pool.close()
    issuer.close()
    assert not errors, errors
    assert len(issued) == WORKERS
    registered = [e for e in logs if e["event"] == "acme_account_registered"]
    assert len(registered) == 1, registered
    regr = json.loads((short_tmp / "account" / "regr.json").read_text())
    assert regr["uri"] == registered[0]["uri"]
    new = log_path.read_text(errors="replace")[len(before) :]
    counts = re.findall(r"There are now (\d+) accounts in memory", new)
    assert len(counts) == 1, new[-2000:]
