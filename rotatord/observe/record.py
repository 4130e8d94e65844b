"""The audit record's wire format and the sealing key ratchet: pure functions, no I/O.

A record is one line of compact JSON. Its ``hash`` is the SHA-256 of the record's JSON without
``hash`` and ``mac`` (its *body*); ``prev`` (inside the body) is the ``hash`` of the record
before it. A sealed record also carries ``epoch`` and ``seq`` (its index in the epoch) in its
body and ``mac``, an HMAC-SHA256 of the body under the epoch's key.

The key of epoch ``e+1`` is ``HMAC(k_e, "rotatord audit evolve")``: anyone holding ``k_0`` (the
operator's verification key) can derive every epoch's key, while ``k_e`` reveals nothing about
the keys before it. That is what makes a host compromise unable to forge earlier epochs, once
the host has destroyed them.

Rules: the body is re-serialised by the verifier with the same ``json.dumps`` settings, so the
writer must hand it JSON-native values only (``sanitize`` makes them so); never put a key in an
exception message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

GENESIS = "0" * 64
KEY_BYTES = 32
# Fields the writer owns: a caller's field of the same name is renamed (see sanitize).
RESERVED = frozenset({"ts", "event", "prev", "epoch", "seq", "hash", "mac", "redacted"})
SEAL_EVENT = "audit_sealed"
START_EVENT = "audit_seal_started"

_EVOLVE = b"rotatord audit evolve"
_RECORD = b"rotatord audit record\n"
_KEY_ID = b"rotatord audit key id"


def body_of(record: dict[str, Any]) -> bytes:
    """The bytes that ``hash`` and ``mac`` cover: the record's compact JSON without them."""
    inner = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    return json.dumps(inner, separators=(",", ":")).encode()


def record_mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, _RECORD + body, hashlib.sha256).hexdigest()


def evolve(key: bytes) -> bytes:
    """The next epoch's key. One-way: the previous key cannot be computed from the result."""
    return hmac.new(key, _EVOLVE, hashlib.sha256).digest()


def key_id(initial_key: bytes) -> str:
    """A public name for a sealing run (derived from ``k_0``, reveals nothing about it)."""
    return hmac.new(initial_key, _KEY_ID, hashlib.sha256).hexdigest()[:16]


def encode(record: dict[str, Any], key: bytes | None) -> tuple[bytes, str]:
    """The record's line (with ``hash`` and, given a key, ``mac`` appended) and its hash."""
    body = body_of(record)
    digest = hashlib.sha256(body).hexdigest()
    tail = f',"hash":"{digest}"'
    if key is not None:
        tail += f',"mac":"{record_mac(key, body)}"'
    text = body.decode()
    if text == "{}":  # never happens for audit records (they have ts and event); keep it valid
        return ("{" + tail[1:] + "}\n").encode(), digest
    return (text[:-1] + tail + "}\n").encode(), digest


def hash_ok(record: dict[str, Any]) -> bool:
    """Does the record's ``hash`` match its body (the plain, keyless check)?"""
    claimed = record.get("hash")
    return isinstance(claimed, str) and hmac.compare_digest(
        claimed, hashlib.sha256(body_of(record)).hexdigest()
    )


def mac_ok(record: dict[str, Any], key: bytes) -> bool:
    claimed = record.get("mac")
    return isinstance(claimed, str) and hmac.compare_digest(
        claimed, record_mac(key, body_of(record))
    )
