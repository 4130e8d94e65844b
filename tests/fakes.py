"""In-memory fakes for rotatord's ports: a CA (``Issuer``), a reloader, a prober and a
fault-injecting ``FsOps``.

They let rotation, scheduling and recovery tests run without Pebble, subprocesses or TLS servers,
and let a test script the exact failure it is about. Every fake records what it was asked, is
safe to call from several threads (rotations run in a pool) and raises only the typed errors the
real adapter's contract allows, so code that passes against a fake is exercising the same branches
it would take in production.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from errno import EIO, ENOSPC, EROFS, errorcode
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rotatord.core import keys
from rotatord.core.errors import IssuanceError, ReloadError, RotatordError
from rotatord.core.model import Challenge, ProbeSpec, ReloadAction
from rotatord.deploy import probe as probe_mod
from rotatord.deploy.probe import ProbeResult
from rotatord.deploy.reload import ReloadResult, describe
from rotatord.fsutil import FsOps
from rotatord.issuing import IssuedCertificate, RenewalInfo
from tests.certs import CertificateAuthority, cert_to_pem, default_ca, make_ca

ACME = "urn:ietf:params:acme:error:"
BadMode = Literal["wrong_key", "wrong_names", "unrelated_ca", "expired"]


class NowClock(Protocol):
    """What FakeCA needs from a clock (``FakeClock`` and ``SystemClock`` both qualify)."""

    def now(self) -> datetime: ...


# --------------------------------------------------------------------------------------------
# FakeCA
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRecord:
    """One call of ``FakeCA.issue``, whatever its outcome."""

    at: datetime  # the fake clock when the order arrived (before any ``delay``)
    names: tuple[str, ...]
    replaces: str | None
    outcome: Literal["issued", "failed"]
    serial: int | None = None
    error: BaseException | None = None
    number: int = 0  # 1-based order number, as passed to ``before_issue``
    bad: BadMode | None = None  # the bad-response mode this certificate was issued under


def _leaf(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    names: Sequence[str],
    not_before: datetime,
    not_after: datetime,
    serial: int,
) -> x509.Certificate:
    # Not tests.certs.issue_leaf: a CA's leaves carry an AKI, which RFC 9773 ARI ids need
    # (keys.ari_cert_id returns None without one), and the CSR's key may be any public key.
    short = len(names[0]) <= 64
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])] if short else [])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=not short
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


DEFAULT_DIRECTORY = "https://fake-ca.test/directory"


class FakeCA:
    """An in-memory ACME CA implementing the ``Issuer`` protocol.

    Guarantees: ``issue`` either returns a leaf for exactly the CSR's public key and names,
    signed by ``ca``'s intermediate, valid from ``clock.now() - backdate`` for ``lifetime``, with
    ``chain_pem`` = the intermediate; or raises ``IssuanceError`` (never anything else, except
    what a test's own ``before_issue`` hook raises). Serials are unique, positive and 63 bits.
    Every order is appended to ``orders`` (issued or failed). All methods are thread-safe.

    Faults, checked in this order on each order after ``before_issue`` and ``delay``:
    ``down``; ``rate_limit`` (until the clock reaches its ``retry_after``); ``fail_next``
    (FIFO); a bad CSR or a CSR/``names`` mismatch (``badCSR``). ``bad`` then spoils the next
    certificate that would have been issued (one shot). ``down`` also fails ``revoke``.
    """

    def __init__(
        self,
        clock: NowClock,
        lifetime: timedelta = timedelta(days=90),
        directory_url: str = DEFAULT_DIRECTORY,
        ca: CertificateAuthority | None = None,
        *,
        backdate: timedelta = timedelta(0),
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.lifetimes: dict[str, timedelta] = {}  # per first name; else ``lifetime``
        self.backdate_fraction = 0.0  # of each certificate's own lifetime, on top of ``backdate``
        self.directory_url = directory_url
        self.ca = ca if ca is not None else default_ca()
        self.backdate = backdate
        # Scriptable faults (plain attributes: tests flip them between or during orders).
        self.down = False
        self.delay = timedelta(0)
        self.bad: BadMode | None = None  # the next order only
        self.bad_always: BadMode | None = None  # every order until cleared
        self.before_issue: Callable[[int], None] | None = None
        self.rate_limited_until: datetime | None = None
        # ARI
        self.ari = False
        self.window: RenewalInfo | None = None
        self.ari_error: IssuanceError | None = None  # raised by renewal_info while ari is True
        # Records
        self.orders: list[OrderRecord] = []
        self.revoked: list[tuple[int, int]] = []
        self.ari_queries: list[str] = []
        self._issued: list[x509.Certificate] = []
        self._by_ari_id: dict[str, x509.Certificate] = {}
        self._replaced: set[str] = set()
        self._failures: deque[IssuanceError] = deque()
        self._unrelated: CertificateAuthority | None = None
        self._order_seq = 0
        self.profiles_seen: list[str | None] = []
        # Random start, then +1: unique within this CA (also in the low 32 bits the store uses
        # to name version dirs) and unlikely to collide with another FakeCA on the same store.
        self._next_serial = (1 << 62) | secrets.randbits(61)
        # RLock: a hook or a test may call back into the CA from a thread that holds it.
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- scripting

    def seed_serials(self, bits: int) -> None:
        """Start serials at a chosen point (the simulator: serials feed the renewal jitter, so a
        seed must fix them for a run to reproduce)."""
        with self._lock:
            self._next_serial = (1 << 62) | (bits & ((1 << 61) - 1))

    def rate_limit(self, retry_after: datetime) -> None:
        """Refuse orders with ``rateLimited`` (429) until the clock reaches ``retry_after``."""
        self.rate_limited_until = retry_after

    def fail_next(self, n: int, error: IssuanceError) -> None:
        """Make the next ``n`` orders (after the earlier scripted ones) raise ``error``."""
        with self._lock:
            self._failures.extend([error] * n)

    def set_window(
        self,
        start: datetime,
        end: datetime,
        retry_after: datetime | None = None,
        explanation_url: str | None = None,
    ) -> None:
        """Advertise ARI and suggest this renewal window for every certificate."""
        self.ari = True
        self.window = RenewalInfo(start, end, retry_after, explanation_url)

    @property
    def unrelated_ca(self) -> CertificateAuthority:
        """The CA that signs ``bad = "unrelated_ca"`` certificates (made on first use)."""
        with self._lock:
            if self._unrelated is None:
                self._unrelated = make_ca("unrelated")
            return self._unrelated

    # ---------------------------------------------------------------- records

    @property
    def order_count(self) -> int:
        return len(self.orders)

    @property
    def issued_count(self) -> int:
        return len(self._issued)

    @property
    def issued(self) -> list[x509.Certificate]:
        """Every leaf handed out, bad ones included, in issue order (a copy)."""
        with self._lock:
            return list(self._issued)

    # ---------------------------------------------------------------- Issuer

    def issue(
        self,
        csr_pem: bytes,
        names: Sequence[str],
        challenge: Challenge,
        *,
        replaces: str | None = None,
        profile: str | None = None,
    ) -> IssuedCertificate:
        with self._lock:
            self.profiles_seen.append(profile)
            self._order_seq += 1
            number = self._order_seq
        at = self.clock.now()
        try:
            # Outside the lock: the hook may block, sleep or drive other threads.
            if self.before_issue is not None:
                self.before_issue(number)
            advance = getattr(self.clock, "advance", None)
            if self.delay and callable(advance):
                advance(self.delay)  # a slow CA: the order takes this long on the fake clock
            with self._lock:
                issued, serial, bad = self._issue_locked(csr_pem, names, replaces, number)
        except BaseException as exc:
            with self._lock:
                self.orders.append(
                    OrderRecord(at, tuple(names), replaces, "failed", None, exc, number)
                )
            raise
        with self._lock:
            self.orders.append(
                OrderRecord(at, tuple(names), replaces, "issued", serial, None, number, bad)
            )
        return issued

    def _issue_locked(
        self, csr_pem: bytes, names: Sequence[str], replaces: str | None, number: int
    ) -> tuple[IssuedCertificate, int, BadMode | None]:
        now = self.clock.now()
        self._raise_if_down()
        if self.rate_limited_until is not None:
            if now < self.rate_limited_until:
                raise IssuanceError(
                    f"too many certificates; retry after {self.rate_limited_until.isoformat()}",
                    retryable=True,
                    problem_type=ACME + "rateLimited",
                    status=429,
                    retry_after=self.rate_limited_until,
                )
            self.rate_limited_until = None  # the limit has lifted, as a real CA's does
        if self._failures:
            # A fresh traceback each time: the same instance may be raised n times.
            raise self._failures.popleft().with_traceback(None)
        csr = self._parse_csr(csr_pem, names)
        bad, self.bad = self.bad or self.bad_always, None
        ca = self.unrelated_ca if bad == "unrelated_ca" else self.ca
        public_key = csr.public_key()
        leaf_names: Sequence[str] = names
        lifetime = self.lifetimes.get(names[0], self.lifetime)
        not_before = now - self.backdate - lifetime * self.backdate_fraction
        if bad == "wrong_key":
            public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        elif bad == "wrong_names":
            leaf_names = [f"wrong.{n}" for n in names]
        elif bad == "expired":
            not_before = now - lifetime - timedelta(days=1)
        serial = self._next_serial
        self._next_serial += 1
        leaf = _leaf(ca, public_key, leaf_names, not_before, not_before + lifetime, serial)
        self._issued.append(leaf)
        ari_id = keys.ari_cert_id(leaf)
        if ari_id is not None:
            self._by_ari_id[ari_id] = leaf
        # Like a real CA: "replaces" counts only with ARI, and only once per certificate (a
        # second order naming it would get alreadyReplaced, and the issuer retries without it).
        accepted = None
        if replaces is not None and self.ari and replaces not in self._replaced:
            self._replaced.add(replaces)
            accepted = replaces
        order_url = f"{self.directory_url.removesuffix('/directory')}/order/{number}"
        # unrelated_ca returns that CA's own intermediate: a self-consistent chain that only a
        # trust-anchor check can reject.
        issued = IssuedCertificate(cert_to_pem(leaf), ca.chain_pem, order_url, accepted)
        return issued, serial, bad

    def _parse_csr(self, csr_pem: bytes, names: Sequence[str]) -> x509.CertificateSigningRequest:
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            signed = csr.is_signature_valid
        except ValueError as exc:
            raise IssuanceError(
                f"unreadable CSR: {exc}", retryable=False, problem_type=ACME + "badCSR", status=400
            ) from exc
        if not signed:
            raise IssuanceError(
                "CSR signature invalid", retryable=False, problem_type=ACME + "badCSR", status=400
            )
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            got = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
        except x509.ExtensionNotFound:
            got = set()
        want = {n.lower() for n in names}
        if got != want:
            raise IssuanceError(
                f"CSR names {sorted(got)} differ from the order's {sorted(want)}",
                retryable=False,
                problem_type=ACME + "badCSR",
                status=400,
            )
        return csr

    def _raise_if_down(self) -> None:
        if self.down:
            raise IssuanceError("CA unreachable", retryable=True, status=None)

    def ari_supported(self) -> bool:
        return self.ari

    def renewal_info(self, cert_id: str) -> RenewalInfo | None:
        """None without ARI; else ``ari_error`` if set, the ``set_window`` window if set, else a
        window over 2/3..5/6 of the lifetime of a certificate this CA issued (404 if unknown)."""
        with self._lock:
            self.ari_queries.append(cert_id)
            if not self.ari:
                return None
            if self.ari_error is not None:
                raise self.ari_error.with_traceback(None)
            if self.window is not None:
                return self.window
            cert = self._by_ari_id.get(cert_id)
        if cert is None:
            raise IssuanceError(
                f"unknown certificate {cert_id}",
                retryable=False,
                problem_type=ACME + "malformed",
                status=404,
            )
        start = cert.not_valid_before_utc
        life = cert.not_valid_after_utc - start
        return RenewalInfo(start + life * 2 / 3, start + life * 5 / 6)

    def revoke(self, cert_pem: bytes, reason: int) -> None:
        """Record ``(serial, reason)``. Refuses (IssuanceError, not retryable) a certificate not
        signed by ``ca`` (``unauthorized``) and a second revocation (``alreadyRevoked``)."""
        with self._lock:
            self._raise_if_down()
            try:
                cert = x509.load_pem_x509_certificate(cert_pem)
            except ValueError as exc:
                raise IssuanceError(
                    "unreadable certificate", retryable=False, problem_type=ACME + "malformed"
                ) from exc
            try:
                cert.verify_directly_issued_by(self.ca.cert)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise IssuanceError(
                    "certificate not issued by this CA",
                    retryable=False,
                    problem_type=ACME + "unauthorized",
                    status=403,
                ) from exc
            if any(serial == cert.serial_number for serial, _ in self.revoked):
                raise IssuanceError(
                    "certificate already revoked",
                    retryable=False,
                    problem_type=ACME + "alreadyRevoked",
                    status=400,
                )
            self.revoked.append((cert.serial_number, reason))


# --------------------------------------------------------------------------------------------
# RecordingReloader
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReloadCall:
    """One ``RecordingReloader.run`` call."""

    action: str  # rotatord.deploy.reload.describe(action)
    env: dict[str, str]
    version: str | None  # env["ROTATORD_VERSION"], if present
    service: str | None = None  # env["ROTATORD_SERVICE"], if present
    error: BaseException | None = None  # what run raised, None when it succeeded


class RecordingReloader:
    """A ``Reloader`` that runs nothing, records every call and models the server it reloads.

    Guarantees: every call is appended to ``calls`` (failed ones with their error); it raises
    only ``ReloadError`` (or whatever ``on_run`` raises); scripted failures from ``fail_next`` and
    ``timeout_next`` are consumed FIFO, one per call, after ``on_run``. After a successful call
    whose env names a service, ``served_version``/``served_dir`` for it become the env's
    ROTATORD_VERSION / ROTATORD_VERSION_DIR, unless ``stuck`` (a server that reports success but
    keeps the old certificate). Thread-safe.
    """

    def __init__(self) -> None:
        self.calls: list[ReloadCall] = []
        self.on_run: Callable[[ReloadAction, Mapping[str, str]], None] | None = None
        self.stuck = False
        self.served_version: dict[str, str | None] = {}
        self.served_dir: dict[str, str | None] = {}
        # (returncode, timed_out, stderr) per scripted failure
        self._script: deque[tuple[int | None, bool, str]] = deque()
        self._lock = threading.Lock()

    def fail_next(self, n: int, returncode: int = 1, stderr: str = "reload failed") -> None:
        with self._lock:
            self._script.extend([(returncode, False, stderr)] * n)

    def timeout_next(self, n: int) -> None:
        with self._lock:
            self._script.extend([(None, True, "")] * n)

    @property
    def versions(self) -> list[str | None]:
        """ROTATORD_VERSION of every call, in order."""
        with self._lock:
            return [c.version for c in self.calls]

    def service_for(self, sni: str) -> str | None:
        """The service whose latest call listed ``sni`` in ROTATORD_DOMAINS (or named ``sni``)."""
        with self._lock:
            for call in reversed(self.calls):
                domains = call.env.get("ROTATORD_DOMAINS", "").split(",")
                if call.service is not None and (sni in domains or sni == call.service):
                    return call.service
        return None

    def run(self, action: ReloadAction, env: Mapping[str, str]) -> ReloadResult:
        desc = describe(action)
        env_copy = dict(env)  # the caller may reuse its dict; keep what this call saw
        service = env_copy.get("ROTATORD_SERVICE")
        version = env_copy.get("ROTATORD_VERSION")
        try:
            if self.on_run is not None:
                self.on_run(action, env)
            with self._lock:
                scripted = self._script.popleft() if self._script else None
            if scripted is not None:
                returncode, timed_out, stderr = scripted
                if timed_out:
                    raise ReloadError(f"{desc}: timed out", timed_out=True)
                raise ReloadError(
                    f"{desc}: exited with status {returncode}",
                    returncode=returncode,
                    stderr_tail=stderr,
                )
        except BaseException as exc:
            with self._lock:
                self.calls.append(ReloadCall(desc, env_copy, version, service, exc))
            raise
        with self._lock:
            self.calls.append(ReloadCall(desc, env_copy, version, service))
            if service is not None and not self.stuck:
                self.served_version[service] = version
                self.served_dir[service] = env_copy.get("ROTATORD_VERSION_DIR")
        return ReloadResult(desc, 0)


# --------------------------------------------------------------------------------------------
# FakeProber
# --------------------------------------------------------------------------------------------

ServedFn = Callable[[ProbeSpec, str], str | None]


@dataclass(frozen=True)
class ProbeCall:
    """One ``FakeProber.probe`` call and what it returned."""

    spec: ProbeSpec
    sni: str
    expected: str
    deadline_s: float
    result: ProbeResult


class FakeProber:
    """A ``Prober`` that asks ``served(spec, sni)`` for the fingerprint "on the wire".

    Guarantees: returns at once (no retries, ``attempts == 1``); ``ok`` exactly when ``served``
    returned ``expected`` (SHA-256 of the leaf DER, lower-case hex, as keys.cert_fingerprint);
    an OSError or RotatordError from ``served`` becomes a not-ok result, like a failed handshake.
    Every call is appended to ``calls``. Thread-safe.
    """

    def __init__(self, served: ServedFn) -> None:
        self.served = served
        self.calls: list[ProbeCall] = []
        self._lock = threading.Lock()

    def probe(self, spec: ProbeSpec, sni: str, expected: str, deadline_s: float) -> ProbeResult:
        error: str | None = None
        fingerprint: str | None = None
        try:
            fingerprint = self.served(spec, sni)
        except (OSError, RotatordError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None and fingerprint != expected:
            error = "nothing served" if fingerprint is None else "served a different certificate"
        result = ProbeResult(error is None, probe_mod.describe(spec), fingerprint, 1, error)
        with self._lock:
            self.calls.append(ProbeCall(spec, sni, expected, deadline_s, result))
        return result


def served_from_reloader(
    reloader: RecordingReloader, services: Mapping[str, str] | None = None
) -> ServedFn:
    """A ``served`` callable for FakeProber: the fingerprint of the first certificate in
    ``cert.pem`` of the version dir the reloader last (successfully) loaded for the service.

    The service is ``services[sni]`` if given, else found from ROTATORD_DOMAINS of the
    reloader's calls. None when nothing was loaded. A dir's fingerprint is cached on first read,
    like a server that keeps its certificate in memory after the files are pruned.
    """
    cache: dict[str, str | None] = {}

    def served(spec: ProbeSpec, sni: str) -> str | None:
        service = (services or {}).get(sni) or reloader.service_for(sni)
        directory = reloader.served_dir.get(service) if service is not None else None
        if directory is None:
            return None
        if directory not in cache:
            try:
                pem = (Path(directory) / "cert.pem").read_bytes()
            except FileNotFoundError:
                return None
            chain = keys.split_pem_chain(pem)
            cache[directory] = keys.cert_fingerprint(chain[0]) if chain else None
        return cache[directory]

    return served


# --------------------------------------------------------------------------------------------
# FaultyFsOps
# --------------------------------------------------------------------------------------------

FS_METHODS = frozenset(
    [
        "mkdir",
        "open_excl",
        "write",
        "fsync",
        "fsync_dir",
        "rename",
        "symlink",
        "replace",
        "open_lock",
    ]
)
# The ops that need free space / a writable filesystem (fsyncs of what exists do not).
WRITE_METHODS = FS_METHODS - {"fsync", "fsync_dir"}


@dataclass
class _Once:
    method: str
    errno: int
    path_contains: str | None = None


class FaultyFsOps(FsOps):
    """``FsOps`` with scriptable failures; with no fault set it is exactly ``FsOps``.

    Guarantees: every method is counted in ``calls`` (failing calls too) and a fault raises a
    plain ``OSError`` (with errno and path) *before* the real syscall, so nothing is half done.
    Precedence per call: a matching ``fail_once`` (consumed, FIFO), then ``eio_at`` (EIO every
    time), then ``read_only`` (EROFS from every write-ish op, including ``open_lock`` of an
    existing file, since O_RDWR fails on a read-only fs), then ``full`` (ENOSPC from every
    write-ish op, except ``open_lock``/``mkdir`` of an existing path, which allocate nothing).
    Write-ish: ``WRITE_METHODS`` (all but fsync/fsync_dir). Each fault raised is logged in
    ``fired``. Thread-safe.
    """

    def __init__(
        self, *, full: bool = False, read_only: bool = False, eio_at: Iterable[str] = ()
    ) -> None:
        self.full = full
        self.read_only = read_only
        self.eio_at: set[str] = set(eio_at)
        self.calls: Counter[str] = Counter()
        self.fired: list[str] = []
        self._once: list[_Once] = []
        self._fd_paths: dict[int, Path] = {}  # so write/fsync faults can match a path
        self._lock = threading.Lock()

    def fail_once(self, method: str, errno: int, path_contains: str | None = None) -> None:
        """The next ``method`` call (touching a path containing ``path_contains``) fails."""
        if method not in FS_METHODS:
            raise ValueError(f"unknown FsOps method {method!r}")
        with self._lock:
            self._once.append(_Once(method, errno, path_contains))

    def _check(self, method: str, *paths: Path | None, creates: bool = True) -> None:
        with self._lock:
            self.calls[method] += 1
            code: int | None = None
            for once in self._once:
                hit = once.path_contains is None or any(
                    p is not None and once.path_contains in str(p) for p in paths
                )
                if once.method == method and hit:
                    self._once.remove(once)
                    code = once.errno
                    break
            if code is None and method in self.eio_at:
                code = EIO
            elif code is None and method in WRITE_METHODS and self.read_only:
                code = EROFS
            elif code is None and method in WRITE_METHODS and self.full and creates:
                code = ENOSPC
            if code is None:
                return
            shown = next((str(p) for p in paths if p is not None), None)
            self.fired.append(f"{method} {shown} {errorcode.get(code, code)}")
        raise OSError(code, os.strerror(code), shown)

    def mkdir(self, path: Path, mode: int) -> None:
        # An existing path gets the real EEXIST on a full disk (the kernel looks up first).
        self._check("mkdir", path, creates=not os.path.lexists(path))
        super().mkdir(path, mode)

    def open_excl(self, path: Path, mode: int, uid: int = -1, gid: int = -1) -> int:
        self._check("open_excl", path)
        fd = super().open_excl(path, mode, uid, gid)
        with self._lock:
            self._fd_paths[fd] = path
        return fd

    def write(self, fd: int, data: bytes) -> None:
        self._check("write", self._fd_paths.get(fd))
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._check("fsync", self._fd_paths.get(fd))
        super().fsync(fd)

    def fsync_dir(self, path: Path) -> None:
        self._check("fsync_dir", path)
        super().fsync_dir(path)

    def rename(self, src: Path, dst: Path) -> None:
        self._check("rename", src, dst)
        super().rename(src, dst)

    def symlink(self, target: str, path: Path) -> None:
        self._check("symlink", path)
        super().symlink(target, path)

    def replace(self, src: Path, dst: Path) -> None:
        self._check("replace", src, dst)
        super().replace(src, dst)

    def open_lock(self, path: Path) -> int:
        self._check("open_lock", path, creates=not os.path.lexists(path))
        fd = super().open_lock(path)
        with self._lock:
            self._fd_paths[fd] = path
        return fd
