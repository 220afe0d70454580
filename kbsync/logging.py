"""structlog, configured once by the CLI: console on a TTY, JSON otherwise, secrets redacted.

Event names are constant `noun.verb` strings; values go in keys. Context (tenant, project, doc_id) is bound with
`structlog.contextvars.bound_contextvars` around a unit of work and restored after it.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "redact_secrets"]

_SECRET_KEY = re.compile(r"(token|secret|password|authorization|signature|api_key|cookie)", re.IGNORECASE)
_SECRET_IN_TEXT = re.compile(
    r"(?i)(api_access_token|authorization|bearer|token|password|secret)([\"']?\s*[:=]\s*[\"']?|\s+)"
    r"((?:bearer\s+)?[^\s\"'&,;]+)"  # "Authorization: Bearer <token>": the token, not the word Bearer
)
REDACTED = "[redacted]"


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Overwrite values under secret-looking keys, and secret-looking `key=value` runs inside strings.

    The second net: secrets are never bound or logged on purpose (invariant 10).
    """
    for key, value in list(event_dict.items()):
        if _SECRET_KEY.search(key) and not key.endswith("_env"):
            event_dict[key] = REDACTED
        elif isinstance(value, str) and key != "event":
            event_dict[key] = _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", value)
    return event_dict


def configure_logging(
    log_format: Literal["auto", "json", "console"] = "auto", log_level: str = "info", *, stream: TextIO | None = None
) -> None:
    """Configure structlog and route stdlib loggers (uvicorn, httpx, apscheduler) through the same chain.

    Logs go to stderr so that `--json` output on stdout stays machine-readable.
    """
    stream = stream or sys.stderr
    use_console = log_format == "console" or (log_format == "auto" and stream.isatty())
    level = getattr(logging, log_level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    # Plain tracebacks only: rich's, with show_locals, printed every local of every frame (issue 17: the bearer
    # token 21 times for one bad query). The traceback text is formatted first and redacted like any value.
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty dependencies: their INFO lines would drown ours (httpx logs every request at INFO).
    for name in ("httpx", "httpcore", "chromadb", "apscheduler.executors.default", "onnxruntime"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
