"""Frozen data model: the parsed configuration and what we know about certificates.

Rules: plain frozen dataclasses and enums only; no I/O, no clock, no library objects (no josepy,
no acme). Datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import assert_never

from rotatord.core.dns01 import Dns01
from rotatord.core.observing import ObserveSpec
from rotatord.core.text import serial_text


class KeyType(enum.Enum):
    """Private key algorithms rotatord generates. Values are the config spellings."""

    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


class Trigger(enum.Enum):
    """Why a rotation ran; recorded on every audit event."""

    SCHEDULE = "schedule"
    STARTUP = "startup"
    MANUAL = "manual"
    CONFIG_CHANGE = "config_change"
    ARI = "ari"
    REVOKED = "revoked"  # the CA's CRL lists the current certificate


# --------------------------------------------------------------------------- daemon and accounts


DEFAULT_RETRY_LADDER: tuple[timedelta, ...] = (
    timedelta(minutes=1),
    timedelta(minutes=10),
    timedelta(minutes=100),
    timedelta(hours=6),
)


@dataclass(frozen=True)
class BudgetLimits:
    """Issuance budget of one account: at most ``orders`` new orders per ``orders_window`` and
    ``certificates`` certificates for one identifier set per ``certificates_window``. The
    defaults are Let's Encrypt's published limits (300 orders / 3 h, 5 duplicates / 7 days)."""

    orders: int = 300
    orders_window: timedelta = timedelta(hours=3)
    certificates: int = 5
    certificates_window: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class DaemonSpec:
    state_dir: Path = Path("/var/lib/rotatord")
    audit_log: Path = Path("/var/log/rotatord/audit.jsonl")
    control_socket: Path = Path("/run/rotatord/control.sock")
    control_socket_group: str | None = None
    control_allowed_uids: tuple[int, ...] = (0,)
    keep_versions: int = 5
    max_concurrent: int = 4
    log_format: str = "auto"  # auto | json | console
    retry_ladder: tuple[timedelta, ...] = DEFAULT_RETRY_LADDER
    # The floor between two automatic orders of one service, retries included.
    min_order_interval: timedelta = timedelta(minutes=1)


@dataclass(frozen=True)
class EabSpec:
    """External Account Binding: the HMAC key is read from a file so it never sits in config."""

    kid: str
    hmac_key_file: Path


@dataclass(frozen=True)
class AcmeSpec:
    name: str
    directory: str
    contact: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    eab: EabSpec | None = None
    timeout_seconds: float = 30.0
    order_deadline_seconds: float = 120.0
    budget: BudgetLimits = field(default_factory=BudgetLimits)
    #: Trust anchors every issued chain must verify to: a PEM file, and/or an https URL serving
    #: PEM roots (fetched with ``ca_bundle``; a test CA's management port). Neither: the
    #: system trust store.
    trust_roots: Path | None = None
    trust_roots_url: str | None = None
    #: Hosts besides the directory's that the CA's URLs may point at.
    allowed_hosts: tuple[str, ...] = ()


# --------------------------------------------------------------------------- challenges


@dataclass(frozen=True)
class Http01Standalone:
    """Answer HTTP-01 from our own listener on ``host:port``."""

    host: str = "0.0.0.0"  # noqa: S104 - port 80 on all interfaces is what HTTP-01 needs in production
    port: int = 80


@dataclass(frozen=True)
class Http01Webroot:
    """Write the token under ``<webroot>/.well-known/acme-challenge/`` for an existing server."""

    webroot: Path


@dataclass(frozen=True)
class TlsAlpn01:
    """Answer TLS-ALPN-01 (RFC 8737) from our own responder on ``host:port`` (443 in
    production: the CA always connects there)."""

    host: str = "0.0.0.0"  # noqa: S104 - the CA connects to port 443 of the name's address
    port: int = 443


Challenge = Http01Standalone | Http01Webroot | TlsAlpn01 | Dns01


def challenge_type(challenge: Challenge) -> str:
    """The ACME challenge type a configured challenge answers (config checks which identifiers
    it can validate: no wildcard without dns-01, no IP address with it). A new member of
    ``Challenge`` must be added here: mypy stops at ``assert_never`` until it is."""
    if isinstance(challenge, TlsAlpn01):
        return "tls-alpn-01"
    if isinstance(challenge, Http01Standalone | Http01Webroot):
        return "http-01"
    if isinstance(challenge, Dns01):
        return "dns-01"
    assert_never(challenge)


# --------------------------------------------------------------------------- reload actions


@dataclass(frozen=True)
class CommandReload:
    """Run ``argv`` (never through a shell)."""

    argv: tuple[str, ...]
    timeout_seconds: float = 30.0
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class SignalReload:
    """Send ``signal`` to the process whose pid is in ``pid_file``."""

    pid_file: Path
    signal: signal.Signals = signal.SIGHUP
    timeout_seconds: float = 5.0
    executable: Path | None = None  # if set, the pid's /proc/<pid>/exe must be this program


@dataclass(frozen=True)
class SystemdReload:
    """``systemctl reload UNIT``."""

    unit: str
    timeout_seconds: float = 60.0


ReloadAction = CommandReload | SignalReload | SystemdReload


# --------------------------------------------------------------------------- outputs


class OutputFormat(enum.Enum):
    FULLCHAIN = "fullchain"  # leaf + chain, PEM
    CERT = "cert"  # leaf only, PEM
    CHAIN = "chain"  # intermediates, PEM
    KEY = "key"  # private key, PEM
    COMBINED = "combined"  # key + leaf + chain in one PEM (HAProxy)
    DER = "der"  # leaf, DER
    PKCS12 = "pkcs12"  # key + leaf + chain, password from ``password_file``
    # A directory ``path`` holding versions of privkey.pem/cert.pem/chain.pem/fullchain.pem and a
    # ``current`` symlink flipped in one rename: key and cert as two files, never mismatched.
    DIRECTORY = "directory"


SECRET_FORMATS = frozenset(
    {OutputFormat.KEY, OutputFormat.COMBINED, OutputFormat.PKCS12, OutputFormat.DIRECTORY}
)


@dataclass(frozen=True)
class OutputSpec:
    """A file rendered from the current version for a consumer that cannot read ``current/``."""

    path: Path
    format: OutputFormat
    mode: int = 0o600
    owner: str | None = None
    group: str | None = None
    password_file: Path | None = None  # PKCS#12 only; its content is never logged


@dataclass(frozen=True)
class ProbeSpec:
    """A TLS endpoint that must serve the new certificate after the reload.

    Exactly one of ``host``+``port`` or ``unix_socket``; ``sni`` defaults to the first DNS name
    of the service (``identifiers.default_sni``).
    """

    host: str | None = None
    port: int | None = None
    unix_socket: Path | None = None
    sni: str | None = None


@dataclass(frozen=True)
class ReloadTarget:
    """A program several services share (one nginx): reloaded once per batch, in ``order``."""

    name: str
    actions: tuple[ReloadAction, ...]
    order: int = 0


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    domains: tuple[str, ...]
    account: str
    challenge: Challenge
    key_type: KeyType = KeyType.ECDSA_P256
    reuse_key: bool = False
    renew_before: timedelta | None = None  # override: renew when this much lifetime remains
    reload: tuple[ReloadAction, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    key_group: str | None = None  # when set, privkey.pem is 0640 with this group
    keep_versions: int | None = None  # None: the daemon default
    reload_targets: tuple[str, ...] = ()  # names of [reload_targets.<name>]
    probes: tuple[ProbeSpec, ...] = ()
    probe_deadline_seconds: float = 15.0
    #: draft-ietf-acme-profiles: the profile named in every new order (None: the CA's default).
    profile: str | None = None
    #: CA fallback: accounts tried in order after ``account`` (see ``rotation.fallback``).
    fallback_accounts: tuple[str, ...] = ()
    #: Consecutive failures on one account before the next is tried.
    fallback_after: int = 3

    @property
    def accounts(self) -> tuple[str, ...]:
        """Every account the service may use, in the order they are tried."""
        return (self.account, *self.fallback_accounts)


@dataclass(frozen=True)
class Config:
    source: Path
    daemon: DaemonSpec
    acme: Mapping[str, AcmeSpec]
    services: Mapping[str, ServiceSpec]
    reload_targets: Mapping[str, ReloadTarget] = field(default_factory=lambda: MappingProxyType({}))
    observe: ObserveSpec = field(default_factory=ObserveSpec)  # [metrics] [alerts] [heartbeat]


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertInfo:
    """What the policy needs to know about an installed certificate."""

    serial: int
    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    key_type: KeyType | None = None
    ari_id: str | None = None  # RFC 9773 certificate identifier, when it has an AKI key id

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    @property
    def serial_hex(self) -> str:
        """As ``openssl x509 -serial`` prints it (even-length upper-case hex)."""
        return serial_text(self.serial)


@dataclass(frozen=True)
class IssuedMeta:
    """What a version was issued for; stored as meta.json so config changes are detected."""

    names: tuple[str, ...]
    key_type: KeyType
    account: str
    directory: str
    serial: int
    not_before: datetime
    not_after: datetime
    issued_at: datetime
