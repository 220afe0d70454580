"""Response bodies read with a bound on DECODED bytes (a decompression bomb stops at the limit, not in memory).

httpx's own decoders inflate each network chunk whole: 64 KiB of gzip can become 64 MiB before a caller sees a
byte, and `Content-Encoding: gzip, gzip` multiplies that again. So the raw stream is read here and inflated with
`max_length`, never producing more than the limit allows; only one content coding (gzip or deflate) is accepted.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

__all__ = ["ACCEPT_ENCODING", "BadEncoding", "BodyTooLarge", "read_decoded"]

ACCEPT_ENCODING = "gzip, deflate"  # what read_decoded can inflate; sent on every request


class BodyTooLarge(ValueError):
    """The decoded body exceeds the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes once decoded")
        self.limit = limit


class BadEncoding(ValueError):
    """A `Content-Encoding` this reader refuses (stacked, unknown) or a body that does not inflate."""


class _Inflater:
    """One content coding, inflated with a bound on output per call."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._raw_fallback = coding == "deflate"  # servers send zlib-wrapped or raw deflate under this name
        wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(wbits)
        self._started = False

    def feed(self, data: bytes, room: int) -> bytes:
        """At most `room + 1` decoded bytes of `data` (more than `room` means the body is too large)."""
        try:
            out = self._inflater.decompress(data, room + 1)
        except zlib.error as exc:
            if not (self._raw_fallback and not self._started):
                raise BadEncoding(f"body is not valid {self._coding}: {exc}") from None
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            self._raw_fallback = False
            return self.feed(data, room)
        self._started = True
        return out


def _coding(content_encoding: str) -> str:
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip().lower() not in ("", "identity")]
    if len(codings) > 1:
        raise BadEncoding(f"stacked Content-Encoding {content_encoding!r} refused (one coding at most)")
    coding = codings[0] if codings else "identity"
    if coding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise BadEncoding(f"unsupported Content-Encoding {coding!r}")
    return "gzip" if coding == "x-gzip" else coding


def read_decoded(raw_chunks: Iterable[bytes], content_encoding: str, limit: int) -> bytes:
    """The body decoded per `content_encoding`, reading `raw_chunks` (the undecoded stream) only until `limit`
    decoded bytes are exceeded. Raises BodyTooLarge or BadEncoding."""
    coding = _coding(content_encoding)
    inflater = _Inflater(coding) if coding != "identity" else None
    body = bytearray()
    for raw in raw_chunks:
        room = limit - len(body)
        chunk = inflater.feed(raw, room) if inflater is not None else raw
        if len(chunk) > room:
            raise BodyTooLarge(limit)
        body += chunk
    return bytes(body)
