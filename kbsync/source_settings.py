"""The settings of each kind of source (`[[tenants.projects.sources]]` tables), told apart by `kind`.

Each model validates its own keys and names its `source_id` (the `source` metadata key of its chunks). Secrets are
named by `*_env` keys; `kbsync.settings.load_settings` resolves them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from kbsync.webhooks import chatwoot_source_id

__all__ = [
    "ApiSourceSecrets",
    "ChatwootSourceSettings",
    "ConfluenceSourceSettings",
    "EnvName",
    "FilesSourceSettings",
    "NotionSourceSettings",
    "Section",
    "SourceSettings",
    "WebSourceSettings",
]

# An environment variable name (or "" where the secret is optional).
EnvName = Annotated[str, Field(pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")]


class Section(BaseModel):
    """Every table of the settings file: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatwootSourceSettings(Section):
    kind: Literal["chatwoot"]
    portal: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    locales: list[str] | None = None
    public_url: str = ""

    @property
    def source_id(self) -> str:
        """The value of the `source` metadata key on this source's chunks."""
        return chatwoot_source_id(self.portal)


class WebSourceSettings(Section):
    kind: Literal["web"]
    sitemap: str = ""
    urls: list[str] = []
    include: list[str] = []
    max_pages: int = Field(default=2000, ge=1, le=1_000_000)
    allow_private_hosts: bool = False
    # Skip requesting a page whose sitemap <lastmod> is unchanged since it was stored (no 304 round trip): only for
    # sites whose <lastmod> moves with every edit. `resync --rebuild` reads every page regardless.
    trust_lastmod: bool = False

    @field_validator("include")
    @classmethod
    def _valid_regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        return patterns

    @field_validator("sitemap")
    @classmethod
    def _http_sitemap(cls, value: str) -> str:
        if value and not re.match(r"^https?://", value):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.match(r"^https?://", value):
                raise ValueError(f"{value!r} is not an http(s) URL")
        return values

    @model_validator(mode="after")
    def _something_to_crawl(self) -> WebSourceSettings:
        if not self.sitemap and not self.urls:
            raise ValueError("a web source needs `sitemap` or `urls`")
        return self

    @property
    def source_id(self) -> str:
        return f"web:{self.sitemap or self.urls[0]}"


class FilesSourceSettings(Section):
    kind: Literal["files"]
    path: Path
    url_base: str = ""
    # Larger files are skipped (and reported): docs are small, a huge file is a mistake or a trap.
    max_file_bytes: int = Field(default=5 * 1024 * 1024, ge=1)

    @property
    def source_id(self) -> str:
        return f"files:{self.path.name}"


class ApiSourceSecrets(BaseModel):
    """The secrets of an API source, resolved from the environment by load_settings."""

    token: SecretStr | None = None
    email: SecretStr | None = None


class ConfluenceSourceSettings(Section):
    """One Confluence Cloud space (REST v2). Secrets: `token_env` (an API token, or a PAT alone: Bearer) and, for
    Cloud basic auth, `email_env` (the account's email)."""

    kind: Literal["confluence"]
    base_url: str
    space: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^~?[A-Za-z0-9_-]+$")]
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    email_env: EnvName = ""
    labels: list[Annotated[str, Field(min_length=1)]] = []
    locale: str = "en"
    # Confluence Cloud rate-limits by cost per account; 10/s keeps a reconcile well under it.
    requests_per_second: float = Field(default=10.0, gt=0, le=1000)

    _secrets: ApiSourceSecrets = PrivateAttr(default_factory=ApiSourceSecrets)

    @field_validator("base_url")
    @classmethod
    def _site_root(cls, value: str) -> str:
        value = value.rstrip("/")
        if not re.match(r"^https?://[^/\s]+(/.*)?/wiki$", value):
            raise ValueError("must be the site root ending in /wiki, such as https://example.atlassian.net/wiki")
        return value

    @property
    def source_id(self) -> str:
        return f"confluence:{self.space}"

    @property
    def token(self) -> SecretStr | None:
        return self._secrets.token

    @property
    def email(self) -> SecretStr | None:
        return self._secrets.email


class NotionSourceSettings(Section):
    """Every page under one Notion page (child pages and rows of child databases included), or every row of one
    database. Secret: `token_env`, an internal integration token the root is shared with."""

    kind: Literal["notion"]
    root: str
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    base_url: str = "https://api.notion.com"
    locale: str = "en"
    # Notion allows an average of 3 requests a second per integration.
    requests_per_second: float = Field(default=3.0, gt=0, le=1000)

    _secrets: ApiSourceSecrets = PrivateAttr(default_factory=ApiSourceSecrets)

    @field_validator("root")
    @classmethod
    def _notion_id(cls, value: str) -> str:
        compact = value.strip().replace("-", "").lower()
        # A page URL ends in the id: https://www.notion.so/Title-<32 hex>
        match = re.search(r"([0-9a-f]{32})$", compact)
        if not match:
            raise ValueError("must be a 32-hex Notion page or database id (dashes allowed)")
        return match.group(1)

    @field_validator("base_url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL such as https://api.notion.com")
        return value.rstrip("/")

    @property
    def source_id(self) -> str:
        return f"notion:{self.root}"

    @property
    def token(self) -> SecretStr | None:
        return self._secrets.token


SourceSettings = Annotated[
    ChatwootSourceSettings | WebSourceSettings | FilesSourceSettings | ConfluenceSourceSettings | NotionSourceSettings,
    Field(discriminator="kind"),
]
