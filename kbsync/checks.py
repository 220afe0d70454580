"""`kbsync check`: every precondition of a healthy run, each reported on its own line."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kbsync.embedding import default_model_dir, missing_model_files
from kbsync.errors import KbsyncError
from kbsync.settings import FilesSourceSettings, Settings

__all__ = ["CheckResult", "run_checks"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings) -> Iterator[CheckResult]:
    """Settings were already validated by loading them; this checks what loading cannot."""
    yield CheckResult("settings", True, f"{settings.source_file} ({len(settings.tenants)} tenants)")
    yield from _secret_checks(settings)
    yield _model_check(settings)
    yield _store_check(settings)
    for tenant in settings.tenants:
        for project in tenant.projects:
            for source in project.sources:
                if isinstance(source, FilesSourceSettings):
                    ok = source.path.is_dir()
                    detail = f"{source.path}" + ("" if ok else " does not exist")
                    yield CheckResult(f"{tenant.id}/{project.id} {source.source_id}", ok, detail)


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


def _store_check(settings: Settings) -> CheckResult:
    from kbsync.store import Store

    try:
        store = Store.open_embedded(settings.state_dir)
    except KbsyncError as exc:
        return CheckResult("store", False, str(exc))
    try:
        collections = store.collections()
    except KbsyncError as exc:
        return CheckResult("store", False, str(exc))
    finally:
        store.close()
    return CheckResult("store", True, f"{store.description} ({len(collections)} collections)")
