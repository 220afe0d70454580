"""`kbsync check`: every precondition of a healthy run, each reported on its own line."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kbsync.embedding import default_model_dir, missing_model_files
from kbsync.errors import KbsyncError, SourceError, StateLocked, StoreLocked
from kbsync.settings import (
    ChatwootSourceSettings,
    ConfluenceSourceSettings,
    FilesSourceSettings,
    NotionSourceSettings,
    Settings,
    TenantSettings,
)
from kbsync.sources._http import HttpOptions
from kbsync.sources._json import json_list, json_object

if TYPE_CHECKING:
    from kbsync.sources.chatwoot import ChatwootClient

__all__ = ["CheckResult", "run_checks"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def run_checks(
    settings: Settings,
    *,
    chatwoot_options: HttpOptions | None = None,
    api_options: HttpOptions | None = None,
) -> Iterator[CheckResult]:
    """Settings were already validated by loading them; this checks what loading cannot.

    `chatwoot_options` tunes the Chatwoot requests; by default a check waits and retries
    less than a sync does, so an unreachable Chatwoot fails the check within seconds. `api_options`
    does the same for Confluence and Notion sources."""
    yield CheckResult("settings", True, f"{settings.source_file} ({len(settings.tenants)} tenants)")
    yield from _secret_checks(settings)
    yield _model_check(settings)
    yield _state_check(settings)
    yield from _store_checks(settings)
    yield from _lexical_checks(settings)
    for tenant in settings.tenants:
        for project in tenant.projects:
            for source in project.sources:
                if isinstance(source, FilesSourceSettings):
                    ok = source.path.is_dir()
                    detail = f"{source.path}" + ("" if ok else " does not exist")
                    yield CheckResult(f"{tenant.id}/{project.id} {source.source_id}", ok, detail)
                elif isinstance(source, ConfluenceSourceSettings | NotionSourceSettings):
                    from kbsync.sources.apis import check_api_source

                    ok, detail = check_api_source(source, api_options)
                    yield CheckResult(f"{tenant.id}/{project.id} {source.source_id}", ok, detail)
        yield from _chatwoot_checks(tenant, chatwoot_options)


def _secret_checks(settings: Settings) -> Iterator[CheckResult]:
    if settings.server.admin_token_env:
        ok = settings.admin_token is not None
        yield CheckResult(
            "admin token",
            ok,
            f"${settings.server.admin_token_env} is set"
            if ok
            else f"${settings.server.admin_token_env} is not set: /v1/status and /v1/resync answer 403",
        )
    for tenant in settings.tenants:
        for label, env_name, value, effect in (
            ("webhook secret", tenant.webhook_secret_env, tenant.webhook_secret, "webhooks are refused (401)"),
            ("query token", tenant.query_token_env, tenant.query_token, "/v1/query refuses this tenant (401)"),
        ):
            if env_name:
                ok = value is not None
                detail = f"${env_name} is set" if ok else f"${env_name} is not set: {effect}"
                yield CheckResult(f"{tenant.id} {label}", ok, detail)


def _model_check(settings: Settings) -> CheckResult:
    model_dir = settings.embedding.model_dir or default_model_dir()
    missing = missing_model_files(model_dir)
    if not missing:
        return CheckResult("model", True, str(model_dir))
    if settings.embedding.model_dir is None:
        return CheckResult("model", True, f"{model_dir} not there yet: Chroma downloads it on first use")
    return CheckResult("model", False, f"{model_dir} lacks {', '.join(missing)}")


def _store_checks(settings: Settings) -> Iterator[CheckResult]:
    """Each store answers: the embedded one (unless another process owns it) and every Chroma server."""
    from contextlib import ExitStack

    from kbsync.store import Store
    from kbsync.wiring import store_targets

    for number, (target, tenants) in enumerate(store_targets(settings).items()):
        name = "store" if number == 0 else f"store of tenant {tenants[0]}"
        with ExitStack() as stack:
            try:
                store = stack.enter_context(Store.open(target, state_dir=settings.state_dir))
                store.heartbeat()
                collections = store.collections()
            except StoreLocked as exc:
                yield CheckResult(name, True, f"owned by a running kbsync process: {exc}")
                continue
            except KbsyncError as exc:
                yield CheckResult(name, False, str(exc))
                continue
            yield CheckResult(name, True, f"{store.description} ({len(collections)} collections)")


def _lexical_checks(settings: Settings) -> Iterator[CheckResult]:
    """Each project's lexical rows (state database) match its collection's chunk count; a mismatch is repaired
    by the next `kbsync resync`. Skipped while a running kbsync owns the state or the store."""
    from contextlib import ExitStack

    from kbsync.lexical import LexicalIndex
    from kbsync.store import collection_name
    from kbsync.wiring import open_state, open_stores

    with ExitStack() as stack:
        try:
            state = open_state(settings)
            stack.callback(state.close)
            lexical = LexicalIndex(state)
            default, tenant_stores = open_stores(settings, stack)
        except (StateLocked, StoreLocked):
            return  # the running process keeps them in step; `state` and `store` already said who owns them
        except KbsyncError as exc:
            yield CheckResult("lexical index", False, str(exc))
            return
        for tenant in settings.tenants:
            store = tenant_stores.get(tenant.id, default)
            for project in tenant.projects:
                try:
                    rows = lexical.count(tenant.id, project.id)
                    chunks = store.count(collection_name(tenant.id, project.id))
                except KbsyncError as exc:
                    yield CheckResult(f"{tenant.id}/{project.id} lexical index", False, str(exc))
                    continue
                ok = rows == chunks
                detail = f"{rows} rows for {chunks} chunks" + ("" if ok else ": run `kbsync resync` to rebuild it")
                yield CheckResult(f"{tenant.id}/{project.id} lexical index", ok, detail)


def _state_check(settings: Settings) -> CheckResult:
    from kbsync.wiring import open_state

    try:
        state = open_state(settings)
    except StateLocked as exc:
        return CheckResult("state", True, f"owned by a running kbsync process: {exc}")
    except KbsyncError as exc:
        return CheckResult("state", False, str(exc))
    try:
        state.ping()
    except KbsyncError as exc:
        return CheckResult("state", False, str(exc))
    finally:
        state.close()
    return CheckResult("state", True, f"{state.dialect} database answers")


def _chatwoot_checks(tenant: TenantSettings, options: HttpOptions | None) -> Iterator[CheckResult]:
    """The tenant's token is accepted (`GET …/portals`), then each configured portal exists, is live, holds
    articles, and has the locales its source filters on. Messages name URLs, never the token."""
    from kbsync.sources.chatwoot import ChatwootClient

    sources = [
        (project.id, source)
        for project in tenant.projects
        for source in project.sources
        if isinstance(source, ChatwootSourceSettings)
    ]
    if not sources:
        return
    options = options or HttpOptions(
        connect_timeout=5.0, read_timeout=10.0, attempts=2, retry_budget_seconds=10.0, requests_per_second=None
    )
    name = f"{tenant.id} chatwoot"
    try:
        client = ChatwootClient(tenant, options)
    except KbsyncError as exc:
        yield CheckResult(name, False, str(exc))
        return
    with client:
        try:
            portals = client.portals()
        except SourceError as exc:
            yield CheckResult(name, False, str(exc))
            return  # every portal check would fail the same way
        yield CheckResult(
            name, True, f"token accepted by {tenant.chatwoot_url} (account {tenant.account_id}, {len(portals)} portals)"
        )
        for project_id, source in sources:
            yield _portal_check(client, f"{tenant.id}/{project_id} {source.source_id}", source)


def _portal_check(client: ChatwootClient, name: str, source: ChatwootSourceSettings) -> CheckResult:
    try:
        portal = client.portal(source.portal)
    except SourceError as exc:
        return CheckResult(name, False, str(exc))
    if portal.get("archived"):
        return CheckResult(name, False, f"portal {source.portal!r} is archived (publicly 404): nothing is indexed")
    meta = json_object(portal, "meta")
    counts = f"{meta.get('all_articles_count', '?')} articles ({meta.get('published_count', '?')} published)"
    if source.locales is None:
        return CheckResult(name, True, f"portal found, {counts}")
    config = json_object(portal, "config")
    allowed = {
        str(item.get("code")): item.get("articles_count")
        for item in json_list(config, "allowed_locales")
        if isinstance(item, dict)
    }
    unknown = [locale for locale in source.locales if locale not in allowed]
    if unknown:
        return CheckResult(
            name,
            False,
            f"portal found, {counts}, but it has no locale {', '.join(map(repr, unknown))} "
            f"(its locales: {', '.join(sorted(allowed)) or 'none'})",
        )
    per_locale = ", ".join(f"{locale}: {allowed[locale]}" for locale in source.locales)
    return CheckResult(name, True, f"portal found, {counts}; articles per configured locale: {per_locale}")
