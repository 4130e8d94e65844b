"""A real BIND 9 (Debian ``named``) for DNS-01 tests, on a free 127.0.0.1 port.

:class:`Bind` writes a temp ``named.conf``, a TSIG key made by ``tsig-keygen`` and one zone
file per zone, starts ``named -g`` in the foreground as a child of the test and waits until it
answers the SOA of every zone. Each zone has ``ns1.example.test`` (127.0.0.1) as its only name
server and lets the TSIG key update TXT records anywhere in it (``update-policy { grant KEY
zonesub TXT; }``). :meth:`txt` asks BIND directly, so a test sees what the CA would see.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.unavailable import unavailable

KEY_NAME = "rotatord-test"
READY_TIMEOUT = 15.0


def _which(name: str) -> str | None:
    """On PATH, or in /usr/sbin (not on an ordinary user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


def bind_available() -> bool:
    return _which("named") is not None and _which("tsig-keygen") is not None


def _binary(name: str) -> str:
    found = _which(name)
    if found is None:
        unavailable(f"{name!r} is not installed ('apt-get install -y bind9 bind9-dnsutils')")
    return found


def _free_tcp_udp_port() -> int:
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port free for both TCP and UDP")


class Bind:
    """BIND 9 authoritative for ``zones`` (name -> extra zone-file lines), with TSIG updates.

    A zone's NS is ``ns1.example.test`` unless its lines give ``@ IN NS ...`` themselves."""

    def __init__(self, zones: Mapping[str, str]) -> None:
        self.zones = dict(zones)
        self.workdir = Path(tempfile.mkdtemp(prefix="bind-", dir="/tmp"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def key_file(self) -> Path:
        return self.workdir / "tsig.key"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _named(self) -> str:
        """``named``, or a copy of it in the workdir when AppArmor is on: Debian's
        ``usr.sbin.named`` profile confines the installed path to /etc/bind and /var/*/bind and
        would deny this server its temp config; the profile attaches by path, a copy runs
        unconfined."""
        named = _binary("named")
        flag = Path("/sys/module/apparmor/parameters/enabled")
        if flag.exists() and flag.read_text().strip() == "Y":
            copy = self.workdir / "named"
            shutil.copy2(named, copy)
            return str(copy)
        return named

    def start(self) -> None:
        named = self._named()
        keygen = _binary("tsig-keygen")
        key = subprocess.run(
            [keygen, "-a", "hmac-sha256", KEY_NAME], capture_output=True, check=True, timeout=10
        ).stdout
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        for zone, extra in self.zones.items():
            (self.workdir / f"{zone}.db").write_text(
                f"$TTL 60\n@ IN SOA ns1.example.test. hostmaster.{zone}. 1 60 60 600 60\n"
                + ("" if "@ IN NS " in extra else "@ IN NS ns1.example.test.\n")
                + f"{extra}\n"
            )
        (self.workdir / "root.db").write_text(
            "$TTL 60\n@ IN SOA ns1.example.test. hostmaster.example.test. 1 60 60 600 60\n"
            "@ IN NS ns1.example.test.\nns1.example.test. IN A 127.0.0.1\n"
        )
        for _attempt in range(3):
            self.port = _free_tcp_udp_port()
            self._write_conf()
            log = (self.workdir / "named.log").open("ab")
            with log:
                self._proc = subprocess.Popen(
                    [named, "-g", "-c", str(self.workdir / "named.conf"), "-n", "1"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                    cwd=self.workdir,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            self._terminate()
        tail = (self.workdir / "named.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"named did not start:\n{tail}")

    def _write_conf(self) -> None:
        w = self.workdir
        # "." is a local zone too: recursion (which the CA's resolver needs to follow a CNAME
        # into another zone) then never leaves this server, and unknown names get NXDOMAIN.
        zones = f'zone "." {{ type primary; file "{w}/root.db"; }};\n' + "".join(
            f'zone "{z}" {{ type primary; file "{w}/{z}.db"; '
            f"update-policy {{ grant {KEY_NAME} zonesub TXT; }}; }};\n"
            for z in self.zones
        )
        (w / "named.conf").write_text(
            f'include "{self.key_file}";\n'
            "options {\n"
            f'  directory "{w}";\n'
            f'  pid-file "{w}/named.pid";\n'
            f'  session-keyfile "{w}/session.key";\n'
            f'  managed-keys-directory "{w}";\n'
            f"  listen-on port {self.port} {{ 127.0.0.1; }};\n"
            "  listen-on-v6 { none; };\n"
            "  recursion yes;\n"
            "  allow-recursion { 127.0.0.1; };\n"
            "  dnssec-validation no;\n"
            "  notify no;\n"
            "  allow-transfer { none; };\n"
            "};\n"
            "controls { };\n" + zones
        )

    def _wait_ready(self) -> bool:
        end = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < end:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if all(self._answers_soa(z) for z in self.zones):
                return True
            time.sleep(0.05)  # bounded readiness polling
        return False

    def _answers_soa(self, zone: str) -> bool:
        try:
            response = dns.query.udp(
                dns.message.make_query(zone + ".", dns.rdatatype.SOA),
                "127.0.0.1",
                port=self.port,
                timeout=0.5,
            )
        except (OSError, dns.exception.DNSException):
            return False
        return any(r.rdtype == dns.rdatatype.SOA for r in response.answer)

    def txt(self, name: str) -> set[str]:
        """The TXT strings BIND holds at ``name`` now."""
        response = dns.query.tcp(
            dns.message.make_query(name.rstrip(".") + ".", dns.rdatatype.TXT),
            "127.0.0.1",
            port=self.port,
            timeout=5,
        )
        return {
            b"".join(rdata.strings).decode()
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset
        }

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(5)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
