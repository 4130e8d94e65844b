"""The CA's own problem text (type and detail) reaches every failure message: a challenge the CA
rejected, and an authorization still pending with the CA's last error when the deadline passes."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pebble import PebbleServer
from rotatord.core.errors import IssuanceError
from rotatord.issuing.problems import authorization_problems, said, with_problems
from tests.daemon_harness import run_cli, write_config
from tests.servers import free_port

CADDY_PENDING = {
    # What Caddy 2.6's embedded smallstep CA answers while it keeps retrying an unresolvable
    # name: the authorization stays pending, the challenge carries the last attempt's error.
    "status": "pending",
    "identifier": {"type": "dns", "value": "nx.example.test"},
    "challenges": [
        {
            "type": "http-01",
            "status": "pending",
            "error": {
                "type": "urn:ietf:params:acme:error:connection",
                "detail": "The server could not connect to validation target",
            },
        },
        {"type": "dns-01", "status": "pending"},
    ],
}


def test_a_pending_authorization_s_error_is_in_the_deadline_message() -> None:
    """A deadline that passes while the CA retries says what the CA said, type and detail,
    and stays retryable."""
    problems = authorization_problems(CADDY_PENDING)
    assert problems == [
        "nx.example.test: urn:ietf:params:acme:error:connection: "
        "The server could not connect to validation target"
    ]
    exc = with_problems(
        IssuanceError("order did not complete before the deadline", retryable=True),
        ["https://ca/authz/1"],
        {"https://ca/authz/1": problems},
    )
    assert str(exc) == (
        "order did not complete before the deadline (the CA said: nx.example.test: "
        "urn:ietf:params:acme:error:connection: The server could not connect to validation "
        "target)"
    )
    assert exc.retryable
    assert said([]) == ""
    assert authorization_problems({"error": {"type": "t", "detail": "d"}}) == ["t: d"]
    assert authorization_problems("not a dict") == []


class _WrongContent(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"this is not the key authorization"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def wrong_http01(pebble_server: PebbleServer) -> Iterator[None]:
    """Pebble's HTTP-01 port answered by a server that returns the wrong content."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", pebble_server.http_port), _WrongContent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.pebble
def test_a_rejected_challenge_shows_pebble_s_problem(
    pebble_server: PebbleServer, wrong_http01: None, tmp_path: Path
) -> None:
    """Pebble rejects an HTTP-01 answer with the wrong content: `rotate` fails (exit 1) with
    Pebble's problem type and detail in its message."""
    state = tmp_path / "state"
    listen = free_port()  # rotatord answers here; Pebble asks the wrong-content server
    services = f"""
[services.web]
domains = ["web.example.test"]
account = "pebble"
[services.web.challenge]
listen = "127.0.0.1:{listen}"
"""
    config = write_config(tmp_path / "c.toml", pebble_server, state, services)
    result = run_cli(config, "rotate", "web")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("web: failed"))
    assert "validation failed: web.example.test: urn:ietf:params:acme:error:unauthorized" in line
    # Pebble's own detail, which quotes what it got
    assert "did not match this challenge" in line and '"this is not the key authorization"' in line
