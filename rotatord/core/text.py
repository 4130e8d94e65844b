"""Bounded text: every string that came from outside (a CA's answer, a URL, an exception) is
clipped before it reaches the audit log, ``status.json`` or a control reply.

Why: one 8 MiB URL in an error once became an 8.4 MB audit line that the audit writer could no
longer chain past, which stopped every later rotation. A visible marker says how much was cut, so
a clipped message is never mistaken for the whole one.

Rules: pure; no I/O.
"""

from __future__ import annotations

from typing import Final

#: Longest error message kept (characters). Far above any real CA problem detail.
MAX_ERROR_CHARS: Final = 2048
#: Longest excerpt of an outside value (a URL, a header) quoted inside a message.
MAX_QUOTE_CHARS: Final = 200


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` if it has at most ``limit`` characters, else its head plus a marker saying how
    many characters were cut; the result never exceeds ``limit`` + the marker's length."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"{text[:limit]}…[truncated {cut} chars]"


def quote(value: object, limit: int = MAX_QUOTE_CHARS) -> str:
    """``repr(value)`` clipped to ``limit``: for outside values quoted inside a message."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"…[truncated {len(text) - limit} chars]"
    return repr(text)


def serial_text(serial: int) -> str:
    """A certificate serial as ``openssl x509 -noout -serial`` prints it: upper-case hex with
    an even number of digits (so ``0A1B``, never ``a1b``), the form people paste into
    ``openssl``, a CA's search box or a CRL grep."""
    digits = format(abs(serial), "X")
    if len(digits) % 2:
        digits = "0" + digits
    return ("-" if serial < 0 else "") + digits
