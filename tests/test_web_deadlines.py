"""A trickling server (issue 17, finding 6): one byte every second never trips a 5 s read timeout, so every request
has a total deadline, and the crawl one too. The errors name the URL and the deadline; nothing is deleted."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from kbsync.errors import SourceUnavailable
from kbsync.settings import WebSourceSettings
from kbsync.sources.web import FetchOptions, MemoryPageCache, WebSource
from tests.servers.hostile_web import HostileServer, Reply

HTML = {"content-type": "text/html; charset=utf-8"}
BODY = b"<html><body><main><h1>Slow</h1><p>" + b"x" * 60 + b"</p></main></body></html>"
PAGE = b"<html><head><title>Fine</title></head><body><main><h1>Fine</h1><p>A page of docs.</p></main></body></html>"


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as running:
        running.replies["/slow"] = Reply(200, HTML, BODY, trickle_seconds=1.0)  # 100+ s for the whole body
        running.replies["/fine"] = Reply(200, HTML, PAGE)
        yield running


def source(server: HostileServer, paths: list[str], options: FetchOptions, client: httpx.Client | None = None):
    settings = WebSourceSettings(kind="web", urls=[server.url(p) for p in paths], allow_private_hosts=True)
    return WebSource(settings, client=client, cache=MemoryPageCache(), options=options)


def test_a_trickling_page_fails_at_the_request_deadline(server: HostileServer) -> None:
    options = FetchOptions(attempts=1, read_timeout=5.0, request_deadline=2.5, workers=2)
    listing = source(server, ["/slow", "/fine"], options).list()

    [error] = listing.errors
    assert server.url("/slow") in error.message and "no complete answer within 2.5 s" in error.message
    assert [d.url for d in listing.documents] == [server.url("/fine")]
    assert not listing.complete  # a slow server proves nothing is gone


def test_the_deadline_holds_for_a_client_passed_in(server: HostileServer) -> None:
    options = FetchOptions(attempts=1, read_timeout=5.0, request_deadline=2.5)
    with httpx.Client(timeout=5.0) as client:
        listing = source(server, ["/slow"], options, client=client).list()
    [error] = listing.errors
    assert "no complete answer within 2.5 s" in error.message


def test_the_crawl_deadline_stops_the_listing_without_retries(server: HostileServer) -> None:
    for n in range(3):
        server.replies[f"/slow{n}"] = Reply(200, HTML, BODY, trickle_seconds=1.0)
    options = FetchOptions(attempts=3, backoff_initial=0.01, read_timeout=5.0, crawl_deadline=2.5, workers=1)
    listing = source(server, ["/slow0", "/slow1", "/slow2"], options).list()

    assert len(listing.errors) == 3 and not listing.documents and not listing.complete
    assert all("past its 2.5 s deadline" in e.message for e in listing.errors)
    assert server.requests.count("/slow0") == 1  # a crawl out of time is not retried
    assert "/slow2" not in server.requests


def test_a_trickling_robots_txt_fails_the_listing(server: HostileServer) -> None:
    server.replies["/robots.txt"] = Reply(200, {"content-type": "text/plain"}, b"User-agent: *\n" * 10, 1.0)
    options = FetchOptions(attempts=1, read_timeout=5.0, request_deadline=2.0)
    with pytest.raises(SourceUnavailable, match="no complete answer within 2 s"):
        source(server, ["/fine"], options).list()
