"""Real TLS servers for tests: nginx and haproxy from Debian, on free loopback ports.

Each server runs in the foreground as a child of the test, with every path under a temp prefix;
``served_serial`` does a real TLS handshake to see what is served.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

from cryptography import x509

from tests.unavailable import unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served_der(port: int, sni: str, timeout: float = 2.0) -> bytes | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except OSError:
        return None


def served_serial(port: int, sni: str) -> int | None:
    der = served_der(port, sni)
    return None if der is None else x509.load_der_x509_certificate(der).serial_number


def wait_for_serial(port: int, sni: str, want: int, deadline_s: float = 15.0) -> int | None:
    """Poll handshakes until ``want`` is served or the deadline passes (reloads are lazy)."""
    end = time.monotonic() + deadline_s
    got = served_serial(port, sni)
    while got != want and time.monotonic() < end:
        time.sleep(0.05)
        got = served_serial(port, sni)
    return got


def require_binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(path).exists():
        unavailable(f"{name} is not installed")
    return path


class Server:
    proc: subprocess.Popen[bytes] | None = None
    port: int
    prefix: Path

    def wait_listening(self, sni: str) -> None:
        assert self.proc is not None
        end = time.monotonic() + 10
        while served_serial(self.port, sni) is None:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{type(self).__name__} did not start: {self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Nginx(Server):
    """nginx with one TLS server block per (sni, cert_dir)."""

    def __init__(self, binary: str, prefix: Path, sites: dict[str, Path]) -> None:
        self.binary, self.prefix, self.port = binary, prefix, free_port()
        self.conf = prefix / "nginx.conf"
        for d in ("logs", "tmp"):
            (prefix / d).mkdir(parents=True, exist_ok=True)
        servers = "\n".join(
            f"""
    server {{
        listen 127.0.0.1:{self.port} ssl;
        server_name {sni};
        ssl_certificate {cert_dir}/fullchain.pem;
        ssl_certificate_key {cert_dir}/privkey.pem;
        return 200 "ok\\n";
    }}"""
            for sni, cert_dir in sites.items()
        )
        self.conf.write_text(
            f"""
daemon off;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
{servers}
}}
"""
        )
        self.first_sni = next(iter(sites))

    def argv(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), *extra]

    def start(self) -> None:
        with open(self.prefix / "logs" / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=err)
        self.wait_listening(self.first_sni)

    def log(self) -> str:
        try:
            return (self.prefix / "logs" / "error.log").read_text()[-3000:]
        except FileNotFoundError:
            return ""


class Haproxy(Server):
    """haproxy in master-worker mode; SIGUSR2 to the master (pid file) reloads it."""

    def __init__(self, binary: str, prefix: Path, crt: Path) -> None:
        self.binary, self.prefix, self.port = binary, prefix, free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        self.pid_file = prefix / "haproxy.pid"
        self.conf = prefix / "haproxy.cfg"
        self.conf.write_text(
            f"""
global
    log stdout format raw local0 err
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend tls
    bind 127.0.0.1:{self.port} ssl crt {crt}
    http-request return status 200 content-type text/plain string ok
"""
        )

    def start(self) -> None:
        with open(self.prefix / "haproxy.log", "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-W", "-db", "-f", str(self.conf), "-p", str(self.pid_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_listening("web.example.test")

    def log(self) -> str:
        try:
            return (self.prefix / "haproxy.log").read_text()[-3000:]
        except FileNotFoundError:
            return ""
