"""DNS-01 (RFC 8555 §8.4): a TXT record at ``_acme-challenge.<domain>``, checked, then removed.

One job: the ``Solver`` for ``Dns01``. ``present`` works out where the record goes (the
effective name after CNAMEs, and its zone from the SOA walk, see ``dns_lookup``) and has the
provider add it; ``wait_visible`` polls every authoritative server of that zone; ``cleanup``
has the provider remove exactly the value it added. Records are *added* to the RRset, never
replaced: a wildcard and its apex in one order put two values at one name, and a concurrent
order for the same name may hold a third.

Providers:

* ``Rfc2136Provider`` — UPDATE messages (RFC 2136) signed with TSIG (RFC 8945), sent over TCP
  to the configured primary. The key file (``tsig-keygen`` format) is read here and only here;
  its secret never appears in a message or a log line.
* ``ExecProvider`` — lego's ``exec`` contract, so existing scripts work: ``argv present
  <FQDN.> <value>`` / ``argv cleanup <FQDN.> <value>``, where FQDN is the effective name with
  its trailing dot; with ``raw``: ``argv present -- <domain> <token> <key_authorization>``.
  Run as an argv (never a shell) by ``deploy.reload``'s runner: an explicit environment (a fixed
  PATH, ``EXEC_PATH``, ``EXEC_MODE`` when raw, and the configured ``env``, which is never
  logged), a timeout that kills the process group, no stdin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.update

from rotatord.clock import Clock
from rotatord.core.dns01 import Dns01, ExecHook, Rfc2136
from rotatord.core.errors import IssuanceError, ReloadError
from rotatord.core.model import CommandReload
from rotatord.deploy.reload import SubprocessReloader
from rotatord.issuing.challenges.dns_lookup import DnsLookups
from rotatord.observe.logging import get_logger

if TYPE_CHECKING:  # solver.py builds this solver; only its type is needed here
    from rotatord.issuing.challenges.solver import ChallengeTask

log = get_logger("rotatord.issuing")

MAX_KEY_FILE_BYTES = 64 * 1024
_KEY_RE = re.compile(r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;', re.S)
_ALGORITHM_RE = re.compile(r"algorithm\s+\"?([A-Za-z0-9-]+)\"?\s*;")
_SECRET_RE = re.compile(r'secret\s+"([A-Za-z0-9+/=\s]+)"\s*;')
#: What BIND's tsig-keygen offers (RFC 8945 §6); a typo is caught before the first UPDATE.
TSIG_ALGORITHMS = frozenset(
    {"hmac-md5", "hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"}
)


def txt_value(key_authorization: str) -> str:
    """base64url(SHA-256(key authorization)), unpadded (RFC 8555 §8.4)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Record:
    """Where one task's TXT value lives."""

    domain: str  # the identifier, without "*."
    name: dns.name.Name  # the effective name (after CNAMEs), absolute
    zone: dns.name.Name | None  # None: not needed to write it (exec hooks)
    value: str


class DnsProvider(Protocol):
    """Adds and removes one TXT value. Both raise ``IssuanceError``; ``remove`` of a value
    that is not there succeeds."""

    def add(self, record: Record, task: ChallengeTask) -> None: ...

    def remove(self, record: Record, task: ChallengeTask) -> None: ...


def load_tsig_key(path: Path, where: str) -> dns.tsig.Key:
    """The first ``key "name" { algorithm ...; secret "..."; };`` in ``path``."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise IssuanceError(
            f"{where}: cannot read tsig_key_file {str(path)!r}: {exc.strerror}", retryable=False
        ) from None
    text = raw.decode("ascii", "replace")
    match = _KEY_RE.search(text) if len(raw) <= MAX_KEY_FILE_BYTES else None
    algorithm = _ALGORITHM_RE.search(match.group(2)) if match else None
    secret = _SECRET_RE.search(match.group(2)) if match else None
    if (
        match is None
        or algorithm is None
        or secret is None
        or algorithm.group(1).lower() not in TSIG_ALGORITHMS
    ):
        # Never quote the file: it holds the secret.
        raise IssuanceError(
            f'{where}: tsig_key_file {str(path)!r} holds no \'key "NAME" {{ algorithm ALG; '
            'secret "BASE64"; }};\' statement (the format tsig-keygen writes) with ALG one of '
            + ", ".join(sorted(TSIG_ALGORITHMS)),
            retryable=False,
        )
    try:
        return dns.tsig.Key(
            match.group(1), "".join(secret.group(1).split()), algorithm.group(1).lower()
        )
    except (dns.exception.DNSException, ValueError):
        raise IssuanceError(
            f"{where}: tsig_key_file {str(path)!r}: unusable key (algorithm or secret)",
            retryable=False,
        ) from None


class Rfc2136Provider:
    """Dynamic updates signed with TSIG, to one primary."""

    def __init__(self, spec: Rfc2136, where: str) -> None:
        self._spec = spec
        self._where = where
        self._key = load_tsig_key(spec.tsig_key_file, where)

    def _update(self, record: Record) -> dns.update.UpdateMessage:
        if record.zone is None:  # Dns01Solver always finds it for rfc2136
            raise IssuanceError(f"{self._where}: no zone for {record.name}", retryable=False)
        return dns.update.UpdateMessage(record.zone, keyring=self._key)

    def add(self, record: Record, task: ChallengeTask) -> None:
        update = self._update(record)
        update.add(record.name, self._spec.ttl, "TXT", f'"{record.value}"')
        self._send(update, f"add TXT {record.name}")

    def remove(self, record: Record, task: ChallengeTask) -> None:
        update = self._update(record)
        update.delete(record.name, "TXT", f'"{record.value}"')
        self._send(update, f"delete TXT {record.name}")

    def _send(self, update: dns.update.UpdateMessage, what: str) -> None:
        host, port = self._spec.server
        try:
            response = dns.query.tcp(update, host, port=port, timeout=self._spec.timeout_seconds)
        except (dns.exception.DNSException, OSError) as exc:
            # TSIG failures (BADKEY, BADSIG, BADTIME) arrive as dns.tsig exceptions.
            raise IssuanceError(
                f"{self._where}: {what} at {host}:{port} failed: {type(exc).__name__}",
                retryable=not isinstance(exc, dns.tsig.PeerError),
            ) from None
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = ""
            if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
                hint = " (does the zone's update-policy grant this TSIG key TXT updates?)"
            elif rcode == dns.rcode.NOTZONE:
                hint = " (the name is not in the zone; set 'zone' or fix the resolvers)"
            raise IssuanceError(
                f"{self._where}: {what} at {host}:{port} refused: {dns.rcode.to_text(rcode)}{hint}",
                retryable=rcode == dns.rcode.SERVFAIL,
            )


class ExecProvider:
    """lego's ``exec`` provider contract, run without a shell."""

    def __init__(self, spec: ExecHook, where: str) -> None:
        self._spec = spec
        self._where = where
        self._runner = SubprocessReloader()

    def add(self, record: Record, task: ChallengeTask) -> None:
        self._run("present", record, task)

    def remove(self, record: Record, task: ChallengeTask) -> None:
        self._run("cleanup", record, task)

    def _run(self, action: str, record: Record, task: ChallengeTask) -> None:
        if self._spec.raw:
            args = [action, "--", record.domain, task.token, task.key_authorization]
        else:
            args = [action, record.name.to_text(), record.value]
        env = {"EXEC_PATH": self._spec.argv[0], **({"EXEC_MODE": "RAW"} if self._spec.raw else {})}
        env.update(self._spec.env)
        command = CommandReload(
            argv=(*self._spec.argv, *args), timeout_seconds=self._spec.timeout_seconds, env=env
        )
        try:
            self._runner.run(command, {})
        except ReloadError as exc:
            # The message names the program and the action, never the environment.
            status = "timed out" if exc.timed_out else f"exited with status {exc.returncode}"
            tail = exc.stderr_tail.strip()[-400:]
            raise IssuanceError(
                f"{self._where}: exec hook {self._spec.argv[0]!r} {action} {record.name} "
                f"{status}" + (f": {tail}" if tail else ""),
                retryable=True,
            ) from None


class Dns01Solver:
    """The ``Solver`` for one order's DNS-01 challenges."""

    challenge_type = "dns-01"

    def __init__(self, spec: Dns01, clock: Clock) -> None:
        self._spec = spec
        self._lookups = DnsLookups(spec.lookup, clock, spec.where)
        self._provider: DnsProvider = (
            Rfc2136Provider(spec.provider, spec.where)
            if isinstance(spec.provider, Rfc2136)
            else ExecProvider(spec.provider, spec.where)
        )
        self._records: dict[str, Record] = {}  # by token

    def _record(self, task: ChallengeTask) -> Record:
        if task.identifier_type != "dns":
            raise IssuanceError(
                f"{self._spec.where}: dns-01 cannot validate the {task.identifier_type} "
                f"identifier {task.identifier}",
                retryable=False,
            )
        try:
            base = dns.name.from_text(f"_acme-challenge.{task.identifier}")
        except dns.exception.DNSException:
            raise IssuanceError(
                f"{self._spec.where}: {task.identifier!r} is not a DNS name", retryable=False
            ) from None
        name = self._lookups.effective_name(base)
        provider = self._spec.provider
        zone: dns.name.Name | None = None  # an exec hook finds its own zone
        if isinstance(provider, Rfc2136) and provider.zone is not None:
            zone = dns.name.from_text(provider.zone)
            if not name.is_subdomain(zone):
                raise IssuanceError(
                    f"{self._spec.where}: {name} is not in the configured zone {zone}",
                    retryable=False,
                )
        elif isinstance(provider, Rfc2136):
            zone = self._lookups.zone_of(name)
        return Record(task.identifier, name, zone, txt_value(task.key_authorization))

    def present(self, task: ChallengeTask) -> None:
        record = self._record(task)
        try:
            self._provider.add(record, task)
        except BaseException:
            # A hook that timed out may have written the record anyway: try to take it back.
            self._remove_quietly(record, task)
            raise
        self._records[task.token] = record
        log.info(
            "dns01_presented",
            name=record.name.to_text(),
            zone=record.zone.to_text() if record.zone else None,
            provider=self._spec.provider_name,
        )

    def wait_visible(self, task: ChallengeTask, deadline: float) -> None:
        record = self._records[task.token]
        zone = record.zone or self._lookups.zone_of(record.name)
        self._lookups.wait_visible(zone, record.name, record.value, deadline)

    def cleanup(self, task: ChallengeTask) -> None:
        record = self._records.pop(task.token, None)
        if record is not None:
            self._provider.remove(record, task)
            log.info(
                "dns01_cleaned_up", name=record.name.to_text(), provider=self._spec.provider_name
            )

    def _remove_quietly(self, record: Record, task: ChallengeTask) -> None:
        try:
            self._provider.remove(record, task)
        except IssuanceError as exc:
            log.warning("dns01_cleanup_failed", name=record.name.to_text(), error=str(exc))
