"""Settings: `settings.toml` plus `KBSYNC_<SECTION>__<KEY>` environment overrides (README "Configuration").

`load_settings` is the only reader of the settings file and of the environment. Secrets never live in the file:
the file names the environment variable that holds each secret, and `load_settings` resolves those variables once
into `SecretStr` values that leave this module only in the call that sends them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from kbsync.errors import ConfigError
from kbsync.source_settings import (
    ApiSourceSecrets,
    ChatwootSourceSettings,
    ConfluenceSourceSettings,
    EnvName,
    FilesSourceSettings,
    NotionSourceSettings,
    SourceSettings,
    WebSourceSettings,
)
from kbsync.source_settings import Section as _Section

__all__ = [
    "ChatwootSourceSettings",
    "ChromaSettings",
    "ChunkingSettings",
    "ConfluenceSourceSettings",
    "EmbeddingSettings",
    "FilesSourceSettings",
    "NotionSourceSettings",
    "ProjectSettings",
    "ReachabilitySettings",
    "RetentionSettings",
    "RetrievalSettings",
    "ScheduleSettings",
    "ServerSettings",
    "Settings",
    "SourceSettings",
    "StateSettings",
    "SyncSettings",
    "TenantChromaSettings",
    "TenantSettings",
    "WebSourceSettings",
    "config_path",
    "load_settings",
]

ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
Id = Annotated[str, Field(pattern=ID_PATTERN, max_length=40)]


class ChromaSettings(_Section):
    mode: Literal["embedded", "http"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    ssl: bool = False
    auth_token_env: EnvName = ""
    database: str = "default_database"


class TenantChromaSettings(_Section):
    """A tenant's own Chroma server; keys not given are taken from `[chroma]`."""

    mode: Literal["http"] = "http"
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    ssl: bool | None = None
    auth_token_env: EnvName | None = None
    database: str | None = None


class StateSettings(_Section):
    url: str = ""
    password_env: EnvName = ""
    lease_seconds: int = Field(default=30, ge=5, le=3600)

    @field_validator("url")
    @classmethod
    def _postgres_or_empty(cls, value: str) -> str:
        if value and not re.match(r"^postgresql(\+psycopg)?://", value):
            raise ValueError('must be "" (SQLite under state_dir) or a postgresql:// URL')
        if value and re.match(r"^postgresql(\+psycopg)?://[^/@]*:[^/@]*@", value):
            raise ValueError("must not carry a password: name its variable in state.password_env")
        return value


class EmbeddingSettings(_Section):
    model_dir: Path | None = None
    batch_size: int = Field(default=32, ge=1, le=1024)

    @field_validator("model_dir", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return None if value == "" else value


class ChunkingSettings(_Section):
    # 256 is the model's limit (special tokens included); the default is chosen by bench/retrieval.py.
    max_tokens: int = Field(default=192, ge=32, le=256)
    # Share of the budget a chunk repeats from the previous one of its section (whole sentences); 0 = none. Off by
    # default: bench/retrieval.py measured no gain at 192 tokens (README "Query").
    overlap: float = Field(default=0.0, ge=0.0, le=0.5)


class RetrievalSettings(_Section):
    # Weight of the lexical leg in the fused per-document score (0 = dense only); chosen by bench/retrieval.py.
    lexical_weight: float = Field(default=0.4, ge=0.0, le=1.0)
    # Chunks each leg returns before grouping per document.
    candidates: int = Field(default=100, ge=10, le=500)


class ReachabilitySettings(_Section):
    """Every live chunk must be findable by a query with its own vector (chroma-core/chroma#7758)."""

    # Query each written chunk with its own vector after every write group, and repair what no query returns.
    verify_writes: bool = True
    # Neighbours asked for; a chunk missing from its own top k is asked again with a wider k before it counts.
    k: int = Field(default=10, ge=1, le=100)
    # Share of a collection unreachable at once above which it is rebuilt rather than re-written chunk by chunk.
    rebuild_share: float = Field(default=0.02, gt=0.0, le=1.0)
    # The daemon audits every project this often (0: never), jittered by a tenth of it (at most an hour).
    audit_interval_hours: float = Field(default=24.0, ge=0.0)
    audit_repair: bool = True


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=1, le=65535)
    admin_token_env: EnvName = "KBSYNC_ADMIN_TOKEN"
    # Limits (README "Security"): bodies are read after authentication, up to these caps, within this deadline.
    max_webhook_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)  # /v1/query, /v1/resync
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    limit_concurrency: int = Field(default=200, ge=1, le=100_000)  # open connections; over it: 503
    keep_alive_seconds: int = Field(default=5, ge=1, le=300)
    public_metrics: bool = False  # /metrics without the admin token (its labels name every tenant)


class ScheduleSettings(_Section):
    poll_interval_seconds: int = Field(default=60, ge=5)
    reconcile_interval_minutes: int = Field(default=360, ge=1)
    jitter_seconds: int = Field(default=30, ge=0)


class SyncSettings(_Section):
    """The mass-delete breaker (kbsync.deletion_guard): a run deletes at most this share of a web or files source's
    documents once it holds `mass_delete_min_docs`; `kbsync resync --allow-mass-delete` lifts it for one run."""

    max_delete_fraction: float = Field(default=0.5, gt=0, le=1)
    mass_delete_min_docs: int = Field(default=5, ge=1)


class RetentionSettings(_Section):
    """How long finished records are kept in the state database; pruned by the daemon (kbsync/retention.py)."""

    runs_days: float = Field(default=30, gt=0)  # run records older than this go (the newest of each kind stays)
    runs_per_project: int = Field(default=10_000, ge=10)  # and at most this many per project (a 60 s poll: 1440/day)
    done_items_days: float = Field(default=7, gt=0)  # applied webhook queue items
    dead_items_days: float = Field(default=30, gt=0)  # dead webhook queue items (shown by `kbsync status` until then)
    # Delivery ids deduplicate webhooks; a replay older than the 300 s signature window is refused anyway.
    deliveries_days: float = Field(default=1, ge=0.01)
    interval_minutes: int = Field(default=60, ge=1)  # how often the daemon prunes (jittered)
    batch_rows: int = Field(default=1000, ge=1, le=100_000)  # rows per DELETE: short transactions, no long locks


class ProjectSettings(_Section):
    id: Id
    sources: list[SourceSettings] = []

    @model_validator(mode="after")
    def _unique_source_ids(self) -> ProjectSettings:
        seen: set[str] = set()
        for source in self.sources:
            if source.source_id in seen:
                raise ValueError(f"two sources of project {self.id!r} are both {source.source_id!r}")
            seen.add(source.source_id)
        return self


class _TenantSecrets(BaseModel):
    api_token: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    query_token: SecretStr | None = None
    chroma_token: SecretStr | None = None


class TenantSettings(_Section):
    id: Id
    chatwoot_url: str = ""
    account_id: int | None = Field(default=None, ge=1)
    api_token_env: EnvName = ""
    webhook_secret_env: EnvName = ""
    query_token_env: EnvName = ""
    # Chatwoot throttles per client IP (rack-attack, 3000 requests a minute by default, docs/chatwoot.md §4); tenants on
    # one Chatwoot share that budget. A complete listing reads 25 articles per request, so this bounds a reconcile
    # of N articles to at least N / 25 / rate seconds.
    chatwoot_requests_per_second: float = Field(default=10.0, gt=0, le=1000)
    # How long one Chatwoot request is retried (429, 5xx, timeouts) before the run reports the source failed, and
    # the longest pause between tries (backoff from 0.5 s, doubling, with jitter).
    chatwoot_retry_seconds: float = Field(default=60.0, ge=1, le=600)
    chatwoot_max_backoff_seconds: float = Field(default=10.0, gt=0, le=120)
    chroma: TenantChromaSettings | None = None
    projects: list[ProjectSettings] = []

    _secrets: _TenantSecrets = PrivateAttr(default_factory=_TenantSecrets)

    @field_validator("chatwoot_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL such as https://support.acme.example")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _chatwoot_needs_account(self) -> TenantSettings:
        ids = [p.id for p in self.projects]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"project id {duplicates[0]!r} appears twice in tenant {self.id!r}")
        if self.has_chatwoot_source:
            missing = [k for k in ("chatwoot_url", "account_id", "api_token_env") if not getattr(self, k)]
            if missing:
                raise ValueError(f"tenant {self.id!r} has a chatwoot source but no {', '.join(missing)}")
        return self

    @property
    def has_chatwoot_source(self) -> bool:
        return any(s.kind == "chatwoot" for p in self.projects for s in p.sources)

    @property
    def api_token(self) -> SecretStr | None:
        """The Chatwoot `api_access_token`, from the variable named by `api_token_env`."""
        return self._secrets.api_token

    @property
    def webhook_secret(self) -> SecretStr | None:
        return self._secrets.webhook_secret

    @property
    def query_token(self) -> SecretStr | None:
        return self._secrets.query_token

    @property
    def chroma_token(self) -> SecretStr | None:
        return self._secrets.chroma_token

    def project(self, project_id: str) -> ProjectSettings | None:
        return next((p for p in self.projects if p.id == project_id), None)


class Settings(BaseSettings):
    """The whole configuration, loaded once by `load_settings` and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="KBSYNC_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    state_dir: Path = Path("var")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    chroma: ChromaSettings = ChromaSettings()
    state: StateSettings = StateSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    reachability: ReachabilitySettings = ReachabilitySettings()
    server: ServerSettings = ServerSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    sync: SyncSettings = SyncSettings()
    retention: RetentionSettings = RetentionSettings()
    tenants: list[TenantSettings] = []

    _admin_token: SecretStr | None = PrivateAttr(default=None)
    _chroma_token: SecretStr | None = PrivateAttr(default=None)
    _state_password: SecretStr | None = PrivateAttr(default=None)
    _source_file: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it (first source wins).
        return env_settings, init_settings

    @field_validator("tenants")
    @classmethod
    def _unique_tenants(cls, tenants: list[TenantSettings]) -> list[TenantSettings]:
        ids = [t.id for t in tenants]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"tenant id {duplicates[0]!r} appears twice")
        return tenants

    @property
    def admin_token(self) -> SecretStr | None:
        """Bearer token for /v1/status and /v1/resync (None: those routes answer 403)."""
        return self._admin_token

    @property
    def chroma_token(self) -> SecretStr | None:
        return self._chroma_token

    @property
    def state_password(self) -> SecretStr | None:
        return self._state_password

    @property
    def source_file(self) -> Path | None:
        """The settings file these settings were loaded from."""
        return self._source_file

    def tenant(self, tenant_id: str) -> TenantSettings | None:
        return next((t for t in self.tenants if t.id == tenant_id), None)


def config_path(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """`--config PATH`, else `$KBSYNC_CONFIG`, else `./settings.toml`."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get("KBSYNC_CONFIG"):
        return Path(env["KBSYNC_CONFIG"])
    return Path("settings.toml")


def load_settings(path: Path) -> Settings:
    """Read `path`, apply `KBSYNC_*` overrides, resolve relative paths and secret variables.

    Raises ConfigError naming the offending key for anything invalid, including a secret variable that a
    configured feature needs (a tenant with a chatwoot source needs its `api_token_env` set).
    """
    env = dict(os.environ)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} not found (use --config or $KBSYNC_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None

    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, raw), key=_error_key(exc)) from None
    except SettingsError as exc:  # a KBSYNC_<SECTION> variable that is not JSON
        raise ConfigError(_describe_env_error(exc)) from None
    settings = _resolve_paths(settings, path.resolve().parent)
    _resolve_secrets(settings, env)
    settings._source_file = path.resolve()
    return settings


def _describe_env_error(exc: SettingsError) -> str:
    """pydantic-settings names only the field ('error parsing value for field "chunking"'): name the variable."""
    field = re.search(r'field "(\w+)"', str(exc))
    if field is None:
        return f"cannot read the KBSYNC_* environment variables: {exc}"
    name = f"KBSYNC_{field.group(1).upper()}"
    return (
        f"environment variable {name} is not valid JSON for the {field.group(1)!r} settings; set one key at a time "
        f"instead, e.g. {name}__<KEY>=value"
    )


def _error_key(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return _loc_to_key(first["loc"])


def _loc_to_key(loc: tuple[Any, ...]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part in ("chatwoot", "web", "files", "confluence", "notion") and key.endswith("]"):
            continue  # the discriminator tag pydantic adds to union locations
        else:
            key += f".{part}" if key else str(part)
    return key or "settings"


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    messages: list[str] = []
    for error in exc.errors():
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        messages.append(f"{message}" if not messages else f"{_loc_to_key(error['loc'])}: {message}")
    more = f" (and {len(messages) - 1} more: {'; '.join(messages[1:])})" if len(messages) > 1 else ""
    return messages[0] + more


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    tenants = [
        tenant.model_copy(
            update={
                "projects": [
                    project.model_copy(
                        update={
                            "sources": [
                                s.model_copy(update={"path": resolve(s.path)})
                                if isinstance(s, FilesSourceSettings)
                                else s
                                for s in project.sources
                            ]
                        }
                    )
                    for project in tenant.projects
                ]
            }
        )
        for tenant in settings.tenants
    ]
    embedding = settings.embedding
    if embedding.model_dir is not None:
        embedding = embedding.model_copy(update={"model_dir": resolve(embedding.model_dir)})
    return settings.model_copy(
        update={"state_dir": resolve(settings.state_dir), "tenants": tenants, "embedding": embedding}
    )


def _secret(env: Mapping[str, str], name: str | None) -> SecretStr | None:
    value = env.get(name) if name else None
    return SecretStr(value) if value else None


def _resolve_secrets(settings: Settings, env: Mapping[str, str]) -> None:
    settings._admin_token = _secret(env, settings.server.admin_token_env)
    settings._chroma_token = _secret(env, settings.chroma.auth_token_env)
    settings._state_password = _secret(env, settings.state.password_env)
    for index, tenant in enumerate(settings.tenants):
        chroma_env = (
            tenant.chroma.auth_token_env if tenant.chroma and tenant.chroma.auth_token_env is not None else None
        )
        tenant._secrets = _TenantSecrets(
            api_token=_secret(env, tenant.api_token_env),
            webhook_secret=_secret(env, tenant.webhook_secret_env),
            query_token=_secret(env, tenant.query_token_env),
            chroma_token=_secret(env, chroma_env) if chroma_env else settings._chroma_token,
        )
        _resolve_source_secrets(tenant, index, env)
        if tenant.has_chatwoot_source and tenant.api_token is None:
            raise ConfigError(
                f"environment variable {tenant.api_token_env} is not set (tenant {tenant.id!r} has a chatwoot source)",
                key=f"tenants[{index}].api_token_env",
            )


def _resolve_source_secrets(tenant: TenantSettings, tenant_index: int, env: Mapping[str, str]) -> None:
    """Confluence and Notion sources carry their own secrets; each named variable must be set."""
    for p_index, project in enumerate(tenant.projects):
        for s_index, source in enumerate(project.sources):
            if not isinstance(source, ConfluenceSourceSettings | NotionSourceSettings):
                continue
            key = f"tenants[{tenant_index}].projects[{p_index}].sources[{s_index}]"
            names = [("token_env", source.token_env)]
            if isinstance(source, ConfluenceSourceSettings) and source.email_env:
                names.append(("email_env", source.email_env))
            for field_name, env_name in names:
                if _secret(env, env_name) is None:
                    raise ConfigError(
                        f"environment variable {env_name} is not set (source {source.source_id!r} of project "
                        f"{project.id!r} needs it)",
                        key=f"{key}.{field_name}",
                    )
            source._secrets = ApiSourceSecrets(
                token=_secret(env, source.token_env),
                email=_secret(env, source.email_env) if isinstance(source, ConfluenceSourceSettings) else None,
            )
