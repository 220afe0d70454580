"""kbsync/logging.py: what a crash logs. Issue 17 item 10: console logging printed the bearer token of a request
through rich tracebacks with `show_locals`."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from kbsync.logging import configure_logging

TOKEN = "query-token-5f1c9a0e7b2d4c83"


class Tty(io.StringIO):
    """A stream that says it is a terminal: what `log_format = "auto"` sees under systemd-less runs."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def _authorize(token: str, tenant: str) -> None:
    header = f"Bearer {token}"  # a local holding the token, as the HTTP routes have
    raise ValueError(f"tenant {tenant!r} is not configured ({len(header)} bytes of header)")


def _crash_during_a_request() -> None:
    log = structlog.get_logger("kbsync.http")
    try:
        _authorize(TOKEN, "acme")
    except ValueError:
        log.exception("request.crashed")
    try:
        _authorize(TOKEN, "acme")
    except ValueError:
        # A stdlib logger, as uvicorn's "Exception in ASGI application" (its name is left out: test servers in
        # this process configure uvicorn's own loggers).
        logging.getLogger("kbsync.tests.stdlib").exception("Exception in ASGI application")


@pytest.mark.parametrize("log_format", ["console", "json", "auto"])
def test_a_crash_with_a_token_in_scope_never_logs_the_token(log_format: str) -> None:
    stream = Tty()
    configure_logging(log_format, "info", stream=stream)  # type: ignore[arg-type]

    _crash_during_a_request()

    text = stream.getvalue()
    assert "request.crashed" in text and "Exception in ASGI application" in text
    assert text.count("ValueError") >= 2, text  # the traceback is there...
    assert TOKEN not in text, text  # ...without the locals that hold the token


def test_a_token_inside_an_exception_message_is_redacted() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    try:
        raise RuntimeError(f"upstream refused Authorization: Bearer {TOKEN}")
    except RuntimeError:
        structlog.get_logger("kbsync").exception("source.crashed")
    text = stream.getvalue()
    assert "source.crashed" in text and "RuntimeError" in text
    assert TOKEN not in text, text
