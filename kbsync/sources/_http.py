"""The HTTP layer every API source shares: one pooled client per source, retries within a time budget, one
`Retry-After` parser, one mapping from httpx errors and statuses to kbsync's `SourceError`s, optional pacing and
bounded bodies (`_body`).

- `HttpClient.get_json` / `request_json`: one logical request, retried with exponential backoff plus jitter on
  429, 5xx, timeouts, broken connections and cut-off JSON until `retry_budget_seconds` is spent (no attempt count:
  a slow server and a fast-failing one get the same patience). A `Retry-After` longer than what the budget has
  left stops at once rather than sleeping past it.
- Each attempt has a total deadline (`attempt_deadline_seconds`): httpx's timeouts bound each read, so a server
  trickling one byte a second would otherwise hold a request for ever.
- Bodies are read raw and decoded by `_body.read_bounded`, at most `max_body_bytes` once decoded (httpx inflates a
  whole network chunk at once, so a small gzip bomb could take gigabytes); a stacked `Content-Encoding` is refused.
- Errors: `RejectedStatus` (permanent, `.status`) for 4xx, `UnavailableStatus` (transient, `.status`) once a 429 or
  5xx outlived the budget, `SourceUnavailable` for timeouts and connection failures, `SourceRejected` for a body
  that is not JSON, too large, or oddly encoded. Messages name the URL, never a secret.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import httpx
import structlog
import tenacity

from kbsync import __version__
from kbsync.errors import SourceRejected, SourceUnavailable
from kbsync.sources._body import ACCEPT_ENCODING, BodyTooLarge, UndecodableBody, read_bounded

__all__ = [
    "USER_AGENT",
    "Hint",
    "HttpClient",
    "HttpOptions",
    "Pacer",
    "RejectedStatus",
    "UnavailableStatus",
    "parse_retry_after",
    "transport_failure",
]

log = structlog.get_logger(__name__)

USER_AGENT = f"kbsync/{__version__}"

# What to tell the user about a refused status: a text appended to "HTTP <status> (<server text>)", or a function
# of the (scrubbed) server text that words the whole message, for sources whose messages lead with the cause.
Hint = str | Callable[[str], str]


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """How an `HttpClient` waits, retries and paces itself; tests shrink these to stay fast."""

    connect_timeout: float = 5.0
    read_timeout: float = 20.0  # per read; the attempt as a whole is bounded by attempt_deadline_seconds
    attempt_deadline_seconds: float = 60.0
    retry_budget_seconds: float = 60.0  # no new attempt starts after this much time spent on one request
    # Per request, the first one included; None: only the time budget bounds the retries. A throttle that answers
    # 429 without Retry-After for a whole window (Chatwoot's Rack::Attack) outlasts any small attempt count.
    attempts: int | None = None
    backoff_initial: float = 0.5  # first wait; doubles per attempt, plus up to this much random jitter
    backoff_max: float = 10.0
    requests_per_second: float | None = None  # None: no pacing
    max_body_bytes: int = 32 * 1024 * 1024  # decoded


# ---------------------------------------------------------------------------------------------- errors


class RejectedStatus(SourceRejected):
    """The server answered a status that retrying will not change (4xx other than 429, a redirect)."""

    def __init__(self, message: str, *, status: int, source: str = "", url: str = "") -> None:
        super().__init__(message, source=source, url=url)
        self.status = status


class UnavailableStatus(SourceUnavailable):
    """A 429 or 5xx that lasted the whole retry budget."""

    def __init__(self, message: str, *, status: int, source: str = "", url: str = "") -> None:
        super().__init__(message, source=source, url=url)
        self.status = status


class _Retryable(Exception):
    """One attempt failed in a way a later attempt may not."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------- helpers


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` in seconds from delta-seconds or an HTTP date (never negative), or None when absent or bad."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate_to_datetime leaves "-0000" naive
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def transport_failure(exc: httpx.TransportError) -> str:
    """What a failed exchange was, for an error message: a timeout, or a connection that failed (refused, reset,
    DNS, a body cut off mid-way). Every source words these the same way; a retry may help with either."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"connection failed ({type(exc).__name__}: {exc})"


class Pacer:
    """At most `requests_per_second` request starts, shared by every thread using it."""

    def __init__(self, requests_per_second: float | None) -> None:
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        """Block until this caller's slot; slots are reserved under the lock, slept outside it."""
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


# ---------------------------------------------------------------------------------------------- the client


class HttpClient:
    """One pooled `httpx.Client` for one source: JSON requests with retries, pacing and error mapping.

    `hints` map a status to what the user should fix (401: "check token_env", see `Hint`); a call may add its
    own, and name the `source` its errors carry when one client serves several. The secrets in `secrets` (and
    every header value) are scrubbed from server text quoted in errors. Redirects are not followed: a redirect
    would carry the credentials wherever it points (`redirect_hint` says what to configure instead). Close it, or
    use it as a context manager; `requests` counts logical requests (retries not counted), `attempts` every
    attempt.
    """

    def __init__(
        self,
        base_url: str,
        *,
        source: str,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        options: HttpOptions | None = None,
        hints: Mapping[int, Hint] | None = None,
        secrets: Sequence[str] = (),
        transport: httpx.BaseTransport | None = None,
        log_event: str = "http.retry",
        redirect_hint: str = "configure the final address",
    ) -> None:
        self.source = source
        self.options = options or HttpOptions()
        self._hints = dict(hints or {})
        self._redirect_hint = redirect_hint
        self._pacer = Pacer(self.options.requests_per_second)
        self._backoff = tenacity.wait_exponential(
            multiplier=self.options.backoff_initial, max=self.options.backoff_max
        ) + tenacity.wait_random(0, self.options.backoff_initial)
        # A header value and its credential part ("Bearer <token>"): servers echo either.
        header_values = [part for value in (headers or {}).values() for part in (value, value.split(" ")[-1])]
        self._secrets = sorted({s for s in (*secrets, *header_values) if len(s) >= 8}, key=len, reverse=True)
        self._log_event = log_event
        self._lock = threading.Lock()
        self.requests = 0
        self.attempts = 0
        self._http = httpx.Client(
            base_url=base_url,
            headers={
                "accept": "application/json",
                "accept-encoding": ACCEPT_ENCODING,
                "user-agent": USER_AGENT,
                **(headers or {}),
            },
            auth=auth,
            timeout=httpx.Timeout(self.options.read_timeout, connect=self.options.connect_timeout),
            follow_redirects=False,
            transport=transport,
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool; idempotent."""
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------------

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """The absolute URL of `path` (as errors name it)."""
        return str(self._http.build_request("GET", path, params=params).url)

    def get_json(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        hints: Mapping[int, Hint] | None = None,
        source: str | None = None,
    ) -> Any:
        """GET `path` and decode its JSON body; see the class docstring for what it raises."""
        return self.request_json("GET", path, params=params, hints=hints, source=source)

    def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        hints: Mapping[int, Hint] | None = None,
        source: str | None = None,
    ) -> Any:
        """One logical request, retried on transient failures within the budget; its decoded JSON body."""
        url = self.url(path, params)
        source = source or self.source
        with self._lock:
            self.requests += 1
        started = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            stop=self._stop,
            wait=self._wait,
            before_sleep=lambda state: log.warning(
                self._log_event,
                source=source,
                url=url,
                attempt=state.attempt_number,
                reason=str(state.outcome.exception()) if state.outcome else "",
                wait_seconds=round(state.next_action.sleep, 3) if state.next_action else 0,
            ),
            reraise=True,
        )
        call = _Call(method, path, params, json_body, url, source, {**self._hints, **(hints or {})})
        try:
            return retrying(self._attempt, call)
        except _Retryable as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            message = f"{exc.reason} (gave up after {attempts} attempts in {time.monotonic() - started:.1f} s)"
            if exc.status is not None:
                raise UnavailableStatus(message, status=exc.status, source=source, url=url) from exc
            raise SourceUnavailable(message, source=source, url=url) from exc

    def _attempt(self, call: _Call) -> Any:
        self._pacer.wait()
        with self._lock:
            self.attempts += 1
        deadline = time.monotonic() + self.options.attempt_deadline_seconds
        try:
            with self._http.stream(call.method, call.path, params=call.params, json=call.json_body) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                    raise _Retryable(f"HTTP {status}", status=status, retry_after=retry_after)
                body = self._body(response, call, deadline)
        except httpx.TransportError as exc:  # timed out, refused, reset, DNS, a body cut off mid-way
            raise _Retryable(transport_failure(exc)) from exc
        if status != 200:
            raise self._rejected(status, response, body, call)
        return self._decode(body, response, call)

    def _body(self, response: httpx.Response, call: _Call, deadline: float) -> bytes:
        try:
            return read_bounded(response, limit=self.options.max_body_bytes, deadline=deadline)
        except (BodyTooLarge, UndecodableBody) as exc:
            raise SourceRejected(str(exc), source=call.source, url=call.url) from None

    def _rejected(self, status: int, response: httpx.Response, body: bytes, call: _Call) -> RejectedStatus:
        hint = call.hints.get(status)
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            message = f"redirected (HTTP {status}) to {location!r}: {self._redirect_hint}"
        elif callable(hint):
            message, hint = hint(self.scrub(_error_text(body))), None
        else:
            message = f"HTTP {status} ({self.scrub(_error_text(body))})"
        text = f"{message}: {hint}" if isinstance(hint, str) and hint else message
        return RejectedStatus(text, status=status, source=call.source, url=call.url)

    def _decode(self, body: bytes, response: httpx.Response, call: _Call) -> Any:
        """JSON that does not parse was cut off on the way (retried); a body that is not JSON at all is some
        other service answering (an HTML login page: permanent)."""
        try:
            return json.loads(body)
        except ValueError:
            content_type = response.headers.get("content-type", "")
            if "json" in content_type:
                raise _Retryable(f"truncated or invalid JSON body ({len(body)} bytes)") from None
            snippet = self.scrub(body[:60].decode("utf-8", "replace").strip())
            raise SourceRejected(
                f"expected JSON, got {content_type or 'no content type'} ({snippet!r}...)",
                source=call.source,
                url=call.url,
            ) from None

    def scrub(self, text: str) -> str:
        """Server text bound for a message, minus our secrets (an error page may echo request headers)."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff with jitter; never shorter than a Retry-After, never past the retry budget."""
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            backoff = max(backoff, exc.retry_after)
        remaining = self.options.retry_budget_seconds - (state.seconds_since_start or 0.0)
        return max(0.0, min(backoff, remaining))

    @property
    def _stop(self) -> tenacity.stop.stop_base:
        """The time budget (and an attempt cap where the options set one), or a Retry-After past the budget."""
        budget = self.options.retry_budget_seconds
        cap = [tenacity.stop_after_attempt(self.options.attempts)] if self.options.attempts else []
        return tenacity.stop_any(tenacity.stop_after_delay(budget), _RetryAfterPastBudget(budget), *cap)


class _RetryAfterPastBudget(tenacity.stop.stop_base):
    """Stop at once when the server asks for a longer pause than the budget has left."""

    def __init__(self, budget_seconds: float) -> None:
        self._budget = budget_seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if not isinstance(exc, _Retryable) or exc.retry_after is None:
            return False
        return exc.retry_after > self._budget - (retry_state.seconds_since_start or 0.0)


@dataclass(frozen=True, slots=True)
class _Call:
    """One logical request, as each of its attempts sends it and its errors name it."""

    method: str
    path: str
    params: Mapping[str, Any] | None
    json_body: Any
    url: str
    source: str
    hints: Mapping[int, Hint]


def _error_text(body: bytes) -> str:
    """An API's error message (`message`, `error`, `errors[0].message`), else the start of the body."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("message", "error"):
            if isinstance(parsed.get(key), str):
                return parsed[key][:200]
        errors = parsed.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            text = first.get("title") or first.get("message") or first.get("detail")
            if isinstance(text, str):
                return text[:200]
    return body[:120].decode("utf-8", "replace").strip() or "empty body"
