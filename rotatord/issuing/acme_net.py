"""The acme library's network layer, with what acme 5.9 lacks: bounded badNonce retries,
Retry-After and the problem type kept on errors (a 409 included), ``replaces`` on new orders, and
the translation of every library error into ``IssuanceError``.

Every exchange is bounded here, the one place all of acme's requests pass through
(``_send_request``): the URL must pass the account's :class:`UrlPolicy` before anything is sent
(no redirects are followed); the body is streamed and refused past :data:`MAX_RESPONSE_BYTES`;
and the whole exchange, body included, ends by its deadline (the account's ``timeout``, or what
is left of the order's ``order_deadline`` when sooner). requests' own ``timeout`` bounds only
each socket read, so a 1 byte/s trickle would stretch it without end; here the deadline is
checked after every read and each read waits at most what is left. The status line and
headers are read by http.client before we get control, so a watchdog shuts the connection down
if they have not all arrived by the deadline (:class:`_WatchedHTTPSConnection`).

Rules: no acme/josepy object leaves ``issuing/``; datetimes that come out are aware UTC.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import requests
import urllib3
from acme import errors, messages
from acme.client import ClientNetwork
from josepy.json_util import field as jose_field

from rotatord.clock import Clock
from rotatord.core.errors import IssuanceError
from rotatord.core.text import quote
from rotatord.issuing import PROFILE_NOT_OFFERED

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

#: Largest response body accepted from the CA: a directory, an order, an authorization or a
#: certificate chain. Real ones are a few KiB (a chain with three RSA-4096 certificates ~7 KiB).
MAX_RESPONSE_BYTES: Final = 1 << 20
#: Longest URL we follow. Let's Encrypt's are about 80 characters.
MAX_URL_CHARS: Final = 4096
_READ_CHUNK: Final = 64 << 10


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UrlPolicy:
    """Which URLs the CA may send us to: https (plain http only on loopback, for test CAs), on
    the directory's host or one of ``allowed_hosts``. A directory that points newOrder at
    another host would otherwise receive our signed requests."""

    def __init__(self, directory_url: str, allowed_hosts: Sequence[str] = ()) -> None:
        host = urlsplit(directory_url).hostname or ""
        self.hosts = frozenset({host.lower(), *(h.lower() for h in allowed_hosts)})

    def check(self, url: str) -> None:
        """Raise IssuanceError (retryable: the CA may fix it) unless ``url`` may be used."""
        if len(url) > MAX_URL_CHARS:
            raise IssuanceError(
                f"refusing a URL of {len(url)} characters from the CA "
                f"(limit {MAX_URL_CHARS}): {quote(url)}",
                retryable=True,
            )
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            _ = parts.port
        except ValueError:
            raise IssuanceError(
                f"refusing a malformed URL from the CA: {quote(url)}", retryable=True
            ) from None
        scheme = parts.scheme.lower()
        if not (scheme == "https" or (scheme == "http" and _loopback(host))):
            raise IssuanceError(
                f"refusing {quote(url)}: the CA's URLs must be https:// "
                "(plain http:// only on loopback)",
                retryable=True,
            )
        if host not in self.hosts:
            raise IssuanceError(
                f"refusing {quote(url)}: host {quote(host)} is not the directory's host "
                f"({', '.join(sorted(self.hosts))}); add it to allowed_hosts if the CA uses it",
                retryable=True,
            )


class NewOrderWithReplaces(messages.NewOrder):
    """acme 5.9's NewOrder lacks RFC 9773's ``replaces``."""

    replaces: str = jose_field("replaces", omitempty=True)




def check_profile(directory: messages.Directory, profile: str | None, url: str) -> None:
    """draft-ietf-acme-profiles: refuse a profile the directory's ``meta.profiles`` lacks. A
    directory without ``meta.profiles`` (Pebble 2.4, older CAs) gets the order as configured."""
    offered = getattr(directory.to_partial_json().get("meta"), "profiles", None)  # a frozendict
    if profile is None or offered is None or profile in offered:
        return
    raise IssuanceError(
        f"the CA at {url} offers no profile {quote(profile, 64)} "
        f"(it offers: {', '.join(quote(p, 64) for p in sorted(offered)) or 'none'})",
        retryable=False,
        problem_type=PROFILE_NOT_OFFERED,
    )


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


# The deadline of the exchange this thread is sending (set around session.request).
_exchange = threading.local()


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: wake the reader, keep the TLS state intact.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedMixin:
    """A urllib3 connection whose wait for the status line and headers ends at the exchange's
    deadline: a CA trickling its headers byte by byte would otherwise reset the read timeout
    with every byte."""

    sock: socket.socket | None

    def getresponse(self) -> urllib3.response.HTTPResponse:
        ends: float | None = getattr(_exchange, "ends", None)
        clock: Clock | None = getattr(_exchange, "clock", None)
        timer = None
        if ends is not None and clock is not None and self.sock is not None:
            timer = threading.Timer(max(ends - clock.monotonic(), 0.0), _shut, (self.sock,))
            timer.daemon = True
            timer.start()
        try:
            return super().getresponse()  # type: ignore[misc, no-any-return]
        finally:
            if timer is not None:
                timer.cancel()


class _WatchedHTTPSConnection(_WatchedMixin, urllib3.connection.HTTPSConnection):  # type: ignore[misc]
    pass


class _WatchedHTTPConnection(_WatchedMixin, urllib3.connection.HTTPConnection):  # type: ignore[misc]
    pass


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


def watch(session: requests.Session) -> None:
    """Make ``session``'s connections honour :func:`exchange_deadline` while reading headers."""
    for adapter in session.adapters.values():
        pools = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
        adapter.poolmanager.pool_classes_by_scheme = pools  # type: ignore[attr-defined]


@contextlib.contextmanager
def exchange_deadline(ends: float, clock: Clock) -> Iterator[None]:
    """Requests this thread sends on a :func:`watch`-ed session get their headers by ``ends``."""
    _exchange.ends, _exchange.clock = ends, clock
    try:
        yield
    finally:
        _exchange.ends = _exchange.clock = None


#: Called after every exchange with the CA as ``(method, url, status or None, seconds)`` (None:
#: no response). The daemon adds its metrics here; an observer must be quick and never raise.
EXCHANGE_OBSERVERS: list[Callable[[str, str, int | None, float], None]] = []


class _Network(ClientNetwork):
    """ClientNetwork that keeps what acme 5.9 throws away on errors, and retries badNonce."""

    def __init__(self, *args: Any, clock: Clock, url_policy: UrlPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.url_policy = url_policy
        self.last_retry_after: datetime | None = None
        self.last_status: int | None = None
        #: Monotonic time by which the current order must be over (None outside an order).
        self.deadline: float | None = None
        watch(self.session)

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        start, status = self.clock.monotonic(), None
        try:
            response = self._send_bounded(method, url, *args, **kwargs)
            status = response.status_code
            return response
        finally:
            for observe in EXCHANGE_OBSERVERS:
                observe(method, url, status, self.clock.monotonic() - start)

    def _send_bounded(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        """One bounded exchange (see the module docstring); the body is read before returning."""
        self.url_policy.check(url)
        start = self.clock.monotonic()
        ends = start + float(self._default_timeout)
        if self.deadline is not None:
            ends = min(ends, self.deadline)
        remaining = ends - start
        if remaining <= 0:
            raise IssuanceError("order did not complete before the deadline", retryable=True)
        headers = kwargs.setdefault("headers", {})
        headers.setdefault("User-Agent", self.user_agent)
        # No compression: a small compressed body can inflate past any cap (a "zip bomb").
        headers["Accept-Encoding"] = "identity"
        kwargs.update(verify=self.verify_ssl, timeout=remaining, stream=True, allow_redirects=False)
        what = f"{method} {quote(url, 120)}"
        try:
            with exchange_deadline(ends, self.clock):
                response = self.session.request(method, url, *args, **kwargs)
        except requests.RequestException as exc:
            if self.clock.monotonic() >= ends - 0.05:
                raise IssuanceError(
                    f"{what}: cannot reach the CA: no answer before the deadline", retryable=True
                ) from exc
            raise
        try:
            body = read_bounded(response, what, ends, self.clock)
        except BaseException:
            response.close()  # body not consumed: the connection is dropped, not reused
            raise
        # Pre-load the body the way requests itself does once it has read it; then close()
        # hands the connection back to the pool for the next request.
        response._content = body
        response._content_consumed = True  # type: ignore[attr-defined]
        response.close()
        if "Accept" not in headers:
            response.encoding = "utf-8"
        return response

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


def read_bounded(
    response: requests.Response, what: str, ends: float, clock: Clock, cap: int = MAX_RESPONSE_BYTES
) -> bytes:
    """The body of a ``stream=True`` response, refused past ``cap`` bytes or monotonic ``ends``."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise IssuanceError(
            f"{what}: the CA sent a {quote(encoding, 40)}-encoded body", retryable=True
        )
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > cap:
        raise IssuanceError(
            f"{what}: the CA's answer of {int(declared)} bytes exceeds {cap} bytes; refused",
            retryable=True,
        )
    raw: urllib3.BaseHTTPResponse = response.raw
    chunks: list[bytes] = []
    total = 0
    while True:
        left = ends - clock.monotonic()
        if left <= 0:
            raise IssuanceError(
                f"{what}: the CA's answer did not arrive before the deadline "
                f"({total} bytes received); refused",
                retryable=True,
            )
        _set_read_timeout(raw, left)
        try:
            chunk = raw.read1(_READ_CHUNK)
        except (TimeoutError, urllib3.exceptions.ReadTimeoutError):
            continue  # the read waited what was left: the check above reports the deadline
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise IssuanceError(
                f"{what}: reading the answer failed: {exc}", retryable=True
            ) from exc
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cap:
            raise IssuanceError(
                f"{what}: the CA's answer exceeds {cap} bytes; refused",
                retryable=True,
            )
        chunks.append(chunk)


def _set_read_timeout(raw: urllib3.BaseHTTPResponse, seconds: float) -> None:
    """Each socket read waits at most what is left of the deadline."""
    sock = getattr(getattr(raw, "_fp", None), "fp", None)
    sock = getattr(getattr(sock, "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def translate(exc: BaseException, net: _Network | None, what: str) -> IssuanceError:
    """Map any acme/requests error to IssuanceError with the fields callers branch on."""
    retry_after = net.last_retry_after if net else None
    status = net.last_status if net else None
    if isinstance(exc, IssuanceError):
        return IssuanceError(
            f"{what}: {exc}",
            retryable=exc.retryable,
            problem_type=exc.problem_type,
            retry_after=exc.retry_after or retry_after,
            status=exc.status or status,
        )
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
                    problems.append(
                        f"{authzr.body.identifier.value}: {chall.error.typ}: {chall.error.detail}"
                    )
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
