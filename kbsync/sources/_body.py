"""Response bodies read with a bound on DECODED bytes, for every source that reads servers it does not trust.

httpx's own decoders inflate each network chunk whole: 64 KiB of gzip can become 64 MiB before a caller sees a
byte, and `Content-Encoding: gzip, gzip` multiplies that again. So the raw stream is read here and inflated with
`max_length`, never holding more than the limit allows; one content coding (gzip or deflate) at most.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from typing import Any

import httpx

__all__ = ["ACCEPT_ENCODING", "BodyTooLarge", "BoundedDecoder", "UndecodableBody", "read_bounded"]

ACCEPT_ENCODING = "gzip, deflate"  # what BoundedDecoder undoes: the Accept-Encoding every source sends
_CHUNK = 64 * 1024


class BodyTooLarge(ValueError):
    """A body larger than allowed once decoded."""


class UndecodableBody(ValueError):
    """A body whose Content-Encoding is unknown, stacked, or corrupt."""


class BoundedDecoder:
    """Undo one `Content-Encoding` (identity, gzip, deflate) chunk by chunk, never holding more than `limit`
    decoded bytes. Raises `UndecodableBody` for a stacked, unknown or corrupt encoding, `BodyTooLarge` past the
    limit. Reusable by any source that reads bodies from servers it does not trust."""

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            # Each layer multiplies the ratio; no API we read stacks them, so one is all we undo.
            raise UndecodableBody(f"stacked Content-Encoding {content_encoding!r} refused")
        coding = codings[0] if codings else ""
        if coding in ("gzip", "x-gzip"):
            self._inflater: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._inflater = _DeflateInflater()
        elif coding == "":
            self._inflater = None
        else:
            raise UndecodableBody(f"unsupported Content-Encoding {coding!r}")
        self._limit = limit
        self._size = 0
        self._parts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        """Decode one raw chunk into the body."""
        if self._inflater is None:
            self._keep(data)
            return
        try:
            while data:
                out = self._inflater.decompress(data, _CHUNK)
                self._keep(out)
                data = self._inflater.unconsumed_tail
        except zlib.error as exc:
            raise UndecodableBody(f"corrupt compressed body: {exc}") from None

    def finish(self) -> bytes:
        """The whole decoded body; a compressed stream that stopped early is undecodable."""
        if self._inflater is not None:
            try:
                self._keep(self._inflater.flush())
            except zlib.error as exc:
                raise UndecodableBody(f"corrupt compressed body: {exc}") from None
            if not self._inflater.eof:
                raise UndecodableBody("compressed body cut off")
        return b"".join(self._parts)

    def _keep(self, out: bytes) -> None:
        self._size += len(out)
        if self._size > self._limit:
            raise BodyTooLarge(f"body larger than {self._limit} bytes once decoded")
        if out:
            self._parts.append(out)


class _DeflateInflater:
    """`deflate` is zlib-wrapped per the RFC, raw in some servers: decide on the first bytes."""

    def __init__(self) -> None:
        self._inner: Any = None

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._inner is None:
            wbits = zlib.MAX_WBITS if data[:1] and (data[0] & 0x0F) == 8 else -zlib.MAX_WBITS
            self._inner = zlib.decompressobj(wbits)
        return self._inner.decompress(data, max_length)

    @property
    def unconsumed_tail(self) -> bytes:
        return self._inner.unconsumed_tail if self._inner is not None else b""

    @property
    def eof(self) -> bool:
        return self._inner is not None and self._inner.eof

    def flush(self) -> bytes:
        return self._inner.flush() if self._inner is not None else b""


def read_bounded(
    response: httpx.Response, *, limit: int, deadline: float | None = None, chunks: Iterable[bytes] | None = None
) -> bytes:
    """Read a streamed response's body, decoded, within `limit` bytes and before `deadline` (time.monotonic()).

    Raises `BodyTooLarge`, `UndecodableBody`, `httpx.ReadTimeout` once the deadline passed, and httpx's transport
    errors for a connection cut mid-body. `chunks` defaults to the raw (still encoded) byte stream."""
    if chunks is None and response.is_stream_consumed:
        # A response made in memory (an httpx.MockTransport's) was read, and decoded, when it was built.
        decoder = BoundedDecoder(None, limit)
        decoder.feed(response.content)
        return decoder.finish()
    decoder = BoundedDecoder(response.headers.get("content-encoding"), limit)
    for chunk in chunks if chunks is not None else response.iter_raw():
        decoder.feed(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise httpx.ReadTimeout("the response took longer than the attempt deadline")
    return decoder.finish()
