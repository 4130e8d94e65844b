"""Start and stop a private Pebble ACME test server (plus ``pebble-challtestsrv``) on loopback.

:class:`PebbleServer` writes a throwaway listener CA and a Pebble config into a short temporary
directory, picks free 127.0.0.1 ports for every listener, starts ``pebble-challtestsrv`` (mock DNS
only; the ACME client answers HTTP-01 itself) and ``pebble``, and waits until both answer. It
stops exactly the processes it started. Nothing binds to, or is told to dial, any address other
than 127.0.0.1. See ``pebble/README.md`` for the facts about Debian's Pebble 2.4.0 this relies on.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypedDict, Unpack

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "PebbleFactory",
    "PebbleOptions",
    "PebbleServer",
    "PebbleUnavailable",
    "pebble_available",
]

PEBBLE_BINARY = "pebble"
CHALLTESTSRV_BINARY = "pebble-challtestsrv"
LOOPBACK = "127.0.0.1"

#: Startup attempts with fresh ports (a picked port can be taken before the server binds it).
START_ATTEMPTS = 3
#: Upper bound for one attempt to become ready.
READY_TIMEOUT = 15.0
#: Interval of the bounded readiness polling.
POLL_INTERVAL = 0.05
#: Grace period between SIGTERM and SIGKILL in :meth:`PebbleServer.stop`.
STOP_TIMEOUT = 5.0
#: Timeout of one request to the management interface.
REQUEST_TIMEOUT = 10.0
#: How much of a log file a startup error quotes.
LOG_TAIL_BYTES = 4000

CONFIG_NAME = "pebble-config.json"
CA_NAME = "ca.pem"
CERT_NAME = "listener-cert.pem"
KEY_NAME = "listener-key.pem"
PEBBLE_LOG = "pebble.log"
CHALLTESTSRV_LOG = "challtestsrv.log"


class PebbleUnavailable(RuntimeError):
    """The ``pebble`` or ``pebble-challtestsrv`` binary is not installed."""


class PebbleOptions(TypedDict, total=False):
    """Keyword arguments of :class:`PebbleServer` (used to type factory fixtures)."""

    validity_seconds: int | None
    nonce_reject: int | None
    authz_reuse: int
    eab_keys: dict[str, str] | None
    workdir: Path | None
    http_port: int | None
    tls_port: int | None
    keep_workdir: bool
    extra_env: Mapping[str, str] | None
    dns_server: str | None


class PebbleFactory(Protocol):
    """A callable returning a started :class:`PebbleServer` (see ``tests/conftest.py``)."""

    def __call__(self, **kwargs: Unpack[PebbleOptions]) -> PebbleServer: ...


def pebble_available() -> bool:
    """Return True when both Pebble binaries are on ``PATH``."""
    return shutil.which(PEBBLE_BINARY) is not None and shutil.which(CHALLTESTSRV_BINARY) is not None


def _require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PebbleUnavailable(
            f"{name!r} is not installed (looked on PATH); on Debian/Ubuntu run "
            "'apt-get install -y pebble' to get /usr/bin/pebble and /usr/bin/pebble-challtestsrv"
        )
    return path


@dataclass(frozen=True)
class _Ports:
    """The loopback ports of one server instance."""

    listen: int
    management: int
    http: int
    tls: int
    dns: int
    challtestsrv_management: int


def _pick_ports(http_port: int | None, tls_port: int | None = None) -> _Ports:
    """Pick distinct free 127.0.0.1 ports; the DNS port is free for both TCP and UDP.

    All probe sockets stay bound until every port is chosen so no port is handed out twice; they
    are closed before returning, so a port can still be taken before the server binds it (the
    caller retries).
    """
    with contextlib.ExitStack() as stack:

        def bind(kind: socket.SocketKind, port: int = 0) -> int:
            sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
            sock.bind((LOOPBACK, port))
            bound: int = sock.getsockname()[1]
            return bound

        def free_tcp() -> int:
            while True:
                port = bind(socket.SOCK_STREAM)
                if port not in (http_port, tls_port):
                    return port

        def free_tcp_and_udp() -> int:
            for _ in range(50):
                port = free_tcp()
                try:
                    bind(socket.SOCK_DGRAM, port)
                except OSError:
                    continue
                return port
            raise RuntimeError("could not find a loopback port free for both TCP and UDP")

        listen, management = free_tcp(), free_tcp()
        http = http_port if http_port is not None else free_tcp()
        tls = tls_port if tls_port is not None else free_tcp()
        dns, mgmt = free_tcp_and_udp(), free_tcp()
        return _Ports(listen, management, http, tls, dns, mgmt)


def _write_listener_pki(workdir: Path) -> None:
    """Write a throwaway CA (``ca.pem``) and a leaf for localhost/127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rotatord Pebble listener CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    (workdir / CA_NAME).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (workdir / CERT_NAME).write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(workdir / KEY_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)


def _log_tail(path: Path) -> str:
    """Return the last :data:`LOG_TAIL_BYTES` of a log file (or a note that it is missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM one process we started, SIGKILL it after :data:`STOP_TIMEOUT`, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _dns_answers(port: int) -> bool:
    """Return True when a DNS server on 127.0.0.1:``port`` (UDP) answers a query."""
    query_id = 0x5EB1
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label for label in (b"ready", b"pebble", b"test"))
    packet = header + qname + b"\x00" + struct.pack("!HH", 1, 1)  # A, IN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect((LOOPBACK, port))
            sock.send(packet)
            reply = sock.recv(512)
        except OSError:  # refused (nothing bound yet) or timeout
            return False
    return len(reply) >= 2 and struct.unpack("!H", reply[:2])[0] == query_id


def _http_session() -> requests.Session:
    """A session that ignores proxy and CA-bundle environment variables."""
    session = requests.Session()
    session.trust_env = False
    return session


def _answers(session: requests.Session, url: str, ca_bundle: Path) -> bool:
    """Return True when ``url`` answers 200 over TLS verified against ``ca_bundle``."""
    try:
        with session.get(url, verify=str(ca_bundle), timeout=1.0) as resp:
            return resp.status_code == 200
    except requests.RequestException:
        return False


def _serial_id(serial_hex: str | int) -> str:
    """Pebble's certificate id: lower-case hex of the serial's big-endian bytes."""
    if isinstance(serial_hex, int):
        value = serial_hex
    else:
        value = int(serial_hex.replace(":", "").strip().removeprefix("0x"), 16)
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big").hex()


def roots_url_for(ca_bundle: Path) -> str:
    """The :attr:`PebbleServer.roots_url` of the Pebble whose listener CA is ``ca_bundle`` (for
    test config writers that are handed only a directory URL and a bundle, e.g. through a
    proxy): read from the Pebble config written beside the bundle."""
    config = json.loads((ca_bundle.parent / CONFIG_NAME).read_text())
    return f"https://{config['pebble']['managementListenAddress']}/roots/0"


class StartStop:
    """``with x:`` runs ``x.start()`` and, whatever happens, ``x.stop()``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PebbleServer(StartStop):
    """A private Pebble + challtestsrv pair on 127.0.0.1; a context manager.

    :param validity_seconds: Pebble ``certificateValidityPeriod`` (default: Pebble's 5 years).
    :param nonce_reject: ``PEBBLE_WFE_NONCEREJECT`` percent; ``None`` keeps Pebble's 5 % default.
    :param authz_reuse: ``PEBBLE_AUTHZREUSE`` percent (0: every order gets fresh authorizations).
    :param eab_keys: ``{kid: base64url HMAC key}``; when non-empty, accounts need EAB.
    :param workdir: directory for config, certificates and logs (default: a new ``/tmp/pbl-*``).
    :param http_port: port Pebble's VA dials for HTTP-01 (default: a free loopback port).
    :param tls_port: port Pebble's VA dials for TLS-ALPN-01 (default: a free loopback port).
    :param keep_workdir: keep a temporary workdir after :meth:`stop` (a given workdir is never
        removed).
    :param extra_env: extra environment for ``pebble`` (e.g. ``PEBBLE_CHAIN_LENGTH``); ``PEBBLE_*``
        variables inherited from this process are not passed on.
    :param dns_server: ``127.0.0.1:PORT`` of a DNS server Pebble resolves through instead of
        challtestsrv (a test BIND, so DNS-01 validation reads what the client wrote there).
    """

    def __init__(
        self,
        *,
        validity_seconds: int | None = None,
        nonce_reject: int | None = None,
        authz_reuse: int = 0,
        eab_keys: dict[str, str] | None = None,
        workdir: Path | None = None,
        http_port: int | None = None,
        tls_port: int | None = None,
        keep_workdir: bool = False,
        extra_env: Mapping[str, str] | None = None,
        dns_server: str | None = None,
    ) -> None:
        if dns_server is not None and not dns_server.startswith(f"{LOOPBACK}:"):
            raise ValueError("dns_server must be 127.0.0.1:PORT (tests dial loopback only)")
        self.dns_server = dns_server
        if validity_seconds is not None and validity_seconds < 1:
            raise ValueError("validity_seconds must be positive")
        if nonce_reject is not None and not 0 <= nonce_reject <= 100:
            raise ValueError("nonce_reject is a percentage (0-100)")
        if not 0 <= authz_reuse <= 100:
            raise ValueError("authz_reuse is a percentage (0-100)")
        if http_port is not None and not 0 < http_port < 65536:
            raise ValueError("http_port must be a TCP port number")
        self.validity_seconds = validity_seconds
        self.nonce_reject = nonce_reject
        self.authz_reuse = authz_reuse
        self.eab_keys = dict(eab_keys) if eab_keys is not None else None
        self.keep_workdir = keep_workdir
        self.extra_env = dict(extra_env) if extra_env is not None else {}
        self._given_workdir = workdir
        self._given_http_port = http_port
        self._given_tls_port = tls_port
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._ports: _Ports | None = None
        self._pebble: subprocess.Popen[bytes] | None = None
        self._challtestsrv: subprocess.Popen[bytes] | None = None
        self._challtestsrv_argv: tuple[str, ...] = ()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start challtestsrv and Pebble and wait until both answer.

        :raises PebbleUnavailable: a binary is missing.
        :raises RuntimeError: already running, or no attempt became ready (quotes Pebble's log).
        """
        if self.running:
            raise RuntimeError("PebbleServer is already running")
        pebble_bin = _require_binary(PEBBLE_BINARY)
        challtestsrv_bin = _require_binary(CHALLTESTSRV_BINARY)
        self._make_workdir()
        try:
            _write_listener_pki(self.workdir)
            failure = ""
            for _attempt in range(START_ATTEMPTS):
                self._ports = _pick_ports(self._given_http_port, self._given_tls_port)
                self._write_config()
                self._start_challtestsrv(challtestsrv_bin)
                self._start_pebble(pebble_bin)
                failure = self._wait_ready(check_challtestsrv=True)
                if not failure:
                    return
                self._stop_processes()
            raise RuntimeError(self._startup_error(failure, START_ATTEMPTS))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the processes this object started (SIGTERM, then SIGKILL) and reap them.

        Idempotent. A temporary workdir is removed unless ``keep_workdir`` was set.
        """
        self._stop_processes()
        self._ports = None
        if self._workdir is not None and self._owns_workdir and not self.keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._owns_workdir = False

    def restart(self) -> None:
        """Stop Pebble only and start it again on the same ports; challtestsrv keeps running.

        Pebble generates a new issuing CA at every start: accounts, orders and certificates from
        before the restart are gone.

        :raises RuntimeError: not running, or Pebble did not come back (quotes its log).
        """
        if not self.running:
            raise RuntimeError("PebbleServer is not running")
        self._restart_pebble("restart")

    def pause(self) -> None:
        """Stop Pebble only, keeping its ports reserved for :meth:`resume` (the CA looks down)."""
        if self._ports is None:
            raise RuntimeError("PebbleServer is not running")
        self._stop_pebble()

    def resume(self) -> None:
        """Start Pebble again after :meth:`pause`, on the same ports, with a new CA.

        :raises RuntimeError: never started, or Pebble did not come back (quotes its log).
        """
        if self._ports is None:
            raise RuntimeError("PebbleServer is not running")
        self._restart_pebble("resume")

    def _restart_pebble(self, action: str) -> None:
        pebble_bin = _require_binary(PEBBLE_BINARY)
        failure = ""
        for _attempt in range(START_ATTEMPTS):
            self._stop_pebble()
            self._start_pebble(pebble_bin)
            failure = self._wait_ready(check_challtestsrv=False)
            if not failure:
                return
        self._stop_pebble()
        raise RuntimeError(self._startup_error(failure, START_ATTEMPTS, action=action))

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._ports is not None and self._pebble is not None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """Directory holding the config, ``ca.pem``, the listener key pair and the logs."""
        if self._workdir is None:
            raise RuntimeError("PebbleServer has no workdir before start()")
        return self._workdir

    @property
    def ca_bundle(self) -> Path:
        """PEM file ACME clients must trust for Pebble's listener (not Pebble's issuing root)."""
        return self.workdir / CA_NAME

    @property
    def config_path(self) -> Path:
        """The Pebble JSON config written for this instance."""
        return self.workdir / CONFIG_NAME

    @property
    def directory_url(self) -> str:
        """ACME directory URL, ``https://127.0.0.1:<port>/dir``."""
        return f"https://{LOOPBACK}:{self._require_ports().listen}/dir"

    @property
    def management_url(self) -> str:
        """Pebble management interface, ``https://127.0.0.1:<port>`` (same listener CA)."""
        return f"https://{LOOPBACK}:{self._require_ports().management}"

    @property
    def roots_url(self) -> str:
        """Where Pebble serves its current issuing root (PEM): rotatord's ``trust_roots_url``."""
        return f"{self.management_url}/roots/0"

    @property
    def http_port(self) -> int:
        """Port Pebble's VA dials on 127.0.0.1 for HTTP-01; the client must serve it."""
        if self._given_http_port is not None:
            return self._given_http_port
        return self._require_ports().http

    @property
    def tls_port(self) -> int:
        """Port Pebble's VA dials on 127.0.0.1 for TLS-ALPN-01."""
        return self._require_ports().tls

    @property
    def dns_address(self) -> str:
        """challtestsrv's mock DNS server, ``127.0.0.1:<port>`` (UDP and TCP)."""
        return f"{LOOPBACK}:{self._require_ports().dns}"

    @property
    def challtestsrv_management_url(self) -> str:
        """challtestsrv's plain-HTTP management API (``/set-txt``, ``/add-a`` ...)."""
        return f"http://{LOOPBACK}:{self._require_ports().challtestsrv_management}"

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the running challtestsrv and Pebble (in that order)."""
        return tuple(p.pid for p in (self._challtestsrv, self._pebble) if p is not None)

    @property
    def pebble_pid(self) -> int:
        """Process id of the running Pebble."""
        if self._pebble is None:
            raise RuntimeError("Pebble is not running")
        return self._pebble.pid

    @property
    def challtestsrv_argv(self) -> tuple[str, ...]:
        """The argv challtestsrv was started with."""
        return self._challtestsrv_argv

    # -- management API ----------------------------------------------------------------------

    def root_pem(self) -> bytes:
        """Pebble's current issuing root certificate (PEM), from ``/roots/0``."""
        return self._management_get("/roots/0")

    def intermediate_pem(self) -> bytes:
        """Pebble's current intermediate certificate (PEM), from ``/intermediates/0``."""
        return self._management_get("/intermediates/0")

    def intermediate_key_pem(self) -> bytes:
        """The intermediate's private key (PEM), from ``/intermediate-keys/0``: tests sign CRLs
        with it, since Pebble 2.4 serves none."""
        return self._management_get("/intermediate-keys/0")

    def cert_status(self, serial_hex: str | int) -> dict[str, Any]:
        """JSON status of an issued certificate from ``/cert-status-by-serial/<hex>``.

        ``serial_hex`` may be upper or lower case, with or without leading zeros or colons (as
        printed by ``openssl x509 -serial``), or an int. Keys: ``Certificate``, ``Serial``,
        ``Status`` (``Valid``/``Revoked``), ``Reason`` and ``RevokedAt`` (Go time format, not
        RFC 3339) when revoked.

        :raises requests.HTTPError: unknown serial (404) or another error status.
        """
        with (
            _http_session() as session,
            session.get(
                f"{self.management_url}/cert-status-by-serial/{_serial_id(serial_hex)}",
                verify=str(self.ca_bundle),
                timeout=REQUEST_TIMEOUT,
            ) as resp,
        ):
            resp.raise_for_status()
            data = resp.json()
        if not isinstance(data, dict):
            raise ValueError(f"unexpected cert-status answer: {data!r}")
        return data

    # -- internals ---------------------------------------------------------------------------

    def _require_ports(self) -> _Ports:
        if self._ports is None:
            raise RuntimeError("PebbleServer is not running; call start() first")
        return self._ports

    def _management_get(self, path: str) -> bytes:
        with (
            _http_session() as session,
            session.get(
                self.management_url + path, verify=str(self.ca_bundle), timeout=REQUEST_TIMEOUT
            ) as resp,
        ):
            resp.raise_for_status()
            return resp.content

    def _make_workdir(self) -> None:
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self._workdir, self._owns_workdir = self._given_workdir, False
        else:
            # Short, fixed parent: TMPDIR may be long, and people put AF_UNIX sockets next to it.
            parent = "/tmp" if Path("/tmp").is_dir() else None
            self._workdir = Path(tempfile.mkdtemp(prefix="pbl-", dir=parent))
            self._owns_workdir = True

    def _write_config(self) -> None:
        ports = self._require_ports()
        config: dict[str, Any] = {
            "listenAddress": f"{LOOPBACK}:{ports.listen}",
            "managementListenAddress": f"{LOOPBACK}:{ports.management}",
            "certificate": str(self.workdir / CERT_NAME),
            "privateKey": str(self.workdir / KEY_NAME),
            "httpPort": ports.http,
            "tlsPort": ports.tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(self.eab_keys),
        }
        if self.eab_keys:
            config["externalAccountMACKeys"] = self.eab_keys
        if self.validity_seconds is not None:
            config["certificateValidityPeriod"] = self.validity_seconds
        self.config_path.write_text(json.dumps({"pebble": config}, indent=2) + "\n")

    def _popen(
        self, argv: list[str], log_name: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with (self.workdir / log_name).open("ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _start_challtestsrv(self, binary: str) -> None:
        ports = self._require_ports()
        argv = [
            binary,
            "-defaultIPv4", LOOPBACK,
            "-defaultIPv6", "",
            "-dns01", f"{LOOPBACK}:{ports.dns}",
            "-management", f"{LOOPBACK}:{ports.challtestsrv_management}",
            "-http01", "",
            "-https01", "",
            "-tlsalpn01", "",
        ]  # fmt: skip
        self._challtestsrv_argv = tuple(argv)
        self._challtestsrv = self._popen(argv, CHALLTESTSRV_LOG, _base_env())

    def _start_pebble(self, binary: str) -> None:
        ports = self._require_ports()
        env = _base_env()
        env["PEBBLE_VA_NOSLEEP"] = "1"
        env["PEBBLE_AUTHZREUSE"] = str(self.authz_reuse)
        if self.nonce_reject is not None:
            env["PEBBLE_WFE_NONCEREJECT"] = str(self.nonce_reject)
        env.update(self.extra_env)
        argv = [
            binary,
            "-config", str(self.config_path),
            "-dnsserver", self.dns_server or f"{LOOPBACK}:{ports.dns}",
            "-strict",
        ]  # fmt: skip
        self._pebble = self._popen(argv, PEBBLE_LOG, env)

    def _wait_ready(self, *, check_challtestsrv: bool) -> str:
        """Poll until the services answer; return "" when ready, else why not."""
        ports = self._require_ports()
        deadline = time.monotonic() + READY_TIMEOUT
        pending = {"pebble directory", "pebble management"}
        if check_challtestsrv:
            pending |= {"challtestsrv management", "challtestsrv dns"}
        with _http_session() as session:
            while True:
                for name, proc in (("pebble", self._pebble), ("challtestsrv", self._challtestsrv)):
                    if proc is not None and proc.poll() is not None:
                        return f"{name} exited early with status {proc.returncode}"
                if "pebble directory" in pending and _answers(
                    session, self.directory_url, self.ca_bundle
                ):
                    pending.discard("pebble directory")
                if "pebble management" in pending and _answers(
                    session, self.management_url + "/roots/0", self.ca_bundle
                ):
                    pending.discard("pebble management")
                if "challtestsrv management" in pending and self._challtestsrv_answers(session):
                    pending.discard("challtestsrv management")
                if "challtestsrv dns" in pending and _dns_answers(ports.dns):
                    pending.discard("challtestsrv dns")
                if not pending:
                    return ""
                if time.monotonic() >= deadline:
                    return f"not ready after {READY_TIMEOUT:.0f} s: {', '.join(sorted(pending))}"
                time.sleep(POLL_INTERVAL)  # bounded readiness polling

    def _challtestsrv_answers(self, session: requests.Session) -> bool:
        """Any HTTP answer from challtestsrv's management port means it is up."""
        try:
            with session.get(self.challtestsrv_management_url + "/", timeout=1.0):
                return True
        except requests.RequestException:
            return False

    def _startup_error(self, failure: str, attempts: int, action: str = "start") -> str:
        workdir = self._workdir
        pebble_log = _log_tail(workdir / PEBBLE_LOG) if workdir else "<no workdir>"
        message = (
            f"Pebble failed to {action} after {attempts} attempts ({failure}).\n"
            f"--- tail of {PEBBLE_LOG} ---\n{pebble_log}"
        )
        if workdir is not None and (workdir / CHALLTESTSRV_LOG).exists():
            tail = _log_tail(workdir / CHALLTESTSRV_LOG)
            message += f"\n--- tail of {CHALLTESTSRV_LOG} ---\n{tail}"
        return message

    def _stop_pebble(self) -> None:
        if self._pebble is not None:
            _terminate(self._pebble)
            self._pebble = None

    def _stop_processes(self) -> None:
        self._stop_pebble()
        if self._challtestsrv is not None:
            _terminate(self._challtestsrv)
            self._challtestsrv = None


def _base_env() -> dict[str, str]:
    """This process's environment without inherited ``PEBBLE_*`` settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
