"""One error body for every answer of the HTTP API: `{"error": {"status": 404, "message": "..."}}`.

Routes that answer an error themselves, FastAPI's `HTTPException`, request validation (422, with the offending
`fields`) and unexpected failures (500) all produce this shape, so a client (the CLI included) reads errors one way.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["error_message", "error_response", "install_error_handlers"]


def error_response(
    status: int,
    message: str,
    *,
    fields: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The API's error answer; `fields` (validation errors) name each offending input."""
    error: dict[str, object] = {"status": status, "message": message}
    if fields:
        error["fields"] = fields
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def error_message(body: object) -> str | None:
    """The message of an error body of this API (for clients), or None when `body` is not one."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message: str = error["message"]
        fields = error.get("fields")
        if isinstance(fields, list) and fields:
            message += ": " + "; ".join(f"{f.get('field')}: {f.get('message')}" for f in fields if isinstance(f, dict))
        return message
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Make FastAPI's own errors (HTTPException, validation, unhandled exceptions) answer in the API's shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": ".".join(str(part) for part in error.get("loc", ())), "message": str(error.get("msg", ""))}
            for error in exc.errors()
        ]
        return error_response(422, "invalid request", fields=fields)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        return error_response(500, "internal error (see the daemon's log)")
