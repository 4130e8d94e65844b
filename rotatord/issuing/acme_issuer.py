"""ACME (RFC 8555) issuance with certbot's ``acme`` library, reading like its http01 example.

What we add to acme 5.9, and why:
- badNonce is retried until success within a bound (the library retries once; Pebble rejects 5 %
  of good nonces by default and CAs may reject more under load).
- Retry-After and the problem type survive error responses (the library drops the header and turns
  a 409 into a bare ConflictError).
- Polling starts at 10 ms and backs off, honouring Retry-After, instead of fixed 1 s sleeps (those
  are most of certbot's ~2.8 s per certificate).
- ``replaces`` (RFC 9773) and ``profile`` (draft-ietf-acme-profiles) on new orders.
- An account the CA no longer knows (a restarted test CA, a purged account) is re-registered with
  the same key once, and the request retried. Rollover, contacts: ``account_ops``.

Every library error leaves this module as ``IssuanceError`` (``raise ... from exc``).

Rules: no josepy/acme object escapes; never log the account key or the EAB secret; all
datetimes that come out are aware UTC.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import requests
from acme import challenges, messages
from acme.client import ClientV2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from rotatord.clock import Clock
from rotatord.core.errors import IssuanceError
from rotatord.core.model import AcmeSpec, Challenge
from rotatord.issuing import IssuedCertificate, RenewalInfo, account, account_ops, ari
from rotatord.issuing.account import account_dir as account_dir
from rotatord.issuing.acme_net import (
    NewOrderWithReplaces,
    UrlPolicy,
    _Network,
    _parse_retry_after,
    check_profile,
    problem_code,
    translate,
)
from rotatord.issuing.challenges import acme_types  # also registers tls-alpn-01
from rotatord.issuing.challenges.solver import ChallengeTask, Solvers, solving, task_for
from rotatord.issuing.problems import poll_authorizations
from rotatord.issuing.trust import TrustAnchors, parse_chain
from rotatord.observe.logging import get_logger

log = get_logger("rotatord.issuing")

USER_AGENT = "rotatord/0.1 (+acme-python)"
POLL_SCHEDULE = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
MAX_IDLE_NETWORKS = 8
DIRECTORY_RETRY_S = 5.0

T = TypeVar("T")


class AcmeIssuer:
    """An ``Issuer`` for one ``[acme.<name>]`` account."""

    def __init__(
        self,
        spec: AcmeSpec,
        account_dir: Path,
        clock: Clock,
        solvers: Solvers | None = None,
        *,
        poll_schedule: Sequence[float] = POLL_SCHEDULE,
    ) -> None:
        self.spec = spec
        self.directory_url = spec.directory
        self._account_dir = self.account_dir = account_dir
        self._clock = clock
        self._solvers = solvers or Solvers()
        self._poll_schedule = tuple(poll_schedule)
        self._lock = threading.Lock()
        self._directory: messages.Directory | None = None
        self._key: JWKEC | None = None
        self._key_stamp: tuple[int, int] | None = None
        self._account_uri: str | None = None
        self._registering = threading.Lock()  # one newAccount at a time (see _register)
        # Idle networks (a session, its open connection, unused nonces) save a TLS handshake
        # and a HEAD newNonce per order; one thread at a time each (acme's nonces are unsafe).
        self._idle: list[_Network] = []
        self._directory_failed_at: float | None = None
        self._directory_error = ""
        self._trust = TrustAnchors(spec, clock)
        self._url_policy = UrlPolicy(spec.directory, spec.allowed_hosts)

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _net(self) -> Iterator[_Network]:
        with self._lock:
            net = self._idle.pop() if self._idle else None
        if net is None or net.key is not self._account_key():  # the key was rolled over
            net = self._new_network()
        net.last_retry_after = None
        net.last_status = None
        net.deadline = None
        healthy = False
        try:
            yield net
            healthy = True
        finally:
            with self._lock:
                if healthy and len(self._idle) < MAX_IDLE_NETWORKS:
                    self._idle.append(net)
                    net = None
            if net is not None:
                net.session.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[ClientV2]:
        """A client for ``account_ops`` (issuing/ only: no acme object goes further)."""
        with self._net() as net:
            yield self._client(net)

    def close(self) -> None:
        """Close idle connections (the daemon calls this at shutdown)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for net in idle:
            net.session.close()

    def _new_network(self) -> _Network:
        verify: bool | str = str(self.spec.ca_bundle) if self.spec.ca_bundle else True
        return _Network(
            key=self._account_key(),
            alg=ES256,
            verify_ssl=verify,  # a CA bundle path: requests passes it on as verify=
            user_agent=USER_AGENT,
            timeout=int(self.spec.timeout_seconds),
            clock=self._clock,
            url_policy=self._url_policy,
        )

    def _check_negative_cache(self, failed_at: float | None = None) -> None:
        """A thousand services planning against an unreachable CA make one connection
        attempt every few seconds, not a thousand (and build no session for it)."""
        if failed_at is None:
            with self._lock:
                if self._directory is not None:
                    return
                failed_at = self._directory_failed_at
        if failed_at is not None and self._clock.monotonic() - failed_at < DIRECTORY_RETRY_S:
            raise IssuanceError(
                f"directory {self.spec.directory} was unreachable moments ago "
                f"({self._directory_error})",
                retryable=True,
            )

    def _client(self, net: _Network) -> ClientV2:
        with self._lock:
            directory = self._directory
            failed_at = self._directory_failed_at
        if directory is None:
            self._check_negative_cache(failed_at)
            try:
                directory = ClientV2.get_directory(self.spec.directory, net)
            except Exception as exc:
                error = translate(exc, net, f"fetching directory {self.spec.directory}")
                with self._lock:
                    self._directory_failed_at = self._clock.monotonic()
                    self._directory_error = str(error).split(": ", 1)[-1]
                raise error from exc
            with self._lock:
                self._directory = directory
                self._directory_failed_at = None
        return ClientV2(directory, net)

    def _account_key(self) -> JWKEC:
        with self._lock:
            # One stat per order: ``rotatord account rollover`` may have replaced the key.
            stamp = account.key_stamp(self._account_dir)
            if self._key is None or stamp != self._key_stamp:
                self._key = account.load_or_create_key(self._account_dir)
                self._key_stamp, self._account_uri = account.key_stamp(self._account_dir), None
            return self._key

    def _load_account_uri(self) -> str | None:
        with self._lock:
            if self._account_uri:
                return self._account_uri
        return account.load_uri(self._account_dir, self.spec.directory)

    def _register(self, client: ClientV2, stale: str | None = None) -> str:
        """Register, unless another worker (or process) did while this one waited for the
        lock: concurrent first orders, or workers all told the CA forgot ``stale``, share one
        account."""
        with self._registering, account.locked(self._account_dir):
            known = account.load_uri(self._account_dir, self.spec.directory)
            if known is not None and known != stale:
                uri = known
                client.net.account = messages.RegistrationResource(
                    uri=uri, body=messages.Registration()
                )
            else:
                key = self._account_key()
                uri = account_ops.register(client, self.spec, self._account_dir, key)
        with self._lock:
            self._account_uri = uri
        return uri

    def _ensure_account(
        self, client: ClientV2, stale: bool = False, stale_uri: str | None = None
    ) -> None:
        """Bind ``client`` to our account; ``stale``: the CA just said it does not know it."""
        with self._lock:
            settled = self._account_uri is not None
        # One stat per order: a rollover interrupted here or in ``rotatord account`` is settled
        # before we sign with a key the CA may no longer know (waits for one in progress).
        if (self._account_dir / account.PENDING_NAME).exists():
            with account.locked(self._account_dir):
                if account_ops.resolve_pending(client, self.spec, self._account_dir) == "promoted":
                    stale = False  # the CA knew the pending key: same account, new key
            client.net.key = self._account_key()
        uri = None if stale else self._load_account_uri()
        if uri is None:
            self._register(client, stale_uri)
            return
        if not settled:  # first use of this spec: the config's contacts may have changed
            account_ops.sync_contact(client, self.spec, self._account_dir, uri)
        with self._lock:
            self._account_uri = uri
        client.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())

    def _with_account(self, client: ClientV2, fn: Callable[[], T]) -> T:
        """Run ``fn``; if the CA says our account does not exist, register again and retry once."""
        try:
            return fn()
        except messages.Error as exc:
            code = problem_code(exc)
            if code not in ("accountDoesNotExist", "unauthorized") or (
                code == "unauthorized" and "account" not in (exc.detail or "").lower()
            ):
                raise
            log.warning("acme_account_unknown", account=self.spec.name, problem=exc.typ)
            stale = client.net.account.uri if client.net.account is not None else None
            with self._lock:
                self._account_uri = None
            # Settles a pending key, else registers (or takes what another worker registered).
            self._ensure_account(client, stale=True, stale_uri=stale)
            return fn()

    def _sleep_schedule(self, attempt: int, retry_after: datetime | None, deadline: float) -> None:
        delay = self._poll_schedule[min(attempt, len(self._poll_schedule) - 1)]
        if retry_after is not None:
            delay = max(delay, (retry_after - self._clock.now()).total_seconds())
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise IssuanceError("order did not complete before the deadline", retryable=True)
        self._clock.sleep(min(delay, remaining))

    def _post_as_get(self, client: ClientV2, url: str) -> requests.Response:
        return client.net.post(url, None, new_nonce_url=client.directory["newNonce"])

    # ------------------------------------------------------------------ the order

    def issue(
        self,
        csr_pem: bytes,
        names: Sequence[str],
        challenge: Challenge,
        *,
        replaces: str | None = None,
        profile: str | None = None,
    ) -> IssuedCertificate:
        with self._net() as net:
            # Every exchange of the order, the directory and account included, ends by then.
            net.deadline = self._clock.monotonic() + self.spec.order_deadline_seconds
            try:
                client = self._client(net)
                self._ensure_account(client)
                check_profile(client.directory, profile, self.spec.directory)
                return self._issue(client, net, csr_pem, names, challenge, replaces, profile)
            except Exception as exc:
                # The next order reads the directory afresh: one whose URLs we refused (or of a
                # restarted CA) must not stay cached for the life of the daemon.
                with self._lock:
                    self._directory = None
                if isinstance(exc, IssuanceError):
                    raise
                raise translate(exc, net, f"ordering {', '.join(names)}") from exc

    def _new_order(
        self, client: ClientV2, names: Sequence[str], replaces: str | None, profile: str | None
    ) -> tuple[messages.Order, str, str | None]:
        identifiers = [acme_types.identifier(n) for n in names]  # dns or ip (RFC 8738)

        def post(rep: str | None) -> requests.Response:
            order = NewOrderWithReplaces(identifiers=identifiers, replaces=rep, profile=profile)
            return client.net.post(
                client.directory["newOrder"], order, new_nonce_url=client.directory["newNonce"]
            )

        try:
            response = post(replaces)
        except messages.Error as exc:
            # RFC 9773 §5: the CA may refuse `replaces` (the cert was already replaced, or the
            # CA does not like the field). Renewing matters more than the hint: retry once bare.
            if replaces is None or problem_code(exc) not in ("alreadyReplaced", "malformed"):
                raise
            log.warning(
                "acme_replaces_refused", account=self.spec.name, problem=exc.typ, replaces=replaces
            )
            replaces = None
            response = post(None)
        return messages.Order.from_json(response.json()), response.headers["Location"], replaces

    def ari_supported(self) -> bool:
        with self._net() as net:
            client = self._client(net)
        return "renewalInfo" in client.directory.to_partial_json()

    def renewal_info(self, cert_id: str) -> RenewalInfo | None:
        self._check_negative_cache()
        with self._net() as net:
            client = self._client(net)
            base = client.directory.to_partial_json().get("renewalInfo")
            if not base:
                return None
            return ari.query(net, base, cert_id, self._clock)

    def _issue(
        self,
        client: ClientV2,
        net: _Network,
        csr_pem: bytes,
        names: Sequence[str],
        challenge: Challenge,
        replaces: str | None,
        profile: str | None,
    ) -> IssuedCertificate:
        deadline = net.deadline or self._clock.monotonic() + self.spec.order_deadline_seconds
        order, order_url, replaces = self._with_account(
            client, lambda: self._new_order(client, names, replaces, profile)
        )

        solver = self._solvers.for_challenge(challenge)
        assert net.key is not None  # set when the network was made
        pending: list[tuple[str, messages.ChallengeBody, challenges.ChallengeResponse]] = []
        tasks: list[ChallengeTask] = []
        for authz_url in order.authorizations:
            authz = messages.Authorization.from_json(self._post_as_get(client, authz_url).json())
            if authz.status == messages.STATUS_VALID:
                continue  # reused authorization
            task, challb, response = task_for(authz, solver.challenge_type, net.key)
            tasks.append(task)
            pending.append((authz_url, challb, response))

        if pending:
            with solving(solver, tasks, deadline):
                for _, challb, response in pending:
                    client.answer_challenge(challb, response)
                poll_authorizations(
                    lambda url: self._post_as_get(client, url).json(),
                    lambda attempt: self._sleep_schedule(attempt, None, deadline),
                    [p[0] for p in pending],
                )

        order = self._finalize(client, net, order, order_url, csr_pem, deadline)
        assert order.certificate is not None
        certs = parse_chain(self._post_as_get(client, order.certificate).content)
        self._trust.verify(certs, names)
        leaf = certs[0].public_bytes(serialization.Encoding.PEM)
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:])
        return IssuedCertificate(
            cert_pem=leaf, chain_pem=chain, order_url=order_url, replaces=replaces
        )

    def _finalize(
        self,
        client: ClientV2,
        net: _Network,
        order: messages.Order,
        order_url: str,
        csr_pem: bytes,
        deadline: float,
    ) -> messages.Order:
        csr = x509.load_pem_x509_csr(csr_pem)
        finalized = False
        attempt = 0
        retry_after: datetime | None = None
        while True:
            if order.status == messages.STATUS_VALID and order.certificate:
                return order
            if order.status == messages.STATUS_INVALID:
                if order.error is not None:
                    raise order.error
                raise IssuanceError("the CA marked the order invalid", retryable=True)
            # Our copy of the order predates validation; every authorization is valid now, so
            # it is (almost surely) "ready": finalizing at once saves a poll (orderNotReady: poll).
            maybe_ready = order.status == messages.STATUS_PENDING and attempt == 0
            if not finalized and (order.status == messages.STATUS_READY or maybe_ready):
                try:
                    resp = client.net.post(
                        order.finalize,
                        messages.CertificateRequest(csr=csr),
                        new_nonce_url=client.directory["newNonce"],
                    )
                except messages.Error as exc:
                    if problem_code(exc) != "orderNotReady":
                        raise
                else:
                    finalized = True
                    attempt = 0
                    order = messages.Order.from_json(resp.json())
                    continue
            self._sleep_schedule(attempt, retry_after, deadline)
            attempt += 1
            resp = self._post_as_get(client, order_url)
            retry_after = _parse_retry_after(resp.headers.get("Retry-After"), self._clock.now())
            order = messages.Order.from_json(resp.json())

    def revoke(self, cert_pem: bytes, reason: int) -> None:
        with self._net() as net:
            try:
                client = self._client(net)
                self._ensure_account(client)
                cert = x509.load_pem_x509_certificate(cert_pem)
                self._with_account(client, lambda: client.revoke(cert, reason))
            except IssuanceError:
                raise
            except Exception as exc:
                raise translate(exc, net, "revoking certificate") from exc
