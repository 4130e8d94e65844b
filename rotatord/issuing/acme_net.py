"""The acme library's network layer, with what acme 5.9 lacks: bounded badNonce retries,
Retry-After and the problem type kept on errors (a 409 included), ``replaces`` on new orders, and
the translation of every library error into ``IssuanceError``.

Rules: no acme/josepy object leaves ``issuing/``; datetimes that come out are aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from acme import errors, messages
from acme.client import ClientNetwork
from josepy.json_util import field as jose_field

from rotatord.clock import Clock
from rotatord.core.errors import IssuanceError

# At Pebble's 50 % rejection, 11 tries fail one POST in 2,048 (a 20-order run failed ~7 % of
# the time); 31 tries make that one in two billion. A bad nonce costs one round trip.
MAX_BAD_NONCE_RETRIES = 30

# Problems that will not go away by asking again later with the same request.
PERMANENT_PROBLEMS = frozenset(
    {
        "malformed",
        "badCSR",
        "rejectedIdentifier",
        "unsupportedIdentifier",
        "externalAccountRequired",
        "invalidContact",
        "unsupportedContact",
        "badSignatureAlgorithm",
        "badPublicKey",
        "caa",
        "alreadyRevoked",
        "badRevocationReason",
    }
)
ERROR_PREFIX = "urn:ietf:params:acme:error:"


class NewOrderWithReplaces(messages.NewOrder):
    """acme 5.9's NewOrder lacks RFC 9773's ``replaces``."""

    replaces: str = jose_field("replaces", omitempty=True)


def problem_code(exc: messages.Error) -> str | None:
    """The RFC 8555 error name (``badNonce``) of a problem. acme's ``Error.code`` only knows
    the names of its own release (no ``alreadyReplaced``), so read the URN ourselves."""
    typ = str(exc.typ or "")
    return typ[len(ERROR_PREFIX) :] if typ.startswith(ERROR_PREFIX) else None


def _parse_retry_after(value: str | None, now: datetime) -> datetime | None:
    if not value:
        return None
    try:
        return now + timedelta(seconds=max(0, int(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class _Network(ClientNetwork):
    """ClientNetwork that keeps what acme 5.9 throws away on errors, and retries badNonce."""

    def __init__(self, *args: Any, clock: Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.last_retry_after: datetime | None = None
        self.last_status: int | None = None

    def _check_response(  # type: ignore[override]
        self, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        if not response.ok:
            self.last_status = response.status_code
            self.last_retry_after = _parse_retry_after(
                response.headers.get("Retry-After"), self.clock.now()
            )
            if response.status_code == 409:
                # acme turns every 409 into ConflictError(location) and loses the problem type
                # (e.g. alreadyReplaced); surface the problem document when there is one.
                try:
                    jobj = response.json()
                except ValueError:
                    jobj = None
                if isinstance(jobj, dict) and "type" in jobj:
                    raise messages.Error.from_json(jobj)
        return super()._check_response(response, content_type=content_type)

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for _ in range(MAX_BAD_NONCE_RETRIES):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if problem_code(error) != "badNonce":
                    raise
        return self._post_once(*args, **kwargs)


def translate(exc: BaseException, net: _Network | None, what: str) -> IssuanceError:
    """Map any acme/requests error to IssuanceError with the fields callers branch on."""
    retry_after = net.last_retry_after if net else None
    status = net.last_status if net else None
    if isinstance(exc, messages.Error):
        code = problem_code(exc)
        return IssuanceError(
            f"{what}: {exc.typ}: {exc.detail or ''}".rstrip(": "),
            retryable=code not in PERMANENT_PROBLEMS,
            problem_type=exc.typ,
            retry_after=retry_after,
            status=status,
        )
    if isinstance(exc, errors.ValidationError):
        problems = []
        ptype = None
        for authzr in exc.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    ptype = ptype or chall.error.typ
                    problems.append(f"{authzr.body.identifier.value}: {chall.error.detail}")
        return IssuanceError(
            f"{what}: validation failed: " + "; ".join(problems),
            retryable=True,
            problem_type=ptype,
        )
    if isinstance(exc, requests.RequestException):
        return IssuanceError(f"{what}: cannot reach the CA: {exc}", retryable=True)
    if isinstance(exc, errors.Error):
        return IssuanceError(f"{what}: {exc}", retryable=True, status=status)
    return IssuanceError(f"{what}: {type(exc).__name__}: {exc}", retryable=True)
