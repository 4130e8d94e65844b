"""Realistic fleet fixtures for the benches: a config and a pre-issued state directory.

One job: write what a real deployment of ``n`` services looks like to rotatord, so that a bench
measures the work a real config and a real restart cost, not a thin stand-in. Each service has

* 2 names (``svcNNNNN.example.test`` and ``www.svcNNNNN.example.test``),
* 3 outputs: a fullchain PEM file, a key PEM file (0600) and a ``directory`` output (which the
  config validator must check every other output against),
* 1 reload action (a ``command``),
* an HTTP-01 standalone challenge on one shared loopback port,

and, with :func:`build_state`, a current, valid, not-yet-due certificate (2 SANs, with the
Authority Key Identifier a public CA puts in, so ARI applies) whose ``meta.json`` matches the
config, so a daemon started on it is *restarting*: nothing is due, nothing is issued. With
``publish=True`` the outputs are written too, as the daemon would have left them.

Building is not what a bench measures: the store's own ``stage``/``activate`` and the output
writer run with fsync turned off (``NoSyncOps``); the daemon under test never sees the
difference.

Import it from a bench (``bench/`` is put on ``sys.path`` by running a script in it)::

    from fixtures import Fleet, build_state, write_config
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rotatord.core.model import IssuedMeta, KeyType, OutputFormat, OutputSpec
from rotatord.deploy.outputs import publish as publish_outputs
from rotatord.fsutil import FsOps
from rotatord.store import Bundle, ServiceStatus, ServiceStore

# ``tests`` is a directory of this repository, not an installed package.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.certs import CertificateAuthority, cert_to_pem, key_to_pem, make_ca  # noqa: E402

LOOPBACK = "127.0.0.1"
ACCOUNT = "bench"
RELOAD_ARGV = ("/bin/true",)


class NoSyncOps(FsOps):
    """The store's syscalls without fsync: building a fixture is not what is measured."""

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: Path) -> None:
        pass


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and has nothing listening on it now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


def service_name(i: int) -> str:
    return f"svc{i:05d}"


def service_names(i: int) -> tuple[str, str]:
    name = service_name(i)
    return (f"{name}.example.test", f"www.{name}.example.test")


@dataclass(frozen=True)
class Fleet:
    """Where one fixture lives. ``work`` should be short: the control socket is under it and
    AF_UNIX paths are capped at 108 bytes."""

    work: Path
    n: int
    directory: str  # the ACME directory URL every service's account uses
    listen_port: int  # the shared HTTP-01 standalone port (nothing needs to listen on it)
    realistic: bool = True  # False: one name, no outputs, no reload (the old thin fixture)
    directory_outputs_only: bool = False  # each service's only output is a directory output

    @property
    def state(self) -> Path:
        return self.work / "state"

    @property
    def outputs(self) -> Path:
        return self.work / "out"

    @property
    def config(self) -> Path:
        # Its own directory: the daemon watches the config's directory.
        return self.work / "conf" / "rotatord.toml"

    @property
    def control_socket(self) -> Path:
        return self.work / "ctl.sock"

    def names(self, i: int) -> tuple[str, ...]:
        return service_names(i) if self.realistic else (f"{service_name(i)}.example.test",)

    def output_specs(self, i: int) -> tuple[OutputSpec, ...]:
        base = self.outputs / service_name(i)
        if self.directory_outputs_only:
            return (OutputSpec(base, OutputFormat.DIRECTORY, 0o640),)
        if not self.realistic:
            return ()
        return (
            OutputSpec(base / "fullchain.pem", OutputFormat.FULLCHAIN, 0o644),
            OutputSpec(base / "privkey.pem", OutputFormat.KEY, 0o600),
            OutputSpec(base / "tls", OutputFormat.DIRECTORY, 0o640),
        )


def config_text(fleet: Fleet) -> str:
    parts = [
        f"""[daemon]
state_dir = "{fleet.state}"
audit_log = "{fleet.state}/audit.jsonl"
control_socket = "{fleet.control_socket}"
log_format = "json"

[acme.{ACCOUNT}]
directory = "{fleet.directory}"
"""
    ]
    argv = ", ".join(f'"{a}"' for a in RELOAD_ARGV)
    for i in range(fleet.n):
        name = service_name(i)
        domains = ", ".join(f'"{d}"' for d in fleet.names(i))
        parts.append(
            f"""
[services.{name}]
domains = [{domains}]
account = "{ACCOUNT}"
key_type = "ecdsa-p256"
[services.{name}.challenge]
listen = "{LOOPBACK}:{fleet.listen_port}"
"""
        )
        for out in fleet.output_specs(i):
            parts.append(
                f"""[[services.{name}.outputs]]
path = "{out.path}"
format = "{out.format.value}"
mode = "{out.mode:04o}"
"""
            )
        if fleet.realistic and not fleet.directory_outputs_only:
            parts.append(
                f"""[[services.{name}.reload]]
command = [{argv}]
timeout = 10
"""
            )
    return "".join(parts)


def write_config(fleet: Fleet) -> Path:
    fleet.config.parent.mkdir(parents=True, exist_ok=True)
    fleet.config.write_text(config_text(fleet))
    return fleet.config


def issue_leaf(
    ca: CertificateAuthority,
    key: ec.EllipticCurvePrivateKey,
    names: tuple[str, ...],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A leaf with the Authority Key Identifier every public CA (and Pebble) puts in: without it
    there is no RFC 9773 certificate id, and the daemon would skip ARI entirely, which is not
    what a real deployment does."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def build_state(fleet: Fleet, *, publish: bool = True, now: datetime | None = None) -> None:
    """Give each service a current, valid, not-yet-due certificate from one throwaway CA
    (valid from now-1d to now+89d: a 90-day certificate renewed at 30 days left); with
    ``publish`` also write its outputs, as the daemon would have."""
    ca = make_ca("rotatord bench fleet")
    # Validity is relative to the real now: the daemon under test reads the real clock.
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    not_before, not_after = now - timedelta(days=1), now + timedelta(days=89)
    ops = NoSyncOps()
    for i in range(fleet.n):
        names = fleet.names(i)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = issue_leaf(ca, key, names, not_before, not_after)
        meta = IssuedMeta(
            names=names,
            key_type=KeyType.ECDSA_P256,
            account=ACCOUNT,
            directory=fleet.directory,
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            issued_at=not_before,
        )
        bundle = Bundle(key_to_pem(key), cert_to_pem(leaf), ca.chain_pem, meta)
        store = ServiceStore(fleet.state, service_name(i), ops=ops)
        version = store.stage(bundle)
        store.activate(version)
        # What the rotation that installed it left: its status and a finished journal, so a
        # start on this state is a plain restart (no recovery work, no "unrecorded" audit).
        store.write_status(
            ServiceStatus(
                last_result="rotated",
                current_version=version.name,
                last_attempt=not_before,
                last_success=not_before,
                last_rotation_id=f"{i:016x}",
                last_order_at=not_before,
                last_issued_at=not_before,
                issued_lifetime_s=(not_after - not_before).total_seconds(),
            ).to_doc()
        )
        store.write_journal(
            {
                "rotation_id": f"{i:016x}",
                "phase": "finished",
                "version": version.name,
                "previous_version": None,
                "trigger": "startup",
                "started_at": not_before.isoformat(),
            }
        )
        if publish:
            publish_outputs(fleet.output_specs(i), bundle, version.name, ops)
