"""The challenge-solver port: present, wait until visible, clean up — for one authorization.

lego's ``challenge.Provider`` (Present/CleanUp) and certmagic's ``acmez.Solver``
(Present/Wait/CleanUp) are the model. The issuer builds one ``ChallengeTask`` per pending
authorization of an order, picks the challenge whose type the service's solver speaks, and runs
``solving()``: every task is presented first (so several names of one order validate
concurrently), then each is waited for, then the CA is told; ``cleanup`` runs for every task that
was presented, on every path (success, CA error, deadline, crash of a later ``present``).

A solver is built from the service's configured ``Challenge`` by ``Solvers.for_challenge``; the
shared parts (the HTTP-01 listener pool, and later DNS clients or the TLS-ALPN-01 responder) live
in ``Solvers`` so concurrent rotations share one port.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from acme import challenges, messages
from josepy.jwk import JWK

from rotatord.clock import Clock, SystemClock
from rotatord.core.dns01 import Dns01
from rotatord.core.errors import IssuanceError
from rotatord.core.model import Challenge, Http01Standalone, Http01Webroot, TlsAlpn01
from rotatord.issuing.challenges.dns01 import Dns01Solver
from rotatord.issuing.challenges.http01 import StandalonePool, webroot_serving
from rotatord.issuing.challenges.tlsalpn01 import TlsAlpn01Solver, TlsAlpnPool


@dataclass(frozen=True)
class ChallengeTask:
    """One authorization's challenge, as the CA sent it.

    ``identifier`` is the value the CA names (for ``*.example.test`` it is ``example.test`` with
    ``wildcard`` true); ``identifier_type`` is ``"dns"`` or ``"ip"``. ``key_authorization`` is
    ``token || '.' || thumbprint(account key)`` (RFC 8555 §8.1); each solver derives what it
    publishes from it (HTTP-01: the body; DNS-01: base64url(SHA-256); TLS-ALPN-01: the
    ``acmeIdentifier`` extension).
    """

    identifier: str
    identifier_type: str
    wildcard: bool
    challenge_type: str
    token: str
    key_authorization: str


def task_for(
    authz: messages.Authorization, challenge_type: str, key: JWK
) -> tuple[ChallengeTask, messages.ChallengeBody, challenges.ChallengeResponse]:
    """The task for one pending authorization, its challenge of ``challenge_type`` and the
    response that tells the CA to validate it."""
    challb = next((c for c in authz.challenges if c.chall.typ == challenge_type), None)
    if challb is None or not isinstance(challb.chall, challenges.KeyAuthorizationChallenge):
        raise IssuanceError(
            f"CA offers no {challenge_type} challenge for {authz.identifier.value}",
            retryable=False,
        )
    task = ChallengeTask(
        identifier=authz.identifier.value,
        identifier_type=authz.identifier.typ.name,
        wildcard=bool(authz.wildcard),
        challenge_type=challenge_type,
        token=challb.chall.encode("token"),
        key_authorization=challb.chall.key_authorization(key),
    )
    return task, challb, challb.chall.response(key)


class Solver(Protocol):
    """Satisfies one challenge type for one service."""

    @property
    def challenge_type(self) -> str:
        """The ACME challenge type this solver answers (``"http-01"``, ``"dns-01"``, ...)."""
        ...

    def present(self, task: ChallengeTask) -> None:
        """Make the validation visible to the CA (register a token, add a TXT record ...).
        Raises ``IssuanceError`` when it cannot."""
        ...

    def wait_visible(self, task: ChallengeTask, deadline: float) -> None:
        """Return once the CA can see what ``present`` published (DNS propagation), or raise
        ``IssuanceError`` at ``deadline`` (a monotonic time)."""
        ...

    def cleanup(self, task: ChallengeTask) -> None:
        """Remove what ``present`` published. Idempotent; never raises for "already gone"."""
        ...


@contextlib.contextmanager
def solving(solver: Solver, tasks: Sequence[ChallengeTask], deadline: float) -> Iterator[None]:
    """Present every task, wait until each is visible, yield (the caller answers the challenges
    and polls), then clean up every task that was presented — on every path."""
    presented: list[ChallengeTask] = []
    try:
        for task in tasks:
            solver.present(task)
            presented.append(task)
        for task in tasks:
            solver.wait_visible(task, deadline)
        yield
    finally:
        first: BaseException | None = None
        for task in reversed(presented):
            try:
                solver.cleanup(task)
            except Exception as exc:  # noqa: BLE001 - clean up the rest, then report the first
                first = first or exc
        if first is not None:
            raise first


class Http01StandaloneSolver:
    """HTTP-01 from rotatord's own listener (shared per ``host:port`` through the pool)."""

    challenge_type = "http-01"

    def __init__(self, pool: StandalonePool, spec: Http01Standalone) -> None:
        self._pool = pool
        self._spec = spec
        self._held: dict[str, contextlib.ExitStack] = {}

    def present(self, task: ChallengeTask) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(self._pool.serving(self._spec, {task.token: task.key_authorization}))
        self._held[task.token] = stack

    def wait_visible(self, task: ChallengeTask, deadline: float) -> None:
        return None  # served from memory the moment it is registered

    def cleanup(self, task: ChallengeTask) -> None:
        stack = self._held.pop(task.token, None)
        if stack is not None:
            stack.close()


class Http01WebrootSolver:
    """HTTP-01 through an existing web server: the token file under its webroot."""

    challenge_type = "http-01"

    def __init__(self, spec: Http01Webroot) -> None:
        self._spec = spec
        self._held: dict[str, contextlib.ExitStack] = {}

    def present(self, task: ChallengeTask) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(webroot_serving(self._spec, {task.token: task.key_authorization}))
        self._held[task.token] = stack

    def wait_visible(self, task: ChallengeTask, deadline: float) -> None:
        return None  # the file is complete (atomic rename) before present returns

    def cleanup(self, task: ChallengeTask) -> None:
        stack = self._held.pop(task.token, None)
        if stack is not None:
            stack.close()


class Solvers:
    """Builds a ``Solver`` for a service's configured challenge; owns the shared listeners."""

    def __init__(
        self,
        http01_pool: StandalonePool | None = None,
        tlsalpn01_pool: TlsAlpnPool | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.http01_pool = http01_pool or StandalonePool()
        self.tlsalpn01_pool = tlsalpn01_pool or TlsAlpnPool()
        self.clock = clock or SystemClock()  # DNS-01 propagation polling

    def for_challenge(self, challenge: Challenge) -> Solver:
        """A fresh solver for one order (solvers keep per-order state; the pools are shared)."""
        if isinstance(challenge, Http01Standalone):
            return Http01StandaloneSolver(self.http01_pool, challenge)
        if isinstance(challenge, Dns01):
            return Dns01Solver(challenge, self.clock)
        if isinstance(challenge, TlsAlpn01):
            return TlsAlpn01Solver(self.tlsalpn01_pool, challenge)
        return Http01WebrootSolver(challenge)

    def close(self) -> None:
        """Close every listener now (daemon shutdown, end of a CLI run)."""
        self.http01_pool.close()
        self.tlsalpn01_pool.close()
