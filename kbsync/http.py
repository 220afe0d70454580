"""The HTTP API (README "HTTP API"): webhooks, query, resync, status, health, metrics. A thin shell.

The webhook route verifies, stores durably and answers (within 100 ms: Chatwoot waits 5 s and never retries); it
never calls the engine. Blocking work (SQLite, Chroma, the embedder) runs in worker threads, off the event loop:
webhook intake and readiness in a pool of their own (`ApiContext.intake`), so queries filling the default pool do
not delay them. Bodies are read after authentication, capped and under a deadline (kbsync/bodies.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers

from kbsync import __version__
from kbsync.bodies import BodyError, read_capped, strict_json
from kbsync.engine import Engine
from kbsync.errors import KbsyncError, UnknownProject
from kbsync.http_errors import error_response, install_error_handlers
from kbsync.metrics import Metrics
from kbsync.queue import Queue
from kbsync.runs import ProjectKey
from kbsync.settings import Settings, TenantSettings
from kbsync.status import status_payload
from kbsync.webhooks import parse_notice, projects_of_portal

__all__ = ["ApiContext", "create_app", "sign"]

log = structlog.get_logger(__name__)

SIGNATURE_WINDOW_SECONDS = 300
# One answer for an unknown tenant and a bad signature: the webhook route does not tell who is configured.
NOT_SIGNED = "the webhook is not signed with this tenant's secret"

Body = TypeVar("Body", bound=BaseModel)  # a request body model
# Starts a resync of these projects with the request's options; the future gets their reports (as dicts).
ResyncSubmitter = Callable[[list["ProjectKey"], "ResyncBody"], concurrent.futures.Future[list[dict[str, Any]]]]
AuditSubmitter = Callable[[list["ProjectKey"], "AuditBody"], concurrent.futures.Future[list[dict[str, Any]]]]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Chatwoot's webhook signature: `sha256=` + hex HMAC-SHA256(secret, "<timestamp>.<raw body>")."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass
class ApiContext:
    """What the routes need; built by the daemon."""

    settings: Settings
    engine: Engine
    queue: Queue
    metrics: Metrics
    ready: Callable[[], bool]
    wake_workers: Callable[[], None] = lambda: None  # tells idle webhook workers an item was queued
    # Runs resyncs off the request path (the daemon's scheduler): (keys, ResyncBody) -> a future of their reports.
    submit_resync: ResyncSubmitter | None = None
    # Runs audits there too: (keys, AuditBody) -> a future of their reports.
    submit_audit: AuditSubmitter | None = None
    # Webhook intake and /readyz run here, never behind queries or resyncs in the default pool.
    intake: concurrent.futures.Executor | None = None


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=64)
    project: str = Field(min_length=1, max_length=64)
    query: str = Field(min_length=1, max_length=4000)
    k: int = Field(default=5, ge=1, le=50)
    locale: str | None = Field(default=None, max_length=35)
    group: Literal["doc", "chunk"] = "doc"  # doc: best chunk per article (hybrid); chunk: raw dense chunk ranking
    expand: int = Field(default=0, ge=0, le=3)  # neighbouring chunks on each side added as `context`

    @field_validator("query")
    @classmethod
    def _not_blank(cls, query: str) -> str:
        # A blank question embeds to an arbitrary vector: results that answer nothing, so it is refused.
        if not query.strip():
            raise PydanticCustomError("blank", "the question holds only whitespace")
        return query


class AuditBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = None
    project: str | None = None
    repair: bool = False


class ResyncBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = None
    project: str | None = None
    rebuild: bool = False
    allow_mass_delete: bool = False
    wait: bool = False  # answer 200 with the reports when done, instead of 202 at once


def _error(status: int, message: str) -> JSONResponse:
    return error_response(status, message)


async def _body_error(_request: Request, exc: BodyError) -> JSONResponse:
    return error_response(exc.status, exc.message, fields=exc.fields or None)


def _body_model(model: type[Body], raw: bytes, *, empty_ok: bool = False) -> Body:
    """A pydantic model from a request body read by `read_capped`; BodyError (400/422) for what does not fit."""
    if empty_ok and not raw.strip():
        return model()
    value = strict_json(raw)
    try:
        return model.model_validate(value)
    except ValidationError as exc:  # named like FastAPI's own validation errors (kbsync/http_errors.py)
        fields = [
            {"field": ".".join(["body", *(str(p) for p in e["loc"])]), "message": str(e["msg"])} for e in exc.errors()
        ]
        raise BodyError(422, "invalid request", fields) from None


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route reads itself (after authentication)."""
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


def _same(secret: SecretStr | None, presented: str | None) -> bool:
    """Constant-time comparison of a SecretStr with what a request presented."""
    if secret is None or not presented:
        return False
    return hmac.compare_digest(secret.get_secret_value().encode(), presented.encode())


def create_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI application over one daemon's engine and queue."""
    app = FastAPI(title="kbsync", version=__version__, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_exception_handler(BodyError, _body_error)  # type: ignore[arg-type]
    bearer = HTTPBearer(auto_error=False)
    settings = ctx.settings
    server = settings.server

    async def read_body(request: Request, model: type[Body], *, empty_ok: bool = False) -> Body:
        raw = await read_capped(request, server.max_body_bytes, server.body_timeout_seconds)
        return _body_model(model, raw, empty_ok=empty_ok)

    async def light(fn: Callable[..., Any], *args: Any) -> Any:
        """Run short blocking work (queue insert, readiness) in the intake pool."""
        return await asyncio.get_running_loop().run_in_executor(ctx.intake, fn, *args)

    def admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.admin_token is None:
            raise HTTPException(403, f"admin routes are disabled: ${settings.server.admin_token_env} is not set")
        if credentials is None or not _same(settings.admin_token, credentials.credentials):
            raise HTTPException(401, "a valid admin bearer token is required")

    @app.post("/webhooks/{tenant}", status_code=202)
    async def webhook(tenant: str, request: Request) -> JSONResponse:
        """Article events, signed as Chatwoot signs webhooks; stored durably before the 202."""
        outcome, response = await _webhook(ctx, tenant, request)
        ctx.metrics.webhooks.labels(tenant if settings.tenant(tenant) else "unknown", outcome).inc()
        return response

    @app.post("/v1/query", openapi_extra=_schema(QueryBody))
    async def query(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> dict[str, Any]:
        """Top-k articles (or chunks) of a project. A tenant's query token opens only that tenant's projects."""
        token = credentials.credentials if credentials else None
        _known_token(settings, token)  # before the body is read
        body: QueryBody = await read_body(request, QueryBody)
        _authorize_query(settings, body.tenant, token)
        started = time.perf_counter()
        try:
            hits = await asyncio.to_thread(
                ctx.engine.query,
                ProjectKey(body.tenant, body.project),
                body.query,
                k=body.k,
                locale=body.locale,
                group=body.group,
                expand=body.expand,
            )
        except UnknownProject as exc:
            raise HTTPException(404, str(exc)) from None
        except KbsyncError as exc:
            raise HTTPException(503, str(exc)) from None
        return {"results": [h.as_result() for h in hits], "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    def named_projects(tenant: str | None, project: str | None) -> list[ProjectKey]:
        """The projects an admin call names (all when it names none); 404 for one that is not configured."""
        try:
            return ctx.engine.projects(tenant, project)
        except UnknownProject as exc:
            raise HTTPException(404, str(exc)) from None

    @app.post("/v1/resync", dependencies=[Depends(admin)], status_code=202, openapi_extra=_schema(ResyncBody))
    async def resync(request: Request) -> JSONResponse:
        """Full reconcile of every project (or the ones named), like `kbsync resync`, run by the scheduler: 202 at
        once, or with `wait` 200 and the reports when done (awaited without holding a thread)."""
        body: ResyncBody = await read_body(request, ResyncBody, empty_ok=True)
        keys = named_projects(body.tenant, body.project)
        if ctx.submit_resync is None:
            return _error(503, "resync is not available in this process")
        future = ctx.submit_resync(keys, body)
        projects = [{"tenant": k.tenant, "project": k.project} for k in keys]
        if not body.wait:
            return JSONResponse({"status": "accepted", "projects": projects}, status_code=202)
        try:
            reports = await asyncio.wrap_future(future)
        except KbsyncError as exc:
            return _error(503, str(exc))
        return JSONResponse({"reports": reports}, status_code=200)

    @app.post("/v1/audit", dependencies=[Depends(admin)], openapi_extra=_schema(AuditBody))
    async def audit(request: Request) -> JSONResponse:
        """Query every chunk with its own vector, like `kbsync audit`, run by the scheduler; answers with the
        reports when done (awaited without holding a thread)."""
        body: AuditBody = await read_body(request, AuditBody, empty_ok=True)
        keys = named_projects(body.tenant, body.project)
        if ctx.submit_audit is None:
            return _error(503, "audit is not available in this process")
        try:
            reports = await asyncio.wrap_future(ctx.submit_audit(keys, body))
        except KbsyncError as exc:
            return _error(503, str(exc))
        return JSONResponse({"reports": reports}, status_code=200)

    @app.get("/v1/status", dependencies=[Depends(admin)])
    async def status() -> dict[str, Any]:
        """What `kbsync status --json` shows, plus the queue."""
        return await asyncio.to_thread(
            status_payload, settings, ctx.engine.state, ctx.engine.store_for, queue=ctx.queue
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> JSONResponse:
        """Ready: started, stores and state database answering, model loaded. What is wrong (it names stores and
        hosts) only for the admin token."""
        if not ctx.ready():
            return JSONResponse({"status": "starting"}, status_code=503)
        problems = await light(ctx.engine.problems)
        if problems:
            admin_asks = credentials is not None and _same(settings.admin_token, credentials.credentials)
            shown = {"problems": problems} if admin_asks else {}
            return JSONResponse({"status": "unavailable", **shown}, status_code=503)
        return JSONResponse({"status": "ready"})

    metrics_auth = [] if server.public_metrics else [Depends(admin)]

    @app.get("/metrics", dependencies=metrics_auth)
    async def metrics() -> Response:
        """Prometheus text; its labels name every tenant, so it takes the admin token unless
        `server.public_metrics`."""
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _known_token(settings: Settings, token: str | None) -> None:
    """401 unless `token` is the admin token or some tenant's query token: checked before a body is read."""
    if not token:
        raise HTTPException(401, "a bearer token is required")
    if not (_same(settings.admin_token, token) or any(_same(t.query_token, token) for t in settings.tenants)):
        raise HTTPException(401, "unknown bearer token")


def _authorize_query(settings: Settings, tenant_id: str, token: str | None) -> None:
    if not token:
        raise HTTPException(401, "a bearer token is required")
    if _same(settings.admin_token, token):
        return
    tenant = settings.tenant(tenant_id)
    if tenant is not None and _same(tenant.query_token, token):
        return
    if any(_same(t.query_token, token) for t in settings.tenants):
        raise HTTPException(403, f"this token does not open tenant {tenant_id!r}")
    raise HTTPException(401, "unknown bearer token")


async def _webhook(ctx: ApiContext, tenant_id: str, request: Request) -> tuple[str, JSONResponse]:
    """Checks what needs no body first (signature headers, timestamp window), then reads at most
    `max_webhook_bytes`; an unknown tenant and a bad signature get one answer."""
    server = ctx.settings.server
    problem = _header_problem(request.headers)
    if problem:
        return "rejected", _error(401, problem)
    tenant = ctx.settings.tenant(tenant_id)
    try:
        # Read (up to the cap) for an unknown tenant too: a 413 for known tenants only would name them.
        body = await read_capped(request, server.max_webhook_bytes, server.body_timeout_seconds)
        if tenant is None or not _signed(tenant, request.headers, body):
            reason = "unknown tenant" if tenant is None else "signature does not match or no webhook secret"
            log.warning("webhook.rejected", tenant=tenant_id if tenant else None, reason=reason)
            return "rejected", _error(401, NOT_SIGNED)
        strict_json(body)  # 400 not JSON, 422 a lone surrogate: before parse_notice reads it
    except BodyError as exc:
        return "rejected", _error(exc.status, exc.message)
    try:
        notice = parse_notice(body)
    except ValueError as exc:
        return "rejected", _error(400, str(exc))
    if notice is None:
        return "ignored", JSONResponse({"status": "ignored"}, status_code=200)
    if notice.account_id != tenant.account_id:
        return "rejected", _error(403, f"account {notice.account_id} is not tenant {tenant_id!r}'s account")
    projects = projects_of_portal(tenant, notice.portal)
    if not projects:
        return "rejected", _error(404, f"portal {notice.portal!r} is not configured for tenant {tenant_id!r}")
    payload: dict[str, str | int | None] = {"portal": notice.portal, "article_id": notice.article_id}
    if notice.doc_id is not None:
        payload["doc_id"] = notice.doc_id
    try:
        enqueued = await asyncio.get_running_loop().run_in_executor(
            ctx.intake,
            functools.partial(
                ctx.queue.enqueue,
                tenant_id,
                projects,
                notice.source_id,
                notice.event.value,
                payload,
                request.headers.get("x-chatwoot-delivery") or None,
                fingerprint=_fingerprint(request.headers, body),
            ),
        )
    except KbsyncError as exc:
        log.error("webhook.not_stored", tenant=tenant_id, error=str(exc))
        return "unavailable", _error(503, "the event could not be stored; retry later")
    if enqueued.duplicate:
        return "duplicate", JSONResponse({"status": "duplicate"}, status_code=200)
    if enqueued.covered:  # the same signed notice is still queued: it is applied by that item
        log.info("webhook.covered", tenant=tenant_id, projects=projects, webhook_event=notice.event.value)
        return "queued", JSONResponse({"status": "queued"}, status_code=202)
    ctx.wake_workers()
    log.info(
        "webhook.queued",
        tenant=tenant_id,
        projects=projects,
        webhook_event=notice.event.value,
        article_id=notice.article_id,
    )
    return "queued", JSONResponse({"status": "queued"}, status_code=202)


def _header_problem(headers: Headers) -> str | None:
    """Why a webhook is refused before its tenant is looked up or its body read (the same for every tenant)."""
    timestamp = headers.get("x-chatwoot-timestamp")
    signature = headers.get("x-chatwoot-signature")
    if not timestamp or not signature:
        return "missing X-Chatwoot-Timestamp or X-Chatwoot-Signature"
    try:
        sent = int(timestamp)
    except ValueError:
        return "X-Chatwoot-Timestamp is not a unix time"
    if abs(time.time() - sent) > SIGNATURE_WINDOW_SECONDS:
        return "X-Chatwoot-Timestamp is outside the 300 s window"
    return None


def _signed(tenant: TenantSettings, headers: Headers, body: bytes) -> bool:
    """Whether the body carries the tenant's signature (headers already checked by `_header_problem`)."""
    if tenant.webhook_secret is None:
        return False
    expected = sign(tenant.webhook_secret.get_secret_value(), headers["x-chatwoot-timestamp"], body)
    return hmac.compare_digest(expected.encode(), headers["x-chatwoot-signature"].strip().encode())


def _fingerprint(headers: Headers, body: bytes) -> str:
    """What identifies one signed delivery whatever its X-Chatwoot-Delivery says: a captured webhook replayed
    under a new or no delivery id within the signature window is a duplicate."""
    signed = headers["x-chatwoot-timestamp"].encode() + b"." + body
    return "sha256:" + hashlib.sha256(signed).hexdigest()
