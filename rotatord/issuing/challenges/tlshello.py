"""Read the SNI and ALPN offers from a TLS ClientHello before any TLS library sees it.

The TLS-ALPN-01 responder must answer only a caller that offers ``acme-tls/1`` and names a
host being validated (RFC 8737 §3), and Python's ``ssl`` shows neither before it has chosen the
certificate. So the responder buffers the first bytes, asks ``parse`` here, and only then hands
the same bytes to ``ssl``.

Rules: pure (no I/O); never reads past the buffer; everything is bounded by ``MAX_HELLO``;
``parse`` returns None while the hello is incomplete and raises ``HelloError`` for anything
that is not a ClientHello (the caller answers with an alert and closes).
"""

from __future__ import annotations

from dataclasses import dataclass

#: A ClientHello with post-quantum key shares is ~1.8 KiB; 16 KiB is one full TLS record.
MAX_HELLO = 16 * 1024
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SNI = 0
_EXT_ALPN = 16


class HelloError(ValueError):
    """Not a (well-formed, bounded) TLS ClientHello."""


@dataclass(frozen=True)
class ClientHello:
    server_name: str | None  # lower-case, no trailing dot; None when the caller sent no SNI
    alpn: tuple[bytes, ...]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise HelloError("truncated ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def num(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vec(self, length_bytes: int) -> bytes:
        return self.take(self.num(length_bytes))

    def done(self) -> bool:
        return self.pos >= len(self.data)


def _handshake_bytes(buf: bytes) -> bytes | None:
    """The handshake message bytes carried by the leading records (a hello may span records)."""
    out = bytearray()
    pos = 0
    while True:
        if len(out) >= 4:
            need = 4 + int.from_bytes(out[1:4], "big")
            if need > MAX_HELLO:
                raise HelloError("ClientHello too large")
            if len(out) >= need:
                return bytes(out[:need])
        if len(buf) - pos < 5:
            if len(buf) > MAX_HELLO + 5:
                raise HelloError("ClientHello too large")
            return None
        if buf[pos] != _HANDSHAKE or buf[pos + 1] != 3:
            raise HelloError("not a TLS handshake record")
        length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if length == 0 or length > MAX_HELLO:
            raise HelloError("bad TLS record length")
        if len(buf) - pos - 5 < length:
            return None
        out += buf[pos + 5 : pos + 5 + length]
        pos += 5 + length


def parse(buf: bytes) -> ClientHello | None:
    """The hello's SNI and ALPN, None while more bytes are needed; HelloError when malformed."""
    message = _handshake_bytes(buf)
    if message is None:
        return None
    r = _Reader(message)
    if r.num(1) != _CLIENT_HELLO:
        raise HelloError("first handshake message is not a ClientHello")
    body = _Reader(r.vec(3))
    body.take(2 + 32)  # legacy_version, random
    body.vec(1)  # legacy_session_id
    body.vec(2)  # cipher_suites
    body.vec(1)  # legacy_compression_methods
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    if body.done():
        return ClientHello(None, ())
    extensions = _Reader(body.vec(2))
    while not extensions.done():
        kind = extensions.num(2)
        data = _Reader(extensions.vec(2))
        if kind == _EXT_SNI:
            names = _Reader(data.vec(2))
            while not names.done():
                name_type, name = names.num(1), names.vec(2)
                if name_type == 0:  # host_name
                    try:
                        server_name = name.decode("ascii").lower().rstrip(".")
                    except UnicodeDecodeError as exc:
                        raise HelloError("SNI host name is not ASCII") from exc
        elif kind == _EXT_ALPN:
            protocols = _Reader(data.vec(2))
            offered = []
            while not protocols.done():
                offered.append(protocols.vec(1))
            alpn = tuple(offered)
    return ClientHello(server_name, alpn)
