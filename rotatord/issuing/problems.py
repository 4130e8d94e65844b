"""The CA's own words on a failed or stuck authorization, for every failure message.

A CA that keeps retrying a challenge (Caddy's embedded smallstep server does) leaves the
authorization ``pending`` with the last attempt's problem in the challenge's ``error``; a CA may
also put an ``error`` on the authorization itself. Either way the operator must read what the
CA said ("could not connect to validation target"), not only "deadline passed".

Rules: pure over the authorization's JSON; every CA string is clipped (``core.text``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from acme import errors, messages

from rotatord.core.errors import IssuanceError
from rotatord.core.text import clip

MAX_PROBLEMS = 5
MAX_PART = 500  # characters of one CA string (a name, a type, a detail)


def problem_text(problem: Any) -> str | None:
    """``type: detail`` of one RFC 7807 problem document (None when it is not one)."""
    if not isinstance(problem, dict):
        return None
    typ, detail = problem.get("type"), problem.get("detail")
    parts = [clip(p, MAX_PART) for p in (typ, detail) if isinstance(p, str) and p]
    return ": ".join(parts) or None


def authorization_problems(doc: Any) -> list[str]:
    """Every problem an authorization's JSON carries: its own ``error`` and each challenge's,
    as ``identifier: type: detail``."""
    if not isinstance(doc, dict):
        return []
    ident = doc.get("identifier")
    name = ident.get("value") if isinstance(ident, dict) else None
    prefix = f"{clip(name, MAX_PART)}: " if isinstance(name, str) else ""
    out = []
    found = problem_text(doc.get("error"))
    if found:
        out.append(prefix + found)
    challenges = doc.get("challenges")
    for chall in challenges if isinstance(challenges, list) else ():
        found = problem_text(chall.get("error")) if isinstance(chall, dict) else None
        if found:
            out.append(prefix + found)
    return out


def said(problems: list[str]) -> str:
    """`` (the CA said: ...)`` for a message, or "" when the CA said nothing."""
    if not problems:
        return ""
    shown = "; ".join(problems[:MAX_PROBLEMS])
    more = f" (+{len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
    return clip(f" (the CA said: {shown}{more})")


def with_problems(
    exc: IssuanceError, waiting: Sequence[str], said_last: Mapping[str, list[str]]
) -> IssuanceError:
    """``exc`` (the deadline passed) with what the CA last said of the authorizations still
    pending."""
    seen = [p for url in waiting for p in said_last.get(url, [])]
    return IssuanceError(
        f"{exc}{said(seen)}", retryable=exc.retryable, problem_type=exc.problem_type
    )


def invalid_error(
    failed: Sequence[messages.AuthorizationResource], said_last: Mapping[str, list[str]]
) -> Exception:
    """The error for invalid authorizations: the library's ``ValidationError`` (translated with
    each challenge's problem) when a challenge carries one, else the authorization's own."""
    if any(c.error is not None for a in failed for c in a.body.challenges):
        return errors.ValidationError(list(failed))
    seen = [p for a in failed for p in said_last.get(a.uri, [])]
    return IssuanceError(f"the CA marked an authorization invalid{said(seen)}", retryable=True)


def poll_authorizations(
    fetch: Callable[[str], Any], sleep: Callable[[int], None], urls: Sequence[str]
) -> None:
    """Poll each authorization (``fetch``: its JSON) until none is pending; ``sleep(attempt)``
    waits the poll schedule and raises ``IssuanceError`` at the order's deadline, which then
    carries what the CA last said of each authorization still waiting."""
    waiting = list(urls)
    failed: list[messages.AuthorizationResource] = []
    attempt = 0
    said_last: dict[str, list[str]] = {}  # what the CA said of each authz still waiting
    while waiting:
        try:
            sleep(attempt)
        except IssuanceError as exc:
            raise with_problems(exc, waiting, said_last) from exc
        attempt += 1
        still = []
        for url in waiting:
            doc = fetch(url)
            said_last[url] = authorization_problems(doc)
            authz = messages.Authorization.from_json(doc)
            if authz.status == messages.STATUS_VALID:
                continue
            if authz.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                still.append(url)
                continue
            failed.append(messages.AuthorizationResource(body=authz, uri=url))
        waiting = still
    if failed:
        raise invalid_error(failed, said_last)
