"""Typed errors. Callers branch on fields, never on message text.

Every error raised across a layer boundary is one of these; adapters translate library errors
(acme, OSError, subprocess) into them with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rotatord.core.text import clip


class RotatordError(Exception):
    """Base of every error rotatord raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One configuration problem: where it is and what is wrong."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigError(RotatordError):
    """The configuration is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UnknownServiceError(RotatordError):
    """A service name was given that is not in the configuration."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown service {name!r}")


class IssuanceError(RotatordError):
    """The CA did not issue a certificate.

    ``retryable`` says whether trying again later can help; ``problem_type`` is the RFC 8555
    problem type URN when the CA sent one; ``retry_after`` is when the CA asked us to come back.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        problem_type: str | None = None,
        retry_after: datetime | None = None,
        status: int | None = None,
    ) -> None:
        self.retryable = retryable
        self.problem_type = problem_type
        self.retry_after = retry_after
        self.status = status
        # Messages quote what the CA sent (details, URLs): bounded here, whoever builds them.
        super().__init__(clip(message))


class StoreError(RotatordError):
    """The on-disk store could not complete an operation; the previous state is intact."""


class LockBusyError(StoreError):
    """Another process or thread holds the service lock and we were asked not to wait."""


class VerificationError(RotatordError):
    """A key/certificate/chain bundle failed verification before activation."""


class ReloadError(RotatordError):
    """A reload action failed: non-zero exit, timeout, or could not be started."""

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        timed_out: bool = False,
        stderr_tail: str = "",
    ) -> None:
        self.returncode = returncode
        self.timed_out = timed_out
        self.stderr_tail = stderr_tail
        super().__init__(message)


class ControlError(RotatordError):
    """The control socket could not be reached or refused the request. ``reason``: ``absent``
    (no daemon listens), ``denied`` (the socket's permissions keep the caller out) or ``broken``
    (anything else: no valid reply, a timeout, a socket the daemon could not bind)."""

    def __init__(self, message: str, reason: str = "broken") -> None:
        super().__init__(message)
        self.reason = reason


class AuditError(RotatordError):
    """The audit log could not be written; no key event may go unrecorded, so work stops."""
