"""Make audit fields safe to record: bounded in size, JSON-native, never key material.

Nothing is refused, because a refused record is a missing record. Instead:

- a string (or mapping key) that looks like key material, and any ``bytes``, is replaced by its
  fingerprint ``sha256:<16 hex>`` and the field's path is listed in the record's ``redacted``;
- a string longer than ``MAX_STRING`` bytes keeps its first bytes plus a visible marker
  ``…[truncated N bytes]``; containers keep ``MAX_ITEMS`` items (then ``…[N more items]``) and
  ``MAX_DEPTH`` levels; once a record has used ``STRING_BUDGET`` bytes of text, or
  ``MAX_NODES`` values, what is left is only markers. So a record stays well under
  ``MAX_RECORD`` bytes however large its input (an 8 MiB error string from a hostile CA).

Rules: pure (no I/O, no clock); the fingerprint is of the whole original value, so the same
offending value always gets the same fingerprint and can be matched against a suspect file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from rotatord.observe.logging import contains_secret
from rotatord.observe.record import RESERVED

MAX_STRING = 4096
MAX_ITEMS = 100
MAX_DEPTH = 6
MAX_NODES = 2000
STRING_BUDGET = 64 * 1024
MAX_RECORD = 256 * 1024  # what the writer guarantees, with room for markers and keys
_MAX_INT = 2**63


def fingerprint(value: str | bytes) -> str:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def truncate(text: str, limit: int = MAX_STRING) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, with a marker naming what was cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", "ignore")  # never split a character
    dropped = len(data) - len(kept.encode("utf-8", "surrogatepass"))
    return f"{kept}…[truncated {dropped} bytes]"


class _Bounder:
    def __init__(self) -> None:
        self.budget = STRING_BUDGET
        self.nodes = MAX_NODES
        self.redacted: list[str] = []

    def text(self, value: str, where: str) -> str:
        if contains_secret(value):
            self.redacted.append(where)
            return fingerprint(value)
        out = truncate(value, max(0, min(MAX_STRING, self.budget)))
        self.budget -= len(out)
        return out

    def value(self, value: Any, where: str, depth: int) -> Any:
        self.nodes -= 1
        if self.nodes < 0:
            return "…[truncated]"
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value if -_MAX_INT <= value <= _MAX_INT else "…[integer too large]"
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            return self.text(value, where)
        if isinstance(value, bytes | bytearray | memoryview):
            self.redacted.append(where)
            return fingerprint(bytes(value))
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            if depth >= MAX_DEPTH:
                return "…[truncated: nested too deep]"
            if isinstance(value, Mapping):
                return self.mapping(value, where, depth + 1)
            items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
            return self.sequence(list(items), where, depth + 1)
        return self.text(str(value), where)

    def mapping(self, value: Mapping[Any, Any], where: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS or self.nodes <= 0:
                out["…"] = f"[{len(value) - i} more items]"
                break
            name = self.text(str(k), f"{where}.<key>")
            out[name] = self.value(v, f"{where}.{name}", depth)
        return out

    def sequence(self, value: list[Any], where: str, depth: int) -> list[Any]:
        out = []
        for i, v in enumerate(value):
            if i >= MAX_ITEMS or self.nodes <= 0:
                out.append(f"…[{len(value) - i} more items]")
                break
            out.append(self.value(v, f"{where}[{i}]", depth))
        return out


def sanitize(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` bounded and scrubbed as the module docstring says, plus ``redacted`` (the
    paths of the values replaced by fingerprints) when there are any. A field whose name the
    writer owns (``ts``, ``prev``, ...) is kept under ``<name>_field``."""
    bounder = _Bounder()
    out: dict[str, Any] = {}
    for i, (k, v) in enumerate(fields.items()):
        if i >= MAX_ITEMS:
            out["…"] = f"[{len(fields) - i} more fields]"
            break
        name = bounder.text(str(k), "<key>")
        if name in RESERVED:
            name += "_field"
        out[name] = bounder.value(v, name, 0)
    if bounder.redacted:
        out["redacted"] = bounder.redacted[:MAX_ITEMS]
    return out
