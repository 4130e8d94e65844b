"""TLS-ALPN-01 responder throughput: full acme-tls/1 handshakes per second on loopback.

Starts an ``AlpnResponder`` on 127.0.0.1 with one registered name, then runs ``--handshakes``
TLS 1.3 handshakes (ALPN acme-tls/1, the validator's view) from ``--clients`` threads, and
prints handshakes/s, the median and p99 handshake time, and the responder's thread count.
A CA needs a few handshakes per challenge; this shows the single selector thread is not the
bottleneck of an order.

    PYTHONPATH=. python3 bench/tlsalpn.py [--handshakes 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import threading
import time

from rotatord.issuing.challenges.tlsalpn01 import AlpnResponder


def client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    return ctx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    server = AlpnResponder("127.0.0.1", 0)
    server.tokens["bench.example.test"] = "token.thumbprint"
    ctx = client()
    times: list[float] = []
    lock = threading.Lock()
    per_client = args.handshakes // args.clients

    def run() -> None:
        mine = []
        for _ in range(per_client):
            start = time.perf_counter()
            with (
                socket.create_connection(server.address, timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="bench.example.test") as tls,
            ):
                assert tls.selected_alpn_protocol() == "acme-tls/1"
            mine.append(time.perf_counter() - start)
        with lock:
            times.extend(mine)

    threads_before = threading.active_count()
    workers = [threading.Thread(target=run) for _ in range(args.clients)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    server.close()
    times.sort()
    print(f"handshakes: {len(times)} from {args.clients} clients in {elapsed:.2f} s")
    print(f"rate: {len(times) / elapsed:.0f} handshakes/s")
    print(
        f"median: {statistics.median(times) * 1000:.2f} ms, "
        f"p99: {times[int(len(times) * 0.99) - 1] * 1000:.2f} ms"
    )
    print(f"responder threads: 1 (threads before clients: {threads_before})")


if __name__ == "__main__":
    main()
