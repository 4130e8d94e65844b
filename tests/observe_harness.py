"""Test parts for the observation outputs: a webhook/heartbeat receiver and a real Prometheus.

The receiver is an HTTP server on 127.0.0.1 (free port) recording every request; waiting on it
is a condition variable with a deadline (no sleep). Prometheus runs from Debian's package with
a temp config scraping given targets every second; start-up waits on its readiness endpoint.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.unavailable import unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when received

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Records requests; answers ``status`` (set it to 503 to play a webhook that is down)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.requests: list[Received] = []
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/secret-token"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._cond:
                    status = receiver.status
                    if status < 300:
                        receiver.requests.append(
                            Received(
                                self.command,
                                self.path,
                                dict(self.headers.items()),
                                body,
                                time.monotonic(),
                            )
                        )
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait(
        self, predicate: Callable[[list[Received]], bool], timeout: float, what: str
    ) -> list[Received]:
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.requests):
                left = end - time.monotonic()
                if left <= 0:
                    kinds = [alert_kind(r) for r in self.requests]
                    raise AssertionError(f"timed out waiting for {what}; received {kinds}")
                self._cond.wait(left)
            return list(self.requests)

    def alerts(self) -> list[dict[str, Any]]:
        with self._cond:
            return [r.json() for r in self.requests if r.method == "POST"]


def alert_kind(r: Received) -> str:
    if r.method != "POST":
        return r.method
    doc = r.json()
    return f"{doc.get('kind')}:{doc.get('service')}:{doc.get('step')}"


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (Debian package prometheus)")
    return path


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str], rules: Path | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "rotatord", "static_configs": [{"targets": targets}]}],
        }
        if rules is not None:
            cfg["rule_files"] = [str(rules)]
        self.config = workdir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the config.
        self.config.write_text(json.dumps(cfg))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Prometheus:
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)  # polling the readiness endpoint, bounded by the deadline
        tail = (self.workdir / "prometheus.log").read_text()[-3000:]
        raise AssertionError(f"prometheus did not become ready:\n{tail}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # a wait for a condition, bounded by the deadline


class TlsEndpoint:
    """A TLS server on 127.0.0.1 serving one certificate (a real handshake per connection)."""

    def __init__(self, workdir: Path, cert_pem: bytes, key_pem: bytes) -> None:
        import ssl

        (workdir / "ep-cert.pem").write_bytes(cert_pem)
        (workdir / "ep-key.pem").write_bytes(key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(workdir / "ep-cert.pem", workdir / "ep-key.pem")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.handshakes = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True):
                    self.handshakes += 1
            except OSError:
                conn.close()

    def stop(self) -> None:
        self.sock.close()
