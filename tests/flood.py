"""A separate attacker process for the listener tests: opens many idle connections and holds them.

``python -m tests.flood [--tcp HOST:PORT N] [--unix PATH N] [--expect-reply]`` connects N times to
each target, prints ``ready <replies>`` on stdout when every connect returned (with
``--expect-reply``: when each connection got a reply line without sending a byte, which only a
server that answers at accept can give), then holds every socket open until stdin closes. It
raises its own RLIMIT_NOFILE soft limit to what it needs (up to the hard limit): the test process
itself stays within the default 1,024 because it only holds the server side.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tcp", nargs=2, metavar=("HOST:PORT", "N"))
    parser.add_argument("--unix", nargs=2, metavar=("PATH", "N"))
    parser.add_argument("--expect-reply", action="store_true")
    args = parser.parse_args()
    targets: list[tuple[int, object, int]] = []
    if args.tcp:
        host, port = args.tcp[0].rsplit(":", 1)
        targets.append((socket.AF_INET, (host, int(port)), int(args.tcp[1])))
    if args.unix:
        targets.append((socket.AF_UNIX, args.unix[0], int(args.unix[1])))
    need = sum(n for *_, n in targets) + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    held: list[socket.socket] = []
    replies = 0
    for family, address, n in targets:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(60)
            sock.connect(address)  # type: ignore[arg-type]
            if args.expect_reply:
                with sock.makefile("rb") as f:
                    replies += bool(f.readline().endswith(b"\n"))
            held.append(sock)
    print(f"ready {replies}", flush=True)
    sys.stdin.read()  # hold everything until the test closes our stdin
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
