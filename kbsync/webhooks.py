"""The webhook vocabulary, in one place: Chatwoot's event names, what each asks of the engine, the ids a
notice names (source and document), the routing of a portal to the projects that read it, and the parsing of a
notice's body. The HTTP route, the webhook workers and the engine all speak these types.

A notice is only a hint (fetch-on-notify): the engine reads the source itself, so a notice carries ids, never
content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from kbsync.sources import make_doc_id

if TYPE_CHECKING:
    from kbsync.settings import TenantSettings

__all__ = [
    "ARTICLE_EVENTS",
    "POLLED_EVENTS",
    "Notice",
    "WebhookEvent",
    "chatwoot_doc_id",
    "chatwoot_source_id",
    "parse_notice",
    "projects_of_portal",
]


class WebhookEvent(StrEnum):
    """The Chatwoot Help Center events kbsync acts on; any other event is answered "ignored"."""

    ARTICLE_CREATED = "article_created"
    ARTICLE_UPDATED = "article_updated"
    ARTICLE_PUBLISHED = "article_published"
    ARTICLE_UNPUBLISHED = "article_unpublished"
    ARTICLE_ARCHIVED = "article_archived"
    ARTICLE_DELETED = "article_deleted"
    PORTAL_UPDATED = "portal_updated"  # settings or locales changed: the whole portal is reconciled


ARTICLE_EVENTS = frozenset(e for e in WebhookEvent if e.value.startswith("article_"))
# Applied by a poll of the portal: one refresh that polled after such an event was received covers it too. A
# deletion is not (a poll cannot see a hard delete), nor a portal update (it needs a full reconcile).
POLLED_EVENTS = ARTICLE_EVENTS - {WebhookEvent.ARTICLE_DELETED}


def chatwoot_source_id(portal: str) -> str:
    """The source id of a Chatwoot portal (the `source` metadata key of its chunks)."""
    return f"chatwoot:{portal}"


def chatwoot_doc_id(portal: str, article_id: int | str) -> str:
    """The doc id of a Chatwoot article (one per article, whatever its locale)."""
    return make_doc_id("chatwoot", f"{portal}:{article_id}")


@dataclass(frozen=True, slots=True)
class Notice:
    """A parsed webhook body: which account, portal and (for article events) article it is about."""

    event: WebhookEvent
    account_id: int
    portal: str
    article_id: int | None

    @property
    def source_id(self) -> str:
        return chatwoot_source_id(self.portal)

    @property
    def doc_id(self) -> str | None:
        return chatwoot_doc_id(self.portal, self.article_id) if self.article_id is not None else None


def parse_notice(body: bytes) -> Notice | None:
    """The notice in a webhook body; None for an event kbsync does not act on. ValueError names what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        raise ValueError("body must be a JSON object with a string `event`")
    try:
        event = WebhookEvent(data["event"])
    except ValueError:
        return None
    account = data.get("account")
    account_id = account.get("id") if isinstance(account, dict) else None
    if not isinstance(account_id, int) or isinstance(account_id, bool):
        raise ValueError("`account.id` must be an integer")
    portal = data.get("portal")
    slug = portal.get("slug") if isinstance(portal, dict) else None
    if not isinstance(slug, str) or not slug:
        raise ValueError("`portal.slug` must be a non-empty string")
    article_id = None
    if event in ARTICLE_EVENTS:
        article = data.get("article")
        article_id = article.get("id") if isinstance(article, dict) else None
        if not isinstance(article_id, int) or isinstance(article_id, bool) or article_id < 1:
            raise ValueError("`article.id` must be a positive integer")
    return Notice(event, account_id, slug, article_id)


def projects_of_portal(tenant: TenantSettings, portal: str) -> list[str]:
    """Every project of the tenant that reads `portal` (one portal in several projects is a supported layout)."""
    source_id = chatwoot_source_id(portal)
    return [project.id for project in tenant.projects if any(s.source_id == source_id for s in project.sources)]
