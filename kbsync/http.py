"""The HTTP API (design.md §5): webhooks, query, resync, status, health, metrics. A thin shell.

The webhook route verifies, stores durably and answers (within 100 ms: Chatwoot waits 5 s and never retries); it
never calls the engine. Blocking work (SQLite, Chroma, the embedder) runs in worker threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from kbsync import __version__
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

MAX_WEBHOOK_BYTES = 1024 * 1024
SIGNATURE_WINDOW_SECONDS = 300


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


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=64)
    project: str = Field(min_length=1, max_length=64)
    query: str = Field(min_length=1, max_length=4000)
    k: int = Field(default=5, ge=1, le=50)
    locale: str | None = Field(default=None, max_length=35)
    group: Literal["doc", "chunk"] = "doc"  # doc: best chunk per article (hybrid); chunk: raw dense chunk ranking
    expand: int = Field(default=0, ge=0, le=3)  # neighbouring chunks on each side added as `context`


class ResyncBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = None
    project: str | None = None
    rebuild: bool = False
    allow_mass_delete: bool = False


def _error(status: int, message: str) -> JSONResponse:
    return error_response(status, message)


def _same(secret: Any, presented: str | None) -> bool:
    """Constant-time comparison of a SecretStr with what a request presented."""
    if secret is None or not presented:
        return False
    return hmac.compare_digest(secret.get_secret_value().encode(), presented.encode())


def create_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI application over one daemon's engine and queue."""
    app = FastAPI(title="kbsync", version=__version__, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False)
    settings = ctx.settings

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

    @app.post("/v1/query")
    async def query(
        body: QueryBody, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> dict[str, Any]:
        """Top-k articles (or chunks) of a project. A tenant's query token opens only that tenant's projects."""
        _authorize_query(settings, body.tenant, credentials.credentials if credentials else None)
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

    @app.post("/v1/resync", dependencies=[Depends(admin)])
    async def resync(body: ResyncBody | None = None) -> dict[str, Any]:
        """Full reconcile of every project (or the ones named), like `kbsync resync`; answers when done."""
        body = body or ResyncBody()
        try:
            keys = ctx.engine.projects(body.tenant, body.project)
        except UnknownProject as exc:
            raise HTTPException(404, str(exc)) from None
        reports = []
        for key in keys:
            report = await asyncio.to_thread(
                ctx.engine.reconcile, key, rebuild=body.rebuild, allow_mass_delete=body.allow_mass_delete
            )
            reports.append(report.as_dict())
        return {"reports": reports}

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
    async def readyz() -> JSONResponse:
        """Ready: started, stores and state database answering, model loaded."""
        if not ctx.ready():
            return JSONResponse({"status": "starting"}, status_code=503)
        problems = await asyncio.to_thread(ctx.engine.problems)
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


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
    tenant = ctx.settings.tenant(tenant_id)
    if tenant is None:
        return "rejected", _error(404, f"unknown tenant {tenant_id!r}")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_WEBHOOK_BYTES):
        return "rejected", _error(413, "body over 1 MiB")
    body = await request.body()
    if len(body) > MAX_WEBHOOK_BYTES:
        return "rejected", _error(413, "body over 1 MiB")
    problem = _signature_problem(tenant, request.headers, body)
    if problem:
        log.warning("webhook.rejected", tenant=tenant_id, reason=problem)
        return "rejected", _error(401, problem)
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
        enqueued = await asyncio.to_thread(
            ctx.queue.enqueue,
            tenant_id,
            projects,
            notice.source_id,
            notice.event.value,
            payload,
            request.headers.get("x-chatwoot-delivery") or None,
        )
    except KbsyncError as exc:
        log.error("webhook.not_stored", tenant=tenant_id, error=str(exc))
        return "unavailable", _error(503, "the event could not be stored; retry later")
    if enqueued.duplicate:
        return "duplicate", JSONResponse({"status": "duplicate"}, status_code=200)
    ctx.wake_workers()
    log.info(
        "webhook.queued",
        tenant=tenant_id,
        projects=projects,
        webhook_event=notice.event.value,
        article_id=notice.article_id,
    )
    return "queued", JSONResponse({"status": "queued"}, status_code=202)


def _signature_problem(tenant: TenantSettings, headers: Any, body: bytes) -> str | None:
    """Why a request's signature is not acceptable, or None."""
    if tenant.webhook_secret is None:
        return "webhooks are disabled for this tenant (no webhook secret configured)"
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
    expected = sign(tenant.webhook_secret.get_secret_value(), timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        return "signature does not match"
    return None
