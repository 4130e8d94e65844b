"""Config parsing for a service's accounts and ACME profile: ``account`` as one name or an
ordered list (CA fallback), ``fallback_after``, ``profile``.

Kept out of config.py so the challenge work can grow that file in parallel. Every problem is
reported through ``add(path, message)`` with the dotted key path, like the rest of the config.

Rules: pure parsing, no I/O; values quoted with ``repr`` (never a secret: these are names).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

Add = Callable[[str, str], None]

#: Profile names as the draft shows them ("classic", "shortlived", "tlsserver"): short tokens.
_PROFILE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_FALLBACK_AFTER: Final = 100
DEFAULT_FALLBACK_AFTER: Final = 3


def _show(value: str, limit: int = 60) -> str:
    """ASCII-safe and short, like config.py's: a message can always be printed."""
    return ascii(value if len(value) <= limit else value[:limit] + "...")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown(name: str, acme_names: Sequence[str]) -> str:
    message = f"account {_show(name)} does not name an [acme.<name>] section"
    close = difflib.get_close_matches(name, list(acme_names), n=1)
    if close:
        return message + f"; did you mean {_show(close[0])}?"
    if acme_names:
        return message + f"; defined: {', '.join(_show(n) for n in acme_names)}"
    return message


def account_list(
    add: Add, value: object, where: str, acme_names: Sequence[str]
) -> tuple[str, ...] | None:
    """``account = ["primary", "backup"]``: one or more defined accounts, each listed once."""
    if not isinstance(value, list | tuple) or not value:
        add(where, "expected an [acme.<name>] name or a non-empty array of them")
        return None
    names: list[str] = []
    ok = True
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, str):
            add(at, f"expected an [acme.<name>] name, got {type(item).__name__}")
            ok = False
        elif item in names:
            add(at, f"{_show(item)} is listed twice (also at index {names.index(item)})")
            ok = False
        elif item not in acme_names:
            add(at, _unknown(item, acme_names))
            ok = False
        else:
            names.append(item)
    return tuple(names) if ok else None


def fallback_after(add: Add, table: Mapping[str, Any], path: str) -> int:
    """``fallback_after``: consecutive failures on one account before the next is tried."""
    value = table.get("fallback_after", DEFAULT_FALLBACK_AFTER)
    if isinstance(value, bool) or not isinstance(value, int):
        add(_join(path, "fallback_after"), f"expected an integer, got {type(value).__name__}")
        return DEFAULT_FALLBACK_AFTER
    if not 1 <= value <= MAX_FALLBACK_AFTER:
        add(
            _join(path, "fallback_after"),
            f"must be between 1 and {MAX_FALLBACK_AFTER} (failures before trying the next "
            f"account), got {value}",
        )
        return DEFAULT_FALLBACK_AFTER
    return value


def profile(add: Add, table: Mapping[str, Any], path: str) -> str | None:
    """``profile``: an ACME profile name (draft-ietf-acme-profiles), checked against the CA's
    directory at order time (it is the CA that knows which it offers)."""
    if "profile" not in table:
        return None
    value = table["profile"]
    where = _join(path, "profile")
    if not isinstance(value, str):
        add(where, f"expected a profile name string, got {type(value).__name__}")
        return None
    if not _PROFILE_RE.fullmatch(value):
        add(
            where,
            f"invalid profile name {_show(value)}: use 1-64 letters, digits, '.', '_' or '-' "
            "(e.g. 'shortlived', 'tlsserver', 'classic')",
        )
        return None
    return value
