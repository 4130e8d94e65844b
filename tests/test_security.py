"""Security checks: secrets get their final mode and owner before their first byte, planted
links are refused, no secret reaches a log or audit line, reload actions get paths not secrets,
the control socket trusts only the kernel's word about its caller, one daemon per state dir.

Every test here fails when the protection it names is removed. Real files, real sockets, real
subprocesses; the ``pebble`` ones run the real CLI and daemon against a private Pebble.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import secrets
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pebble import PebbleFactory, PebbleServer
from rotatord.clock import FakeClock
from rotatord.config import load_config
from rotatord.core import keys
from rotatord.core.errors import AuditError, ControlError, RotatordError, StoreError
from rotatord.core.model import (
    CommandReload,
    Config,
    DaemonSpec,
    Http01Standalone,
    OutputFormat,
    OutputSpec,
    ServiceSpec,
)
from rotatord.daemon import DaemonLock, Planner, build_rotator
from rotatord.daemon.loop import ServiceLoop
from rotatord.daemon.verbs import Verbs
from rotatord.deploy.outputs import publish
from rotatord.deploy.reload import SubprocessReloader
from rotatord.fsutil import FsOps
from rotatord.observe.audit import AuditLog
from rotatord.rotation import reload_env, service_store
from rotatord.runtime import control
from rotatord.runtime.control import ControlServer, Peer
from rotatord.store import ServiceStore
from tests.certs import make_bundle
from tests.daemon_harness import (
    DaemonProcess,
    events,
    read_audit,
    run_cli,
    write_config,
)

NOBODY = "nobody"
NOGROUP = "nogroup"
VERSION = "20260101T000000Z-00000001"
WINDOW = 16  # a secret counts as leaked when any 16 consecutive characters of it appear
# dash (Debian's /bin/sh) exports PWD to every command it runs; it is not from rotatord.
SHELL_ADDED_ENV = frozenset({"PWD"})

requires_root = pytest.mark.root  # conftest: skip without root, fail under CI=true


def nobody_ids() -> tuple[int, int]:
    return pwd.getpwnam(NOBODY).pw_uid, grp.getgrnam(NOGROUP).gr_gid


@pytest.fixture
def umask000() -> Iterator[None]:
    """Run the test under umask 000, the worst case for the mode of a new file."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# ============================================================================================
# 1. Secrets have their final mode and owner before their first byte
# ============================================================================================


@dataclass(frozen=True)
class FirstWrite:
    """A file's mode and owner as ``fstat`` saw them just before its first byte was written."""

    path: str
    mode: int
    uid: int
    gid: int


class RecordingOps(FsOps):
    """FsOps whose ``write`` looks at the file (fstat) before delegating: what a reader racing
    the writer could have opened."""

    def __init__(self) -> None:
        self.first: list[FirstWrite] = []
        self._seen: set[str] = set()

    def write(self, fd: int, data: bytes) -> None:
        st = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path not in self._seen:
            self._seen.add(path)
            self.first.append(FirstWrite(path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        super().write(fd, data)

    def one(self, name: str) -> FirstWrite:
        """The only file written as ``name`` (or as atomic_write's temp for ``name``)."""
        found = [
            w
            for w in self.first
            if Path(w.path).name == name or Path(w.path).name.startswith(f".{name}.tmp-")
        ]
        assert len(found) == 1, (name, self.first)
        return found[0]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_store_key_is_0600_before_its_first_byte(tmp_path: Path, umask000: None) -> None:
    """Under umask 000 the store's privkey.pem is already 0600 when its first byte is written."""
    ops = RecordingOps()
    store = ServiceStore(tmp_path / "state", "web", ops=ops)
    version = store.stage(make_bundle())
    assert ops.one("privkey.pem").mode == 0o600
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "meta.json"):
        assert ops.one(name).mode == 0o644
    assert mode_of(version.path / "privkey.pem") == 0o600


@requires_root
def test_store_key_group_is_0640_with_group_before_first_byte(
    tmp_path: Path, umask000: None
) -> None:
    """With ``key_group`` the store's key is 0640 and owned by that group before its first byte."""
    spec = ServiceSpec(
        name="web",
        domains=("example.test",),
        account="acme",
        challenge=Http01Standalone(),
        key_group=NOGROUP,
    )
    config = Config(
        source=tmp_path / "r.toml",
        daemon=DaemonSpec(state_dir=tmp_path / "state"),
        acme={},
        services={"web": spec},
    )
    ops = RecordingOps()
    version = service_store(config, spec, ops).stage(make_bundle())
    key = ops.one("privkey.pem")
    _, gid = nobody_ids()
    assert (key.mode, key.uid, key.gid) == (0o640, os.geteuid(), gid)
    st = os.lstat(version.path / "privkey.pem")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, gid)


def p12_password_file(tmp_path: Path) -> Path:
    path = tmp_path / "p12.pw"
    path.write_text("p12-password-not-for-logs\n")
    path.chmod(0o600)
    return path


@requires_root
@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        (OutputFormat.KEY, 0o600),
        (OutputFormat.KEY, 0o640),
        (OutputFormat.COMBINED, 0o600),
        (OutputFormat.COMBINED, 0o640),
        (OutputFormat.PKCS12, 0o600),
        (OutputFormat.PKCS12, 0o640),
    ],
    ids=["key-0600", "key-0640", "combined-0600", "combined-0640", "pkcs12-0600", "pkcs12-0640"],
)
def test_secret_output_has_owner_and_mode_before_first_byte(
    tmp_path: Path, umask000: None, fmt: OutputFormat, mode: int
) -> None:
    """A key/combined/pkcs12 output for nobody:nogroup has that owner and its mode before its
    first byte, under umask 000."""
    spec = OutputSpec(
        path=tmp_path / "out" / "web.secret",
        format=fmt,
        mode=mode,
        owner=NOBODY,
        group=NOGROUP,
        password_file=p12_password_file(tmp_path) if fmt is OutputFormat.PKCS12 else None,
    )
    ops = RecordingOps()
    publish([spec], make_bundle(), VERSION, ops)
    uid, gid = nobody_ids()
    first = ops.one("web.secret")
    assert (first.mode, first.uid, first.gid) == (mode, uid, gid)
    st = os.lstat(spec.path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid)


@requires_root
@pytest.mark.parametrize("mode", [0o600, 0o640], ids=["0600", "0640"])
def test_directory_output_has_owner_and_mode_before_first_byte(
    tmp_path: Path, umask000: None, mode: int
) -> None:
    """A ``directory`` output's privkey.pem (and its public files) for nobody:nogroup have their
    owner and mode before their first byte, under umask 000."""
    spec = OutputSpec(
        path=tmp_path / "out" / "web",
        format=OutputFormat.DIRECTORY,
        mode=mode,
        owner=NOBODY,
        group=NOGROUP,
    )
    ops = RecordingOps()
    publish([spec], make_bundle(), VERSION, ops)
    uid, gid = nobody_ids()
    expected = {"privkey.pem": mode, "cert.pem": 0o644, "chain.pem": 0o644, "fullchain.pem": 0o644}
    for name, want in expected.items():
        first = ops.one(name)
        assert (first.mode, first.uid, first.gid) == (want, uid, gid), name
        st = os.lstat(spec.path / "current" / name)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (want, uid, gid), name


# ============================================================================================
# 2. Planted symlinks and hard links are refused, their targets untouched
# ============================================================================================


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (not following links) with a regular file's bytes."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory holding a file an attacker would like rotatord to overwrite."""
    d = tmp_path / "victim"
    d.mkdir()
    (d / "precious").write_bytes(b"precious data\n")
    return d


def test_symlink_at_versions_is_refused(tmp_path: Path, victim: Path) -> None:
    """A symlink planted at ``versions/`` makes stage raise StoreError; nothing lands in its
    target."""
    store = ServiceStore(tmp_path / "state", "web")
    store.dir.mkdir(parents=True)
    store.versions_dir.symlink_to(victim)
    before = snapshot(victim)
    with pytest.raises(StoreError):
        store.stage(make_bundle())
    assert snapshot(victim) == before


def test_symlink_at_service_dir_is_refused(tmp_path: Path, victim: Path) -> None:
    """A symlink planted at the service dir makes stage raise StoreError; nothing lands in its
    target."""
    store = ServiceStore(tmp_path / "state", "web")
    store.dir.parent.mkdir(parents=True)
    store.dir.symlink_to(victim)
    before = snapshot(victim)
    with pytest.raises(StoreError):
        store.stage(make_bundle())
    assert snapshot(victim) == before


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_non_symlink_current_is_refused(tmp_path: Path, kind: str) -> None:
    """A regular file or directory planted at ``current`` is not replaced: activate raises
    StoreError and what was planted is unchanged."""
    store = ServiceStore(tmp_path / "state", "web")
    version = store.stage(make_bundle())
    if kind == "file":
        store.current_link.write_bytes(b"planted\n")
    else:
        store.current_link.mkdir()
        (store.current_link / "privkey.pem").write_bytes(b"planted\n")
    before = snapshot(store.dir)
    with pytest.raises(StoreError):
        store.activate(version)
    assert snapshot(store.dir) == before
    assert store.current_version() is None


def test_symlink_at_status_json_is_refused(tmp_path: Path, victim: Path) -> None:
    """A symlink planted at ``status.json`` is neither written through (StoreError) nor read
    through."""
    store = ServiceStore(tmp_path / "state", "web")
    store.ensure_layout()
    target = victim / "precious"
    store.status_path.symlink_to(target)
    with pytest.raises(StoreError):
        store.write_status({"failures": 0})
    assert target.read_bytes() == b"precious data\n"
    assert store.status_path.is_symlink()
    assert store.read_status() == {}


def test_hard_link_at_output_path_is_refused(tmp_path: Path, victim: Path) -> None:
    """An output path that is a hard link to another file is refused (StoreError); both names
    still hold the original bytes."""
    target = victim / "precious"
    out = tmp_path / "out"
    out.mkdir()
    path = out / "web.key"
    os.link(target, path)
    spec = OutputSpec(path=path, format=OutputFormat.KEY)
    with pytest.raises(StoreError):
        publish([spec], make_bundle(), VERSION)
    assert target.read_bytes() == b"precious data\n"
    assert path.samefile(target)


@pytest.mark.parametrize("fmt", [OutputFormat.KEY, OutputFormat.FULLCHAIN], ids=["key", "pem"])
def test_symlink_at_output_path_is_refused(tmp_path: Path, victim: Path, fmt: OutputFormat) -> None:
    """An output path that is a symlink is refused (StoreError); the link and its target are
    unchanged."""
    target = victim / "precious"
    out = tmp_path / "out"
    out.mkdir()
    path = out / "web.pem"
    path.symlink_to(target)
    with pytest.raises(StoreError):
        publish([OutputSpec(path=path, format=fmt)], make_bundle(), VERSION)
    assert target.read_bytes() == b"precious data\n"
    assert os.readlink(path) == str(target)


def test_directory_output_root_symlink_is_refused(tmp_path: Path, victim: Path) -> None:
    """A ``directory`` output whose root is a planted symlink is refused; nothing lands in its
    target."""
    root = tmp_path / "out" / "web"
    root.parent.mkdir()
    root.symlink_to(victim)
    before = snapshot(victim)
    with pytest.raises(StoreError):
        publish([OutputSpec(path=root, format=OutputFormat.DIRECTORY)], make_bundle(), VERSION)
    assert snapshot(victim) == before


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_directory_output_non_symlink_current_is_refused(tmp_path: Path, kind: str) -> None:
    """A regular file or directory planted at a ``directory`` output's ``current`` is refused
    (StoreError) and left as it was."""
    root = tmp_path / "out" / "web"
    root.mkdir(parents=True)
    current = root / "current"
    if kind == "file":
        current.write_bytes(b"planted\n")
    else:
        current.mkdir()
        (current / "privkey.pem").write_bytes(b"planted\n")
    with pytest.raises(StoreError):
        publish([OutputSpec(path=root, format=OutputFormat.DIRECTORY)], make_bundle(), VERSION)
    if kind == "file":
        assert current.read_bytes() == b"planted\n"
    else:
        assert (current / "privkey.pem").read_bytes() == b"planted\n"


def test_directory_output_current_symlink_is_replaced_not_followed(
    tmp_path: Path, victim: Path
) -> None:
    """A ``current`` symlink planted in a ``directory`` output pointing elsewhere is replaced by
    one rename, never written through: its target keeps its content."""
    root = tmp_path / "out" / "web"
    root.mkdir(parents=True)
    (root / "current").symlink_to(victim)
    before = snapshot(victim)
    bundle = make_bundle()
    publish([OutputSpec(path=root, format=OutputFormat.DIRECTORY)], bundle, VERSION)
    assert snapshot(victim) == before
    assert os.readlink(root / "current") == VERSION
    assert (root / "current" / "privkey.pem").read_bytes() == bundle.key_pem


def test_directory_output_prune_never_writes_through_planted_version_symlink(
    tmp_path: Path, victim: Path
) -> None:
    """Pruning a ``directory`` output never zeroes a privkey.pem through a version-named symlink
    planted in the output root."""
    root = tmp_path / "out" / "web"
    spec = OutputSpec(path=root, format=OutputFormat.DIRECTORY)
    publish([spec], make_bundle(), "20260101T000000Z-00000001")
    (victim / "privkey.pem").write_bytes(b"someone else's key\n")
    (root / "20250101T000000Z-0000dead").symlink_to(victim)  # sorts oldest: first to prune
    before = snapshot(victim)
    publish([spec], make_bundle(), "20260102T000000Z-00000002")
    assert snapshot(victim) == before


@requires_root
def test_directory_output_versions_stay_ours_so_the_consumer_cannot_plant_in_them(
    tmp_path: Path,
) -> None:
    """A ``directory`` output for nobody:nogroup gives nobody its files but not its root or
    version directories, so the consumer cannot plant a link that pruning would then follow."""
    root = tmp_path / "out" / "web"
    spec = OutputSpec(path=root, format=OutputFormat.DIRECTORY, owner=NOBODY, group=NOGROUP)
    publish([spec], make_bundle(), VERSION)
    uid, _ = nobody_ids()
    for d in (root, root / VERSION):
        st = os.lstat(d)
        assert st.st_uid == os.geteuid(), d
        assert stat.S_IMODE(st.st_mode) & 0o022 == 0, d
    assert os.lstat(root / VERSION / "privkey.pem").st_uid == uid


def test_audit_log_symlink_is_refused(tmp_path: Path, victim: Path) -> None:
    """An audit log path that is a symlink makes emit raise AuditError (O_NOFOLLOW); its target
    keeps its bytes and mode."""
    target = victim / "precious"
    target.chmod(0o644)
    path = tmp_path / "log" / "audit.jsonl"
    path.parent.mkdir()
    path.symlink_to(target)
    audit = AuditLog(path, FakeClock(), echo=False)
    with pytest.raises(AuditError):
        audit.emit("rotation_started", service="web", rotation_id="r1", trigger="manual")
    assert target.read_bytes() == b"precious data\n"
    assert mode_of(target) == 0o644


# ============================================================================================
# 3. No private key, account key, EAB secret or PKCS#12 password in any log or audit line
# ============================================================================================


def _encodings(raw: bytes) -> list[str]:
    return [
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


def _windows(text: str) -> set[str]:
    return {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


def _int_bytes(n: int) -> bytes:
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


def _der_texts(key: keys.PrivateKey) -> list[str]:
    """The key's DER (PKCS#8 and OpenSSL traditional) as base64 and hex."""
    out: list[str] = []
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        out += [base64.b64encode(der).decode(), der.hex(), der.hex().upper()]
    return out


def _private_numbers(key: keys.PrivateKey) -> dict[str, int]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"d": key.private_numbers().private_value}
    assert isinstance(key, rsa.RSAPrivateKey)
    n = key.private_numbers()
    return {"d": n.d, "p": n.p, "q": n.q, "dmp1": n.dmp1, "dmq1": n.dmq1, "iqmp": n.iqmp}


def _fresh_like(key: keys.PrivateKey) -> keys.PrivateKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    assert isinstance(key, rsa.RSAPrivateKey)
    return rsa.generate_private_key(65537, key.key_size)


class SecretIndex:
    """Every 16-character window of every encoding of every secret, mapped to what it is from.

    Windows that also occur in public material (the key's SubjectPublicKeyInfo at each base64
    alignment, and the ASN.1 framing every key of that type shares) are left out, so a
    certificate or a fingerprint in a log is never mistaken for a leak.
    """

    def __init__(self) -> None:
        self._windows: dict[str, str] = {}
        self.labels: set[str] = set()

    def add_text(self, label: str, text: str, exclude: set[str] | None = None) -> None:
        self.labels.add(label)
        for w in _windows(text) - (exclude or set()):
            self._windows.setdefault(w, label)

    def add_raw(self, label: str, raw: bytes) -> None:
        for enc in _encodings(raw):
            self.add_text(label, enc)

    def add_key(self, label: str, key: keys.PrivateKey) -> None:
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public: set[str] = set()
        for shift in range(3):
            for enc in _encodings(spki[shift:]):
                public |= _windows(enc)
        for text in _der_texts(_fresh_like(key)):
            public |= _windows(text)
        for text in _der_texts(key):
            self.add_text(label, text, exclude=public)
        for name, value in _private_numbers(key).items():
            self.add_raw(f"{label} [{name}]", _int_bytes(value))
            self.add_text(f"{label} [{name}]", str(value))

    def add_key_pem(self, label: str, pem: bytes) -> None:
        self.add_key(label, keys.load_private_key(pem))

    def find(self, text: str) -> list[str]:
        """What leaked into ``text``: one entry per secret label, with the first offset."""
        found: dict[str, int] = {}
        for i in range(len(text) - WINDOW + 1):
            label = self._windows.get(text[i : i + WINDOW])
            if label is not None:
                found.setdefault(label, i)
        return [f"{label} at offset {at}" for label, at in found.items()]


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def account_key(state: Path, account: str) -> ec.EllipticCurvePrivateKey:
    doc = json.loads((state / "accounts" / account / "key.json").read_text())
    return ec.derive_private_key(int.from_bytes(b64url_decode(doc["d"]), "big"), ec.SECP256R1())


def svc(name: str, account: str, port: int, keys_line: str = "", tables: str = "") -> str:
    return f"""
[services.{name}]
domains = ["{name}.example.test"]
account = "{account}"
{keys_line}
[services.{name}.challenge]
listen = "127.0.0.1:{port}"
{tables}
"""


def acme(name: str, pebble: PebbleServer, hmac_file: Path | None = None) -> str:
    text = f"""
[acme.{name}]
directory = "{pebble.directory_url}"
ca_bundle = "{pebble.ca_bundle}"
trust_roots_url = "{pebble.roots_url}"
"""
    if hmac_file is not None:
        text += f'[acme.{name}.eab]\nkid = "kid-1"\nhmac_key_file = "{hmac_file}"\n'
    return text


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.pebble
def test_no_secret_in_any_log_or_audit_line(
    pebble_factory: PebbleFactory, short_tmp: Path, daemons: list[DaemonProcess]
) -> None:
    """Across CLI and daemon rotations (EAB and plain accounts, ECDSA and RSA keys, outputs, a
    rolled-back reload, a rejected EAB, a CA outage) no 16 consecutive characters of any private
    key, account key, EAB HMAC key or PKCS#12 password appear in stdout, stderr, the daemon log,
    the audit log or status.json."""
    hmac = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    wrong_hmac = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    eab_pebble = pebble_factory(eab_keys={"kid-1": hmac})
    plain = pebble_factory()
    state = short_tmp / "state"
    out = short_tmp / "out"
    hmac_file = secret_file(short_tmp / "eab.key", hmac + "\n")
    wrong_file = secret_file(short_tmp / "wrong-eab.key", wrong_hmac + "\n")
    p12_pw = secrets.token_urlsafe(24)
    pw_file = secret_file(short_tmp / "p12.pw", p12_pw + "\n")
    outputs = f"""
[[services.web.outputs]]
path = "{out}/web-combined.pem"
format = "combined"
[[services.web.outputs]]
path = "{out}/web.p12"
format = "pkcs12"
password_file = "{pw_file}"
[[services.web.outputs]]
path = "{out}/web.key"
format = "key"
[[services.web.outputs]]
path = "{out}/web-dir"
format = "directory"
"""
    failing_reload = """
[[services.flaky.reload]]
command = ["/bin/sh", "-c", "echo 'reload failed: config test error' >&2; exit 3"]
timeout = 5
"""
    eab_port, plain_port = eab_pebble.http_port, plain.http_port
    text = (
        f'[acme.pebble.eab]\nkid = "kid-1"\nhmac_key_file = "{hmac_file}"\n'
        + acme("plain", plain)
        + acme("badeab", eab_pebble, wrong_file)
        + svc("web", "pebble", eab_port, tables=outputs)
        + svc("api", "plain", plain_port, 'key_type = "rsa-2048"')
        + svc("flaky", "plain", plain_port, tables=failing_reload)
        + svc("noeab", "badeab", eab_port)
    )
    config = write_config(
        short_tmp / "r.toml",
        eab_pebble,
        state,
        text,
        'max_concurrent = 1\nkeep_versions = 50\nlog_format = "json"',
    )
    outputs_seen: list[str] = []

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        result = run_cli(config, *args)
        outputs_seen.extend([result.stdout, result.stderr])
        return result

    # Through the CLI: first issuance (flaky has no previous pair, noeab's EAB is rejected), then
    # a second forced round in which flaky's failing reload rolls back.
    assert cli("rotate", "--all", "--force").returncode == 1
    assert cli("rotate", "--all", "--force").returncode == 1
    cli("status", "--json")
    # Through the daemon: a manual rotation, then one while the plain account's CA is down.
    daemon = DaemonProcess(config, short_tmp)
    daemons.append(daemon)
    daemon.start()
    via_daemon = cli("rotate", "web", "api", "--force")
    assert via_daemon.returncode == 0, via_daemon.stderr
    assert "done by the running daemon" in via_daemon.stdout
    plain.pause()
    assert cli("rotate", "api", "--force").returncode == 1
    assert daemon.stop() == 0

    audit_path = state / "audit.jsonl"
    records = read_audit(audit_path)
    finished = {(r["service"], r["outcome"]) for r in events(records, "rotation_finished")}
    expected_outcomes = [
        ("web", "rotated"),
        ("api", "rotated"),
        ("api", "failed"),
        ("flaky", "failed"),  # first pair, no previous one to roll back to
        ("flaky", "rolled_back"),
        ("noeab", "failed"),
    ]
    for expected in expected_outcomes:
        assert expected in finished, (expected, finished)
    assert cli("audit", "verify").returncode == 0, "the CLI and the daemon kept one chain"

    index = SecretIndex()
    key_files = sorted(state.glob("services/*/versions/*/privkey.pem"))
    assert len(key_files) >= 7  # web 3, api 2 (RSA), flaky 2
    for path in key_files:
        pem = path.read_bytes()
        index.add_key_pem(str(path.relative_to(state)), pem)
        assert index.find(pem.decode()), f"scanner blind to {path}"  # positive control
    for account in ("pebble", "plain", "badeab"):
        index.add_key(f"account key {account}", account_key(state, account))
        d = json.loads((state / "accounts" / account / "key.json").read_text())["d"]
        index.add_text(f"account key {account} [d]", d)
        assert index.find((state / "accounts" / account / "key.json").read_text())
    for label, value in (("EAB HMAC key", hmac), ("wrong EAB HMAC key", wrong_hmac)):
        index.add_text(label, value)
        index.add_raw(label, b64url_decode(value))
    index.add_text("PKCS#12 password", p12_pw)

    sources: dict[str, str] = {f"CLI output {i}": t for i, t in enumerate(outputs_seen)}
    sources["daemon log"] = daemon.log_path.read_text()
    sources["audit log"] = audit_path.read_text()
    for status in state.glob("services/*/status.json"):
        sources[str(status.relative_to(state))] = status.read_text()
    leaks = {name: found for name, text in sources.items() if (found := index.find(text))}
    assert not leaks, f"secret material in logs: {leaks}"
    for name, text in sources.items():
        assert "PRIVATE KEY-----" not in text, name


@pytest.mark.pebble
@pytest.mark.parametrize(
    "script",
    [
        'cat "$ROTATORD_KEY" >&2; exit 3',
        'sed 1d "$ROTATORD_KEY" >&2; exit 3',
    ],
    ids=["whole-pem", "pem-body-only"],
)
def test_reload_stderr_never_carries_the_key_into_logs(
    pebble_server: PebbleServer, short_tmp: Path, script: str
) -> None:
    """A failing reload action that prints the new key on stderr still fails cleanly (rolled
    back, audited), and neither the audit log nor the CLI output holds any of the key."""
    state = short_tmp / "state"
    cfg = short_tmp / "r.toml"
    port = pebble_server.http_port
    write_config(cfg, pebble_server, state, svc("web", "pebble", port))
    first = run_cli(cfg, "rotate", "web", "--force")
    assert first.returncode == 0, first.stderr
    reload = f"""
[[services.web.reload]]
command = ["/bin/sh", "-c", {json.dumps(script)}]
timeout = 5
"""
    write_config(cfg, pebble_server, state, svc("web", "pebble", port, tables=reload))
    second = run_cli(cfg, "rotate", "web", "--force")
    records = read_audit(state / "audit.jsonl")
    index = SecretIndex()
    for path in state.glob("services/web/versions/*/privkey.pem"):
        index.add_key_pem(path.name, path.read_bytes())
    leaks = {
        name: found
        for name, text in {
            "stdout": second.stdout,
            "stderr": second.stderr,
            "audit": (state / "audit.jsonl").read_text(),
        }.items()
        if (found := index.find(text))
    }
    assert not leaks, f"secret material in logs: {leaks}"
    assert second.returncode == 1
    last = events(records, "rotation_finished", "web")[-1]
    assert last["outcome"] == "rolled_back", last
    assert events(records, "reload_failed", "web"), "the failed reload is on record"


# ============================================================================================
# 4. Reload actions get paths in their environment, never secrets
# ============================================================================================

ENV_DUMP = ("/bin/sh", "-c", 'env > "$OUT"')
PARENT_SECRET = "PARENT_SECRET_TOKEN"


def parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        assert sep, f"env dump line without '=' (a multi-line value?): {line!r}"
        env[name] = value
    return env


def check_reload_env(
    text: str, own: Mapping[str, str], current: Path, key_pem: bytes
) -> dict[str, str]:
    """Assert the dumped environment holds only the allowed names, paths and facts."""
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    index = SecretIndex()
    index.add_key_pem("service key", key_pem)
    assert not index.find(text), "key material in the reload action's environment"
    env = parse_env(text)
    allowed = {"PATH", "LC_ALL", *own, *SHELL_ADDED_ENV}
    extra = {k for k in env if k not in allowed and not k.startswith("ROTATORD_")}
    assert not extra, f"unexpected variables reached the action: {sorted(extra)}"
    assert PARENT_SECRET not in env
    for k, v in own.items():
        assert env[k] == v
    facts = {"ROTATORD_SERVICE", "ROTATORD_DOMAINS", "ROTATORD_VERSION"}
    for k, v in env.items():
        if k.startswith("ROTATORD_") and k not in facts:
            assert v.startswith("/"), f"{k}={v!r} is not a path"
    assert env["ROTATORD_KEY"] == str(current / "privkey.pem")
    assert Path(env["ROTATORD_KEY"]).read_bytes() == key_pem, "ROTATORD_KEY names the key file"
    return env


def test_reload_action_env_holds_only_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload action's environment is PATH, LC_ALL, ROTATORD_* paths and its own ``env`` —
    nothing inherited from rotatord's environment, no key material."""
    monkeypatch.setenv(PARENT_SECRET, "inherited-secret-value-0123456789")
    dump = tmp_path / "env.txt"
    action = CommandReload(argv=ENV_DUMP, env=MappingProxyType({"OUT": str(dump)}))
    spec = ServiceSpec(
        name="web",
        domains=("example.test",),
        account="acme",
        challenge=Http01Standalone(),
        reload=(action,),
    )
    store = ServiceStore(tmp_path / "state", "web")
    bundle = make_bundle()
    version = store.stage(bundle)
    store.activate(version)
    SubprocessReloader().run(action, reload_env(store, spec, version))
    env = check_reload_env(dump.read_text(), action.env, store.current_link, bundle.key_pem)
    assert env["ROTATORD_VERSION"] == version.name


@pytest.mark.pebble
def test_reload_action_env_holds_only_paths_e2e(
    pebble_server: PebbleServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a real CLI rotation the reload action sees only PATH, LC_ALL, ROTATORD_* paths and
    its own ``env``; the CLI's own environment (with a secret in it) does not reach it."""
    monkeypatch.setenv(PARENT_SECRET, "inherited-secret-value-0123456789")
    state = short_tmp / "state"
    dump = short_tmp / "env.txt"
    reload = f"""
[[services.web.reload]]
command = {json.dumps(list(ENV_DUMP))}
env = {{ OUT = "{dump}" }}
timeout = 5
"""
    cfg = write_config(
        short_tmp / "r.toml",
        pebble_server,
        state,
        svc("web", "pebble", pebble_server.http_port, tables=reload),
    )
    result = run_cli(cfg, "rotate", "web", "--force")
    assert result.returncode == 0, result.stderr
    current = state / "services" / "web" / "current"
    env = check_reload_env(
        dump.read_text(), {"OUT": str(dump)}, current, (current / "privkey.pem").read_bytes()
    )
    assert env["ROTATORD_SERVICE"] == "web"
    assert env["ROTATORD_VERSION"] == os.readlink(current).removeprefix("versions/")


# ============================================================================================
# 5. The control socket: born 0660, the caller is who the kernel says
# ============================================================================================


def test_control_socket_is_born_0660_under_umask_000(
    short_tmp: Path, umask000: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under umask 000 the control socket is 0660 the instant bind() creates it, and stays so."""
    path = short_tmp / "ctl.sock"
    born: list[int] = []
    original = control._Server.server_bind

    def bind_and_look(self: control._Server) -> None:
        original(self)
        born.append(mode_of(path))

    monkeypatch.setattr(control._Server, "server_bind", bind_and_look)
    server = ControlServer(path, lambda _req, _peer: {"ok": True})
    server.start()
    try:
        assert born == [0o660]
        assert mode_of(path) == 0o660
        assert control.request(path, {"verb": "ping"}, timeout=10) == {"ok": True}
    finally:
        server.stop()


def request_as(uid: int, gid: int, path: Path, message: dict[str, Any]) -> dict[str, Any]:
    """Send ``message`` from a forked child running as ``uid``:``gid`` (no supplementary
    groups); returns ``{"reply": ...}`` or ``{"error": ...}``."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() with threads running (the control server's); the
        # child only drops privileges and talks to the socket, then _exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                doc: dict[str, Any] = {"reply": control.request(path, message, timeout=10)}
            except ControlError as exc:
                doc = {"error": str(exc)}
            except OSError as exc:  # e.g. dropping privileges failed: report, do not die mute
                doc = {"error": f"child failed: {exc!r}"}
            os.write(w, json.dumps(doc).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks: list[bytes] = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


@requires_root
def test_control_peer_uid_is_the_kernels_word(short_tmp: Path) -> None:
    """The handler gets the caller's uid from SO_PEERCRED: a client running as nobody that
    claims uid 0 in its request is seen as nobody and refused; root's own request is allowed."""
    seen: list[Peer] = []

    def handler(req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        seen.append(peer)
        if peer.uid != 0:
            return {"ok": False, "error": f"uid {peer.uid} is not allowed"}
        return {"ok": True, "uid": peer.uid}

    short_tmp.chmod(0o755)  # let nobody reach the socket; its group decides the rest
    path = short_tmp / "ctl.sock"
    server = ControlServer(path, handler, group=NOGROUP)
    server.start()
    try:
        uid, gid = nobody_ids()
        assert os.lstat(path).st_gid == gid
        theirs = request_as(uid, gid, path, {"verb": "rotate", "uid": 0, "pid": 1})
        mine = control.request(path, {"verb": "ping"}, timeout=10)
    finally:
        server.stop()
    assert theirs == {"reply": {"ok": False, "error": f"uid {uid} is not allowed"}}
    assert mine == {"ok": True, "uid": 0}
    assert [p.uid for p in seen] == [uid, 0]
    assert seen[1] == Peer(os.getpid(), os.getuid(), os.getgid())


@requires_root
def test_control_socket_refuses_users_outside_its_group(short_tmp: Path) -> None:
    """Without the socket's group a local user cannot even connect (0660), so the handler never
    runs."""
    calls: list[Peer] = []

    def handler(_req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        calls.append(peer)
        return {"ok": True}

    short_tmp.chmod(0o755)
    path = short_tmp / "ctl.sock"
    server = ControlServer(path, handler)
    server.start()
    try:
        uid, gid = nobody_ids()
        theirs = request_as(uid, gid, path, {"verb": "ping"})
    finally:
        server.stop()
    assert "permission denied" in theirs.get("error", ""), theirs
    assert calls == []


def test_daemon_refuses_control_from_uid_not_allowed(short_tmp: Path) -> None:
    """The daemon's control handler behind a real socket refuses a caller whose (kernel) uid is
    not in control_allowed_uids, audits the refusal with that uid, and does no work."""
    state = short_tmp / "state"
    cfg = short_tmp / "r.toml"
    cfg.write_text(
        f"""
[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
control_socket = "{short_tmp}/ctl.sock"
control_allowed_uids = [54321]

[acme.pebble]
directory = "https://127.0.0.1:9/dir"
"""
        + svc("web", "pebble", 5002)
    )
    config = load_config(cfg)
    clock = FakeClock()
    audit = AuditLog(state / "audit.jsonl", clock, echo=False)
    rotator = build_rotator(config, clock, audit=audit)
    scheduled: list[str] = []
    loop = ServiceLoop(
        rotator,
        Planner(rotator, clock),
        clock,
        audit,
        lambda name, _at, _trigger: scheduled.append(name),
        lambda job, _fn: scheduled.append(job),
    )
    verbs = Verbs(lambda: config, loop, lambda _uid: {"ok": True})
    path = short_tmp / "ctl.sock"
    server = ControlServer(path, verbs.handle)
    server.start()
    try:
        reply = control.request(path, {"verb": "rotate", "service": "web", "force": True}, 10)
    finally:
        server.stop()
        rotator.close()
    assert scheduled == []
    assert reply["ok"] is False and reply.get("code") == "forbidden", reply
    records = read_audit(state / "audit.jsonl")
    assert [(r["event"], r["uid"], r["allowed"]) for r in records] == [
        ("control_request", os.getuid(), False)
    ]
    assert not (state / "services").exists(), "no rotation work was started"


# ============================================================================================
# 6. One daemon per state directory
# ============================================================================================


def test_daemon_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    """While one DaemonLock holds a state dir, a second acquire raises RotatordError; after
    release it succeeds."""
    state = tmp_path / "state"
    first = DaemonLock(state)
    first.acquire()
    try:
        with pytest.raises(RotatordError, match="another rotatord daemon"):
            DaemonLock(state).acquire()
    finally:
        first.release()
    again = DaemonLock(state)
    again.acquire()
    again.release()


def test_daemon_lock_refuses_another_process(tmp_path: Path) -> None:
    """While this process holds the DaemonLock, a DaemonLock in another process is refused."""
    state = tmp_path / "state"
    lock = DaemonLock(state)
    lock.acquire()
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from rotatord.core.errors import RotatordError\nfrom rotatord.daemon import DaemonLock\n"
        "try:\n    DaemonLock(Path(sys.argv[1])).acquire()\n"
        "except RotatordError as exc:\n    print(exc)\n    sys.exit(7)\n"
    )
    try:
        child = subprocess.run(
            [sys.executable, "-c", code, str(state)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        lock.release()
    assert child.returncode == 7, child.stdout + child.stderr
    assert "another rotatord daemon" in child.stdout
