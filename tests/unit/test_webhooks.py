"""The webhook vocabulary (kbsync/webhooks.py) and the optional source capabilities the engine checks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbsync.settings import ChatwootSourceSettings, FilesSourceSettings, WebSourceSettings
from kbsync.sources import ChangesObserver, ListingObserver, Polling
from kbsync.sources.files import FilesSource
from kbsync.sources.web import WebSource
from kbsync.webhooks import ARTICLE_EVENTS, POLLED_EVENTS, Notice, WebhookEvent, parse_notice


def body(**values: object) -> bytes:
    return json.dumps(values).encode()


def test_a_notice_names_its_source_and_document() -> None:
    notice = parse_notice(body(event="article_updated", account={"id": 7}, portal={"slug": "help"}, article={"id": 3}))
    assert notice == Notice(WebhookEvent.ARTICLE_UPDATED, 7, "help", 3)
    assert notice.source_id == ChatwootSourceSettings(kind="chatwoot", portal="help").source_id == "chatwoot:help"
    assert notice.doc_id == "chatwoot:help:3"
    portal = parse_notice(body(event="portal_updated", account={"id": 7}, portal={"slug": "help"}))
    assert portal is not None and portal.article_id is None and portal.doc_id is None


def test_events_kbsync_does_not_act_on_are_ignored_and_bad_bodies_say_what_is_wrong() -> None:
    assert parse_notice(body(event="conversation_created", account={"id": 7})) is None
    with pytest.raises(ValueError, match="not JSON"):
        parse_notice(b"{")
    with pytest.raises(ValueError, match=r"account\.id"):
        parse_notice(body(event="article_deleted", account={"id": True}, portal={"slug": "help"}, article={"id": 3}))
    with pytest.raises(ValueError, match=r"article\.id"):
        parse_notice(body(event="article_deleted", account={"id": 7}, portal={"slug": "help"}, article={"id": 0}))


def test_a_poll_covers_article_events_but_a_deletion_or_portal_update() -> None:
    assert WebhookEvent.ARTICLE_DELETED in ARTICLE_EVENTS and WebhookEvent.ARTICLE_DELETED not in POLLED_EVENTS
    assert WebhookEvent.PORTAL_UPDATED not in ARTICLE_EVENTS | POLLED_EVENTS
    assert len(POLLED_EVENTS) == 5


def test_capabilities_are_found_by_protocol(tmp_path: Path) -> None:
    from kbsync.sources.chatwoot import ChatwootSource

    files = FilesSource(FilesSourceSettings(kind="files", path=tmp_path))
    web = WebSource(WebSourceSettings(kind="web", urls=["https://docs.example/"]))
    assert not isinstance(files, Polling) and not isinstance(files, ListingObserver)
    assert isinstance(web, ListingObserver) and not isinstance(web, Polling)
    assert issubclass(ChatwootSource, Polling) and not issubclass(ChatwootSource, ListingObserver)


def test_the_api_sources_poll_and_observe_both_listings_and_changes() -> None:
    from kbsync.sources.confluence import ConfluenceSource
    from kbsync.sources.notion import NotionSource

    for source in (ConfluenceSource, NotionSource):
        assert issubclass(source, Polling) and issubclass(source, ListingObserver)
        assert issubclass(source, ChangesObserver)
