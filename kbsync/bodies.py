"""Request bodies read with a hard size cap and a total deadline, and JSON that must be valid Unicode.

The HTTP routes read their bodies here, after authentication, instead of letting FastAPI read and parse them first:
an unauthenticated or oversized request costs at most `limit` bytes of memory and `seconds` of a connection
(issue 17: an unsigned 1 GiB chunked webhook was read whole before its 413; a body trickled byte by byte held a
connection for as long as the sender liked).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

__all__ = ["BodyError", "has_lone_surrogate", "read_capped", "strict_json"]


class BodyError(Exception):
    """A request body that is refused: `status` is the HTTP answer (413, 408, 400, 422), `message` says why,
    `fields` (422) name each offending input."""

    def __init__(self, status: int, message: str, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or []


async def read_capped(request: Request, limit: int, seconds: float) -> bytes:
    """The body of `request`, refused (413) as soon as it is declared or read past `limit` bytes, and (408) when
    it has not arrived within `seconds`, or (400) its sender hung up. What is over the cap is never read: the server
    closes the connection."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyError(413, f"request body over {_size(limit)}")
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise BodyError(413, f"request body over {_size(limit)}")
    except TimeoutError:
        raise BodyError(408, f"request body not received within {seconds:g} s") from None
    except ClientDisconnect:  # the sender went away: nothing to answer, and nothing gone wrong here
        raise BodyError(400, "the client closed the connection before its body was complete") from None
    return bytes(body)


def strict_json(raw: bytes) -> Any:
    """Parse a JSON body; 400 for what is not JSON, 422 for a string holding a lone surrogate (`"\\ud800"`), which
    Python's json accepts but no UTF-8 text can hold (it made a 500 deeper down)."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError(400, f"body is not JSON: {exc}") from None
    if has_lone_surrogate(value):
        raise BodyError(422, "body holds a lone UTF-16 surrogate (like \\ud800): strings must be valid Unicode")
    return value


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) inside a parsed JSON value cannot be encoded as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _size(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"
