"""One healthy-looking answer must not wipe a web source (issue 17, finding 5). A site of 5 pages on a hostile
server on 127.0.0.1, then: robots.txt `Disallow: /`, an empty `<urlset>`, a maintenance page that every page names
as its canonical; each deletes 0 of 5. And the mass-delete breaker (kbsync.deletion_guard) on its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kbsync.deletion_guard import check_deletes
from kbsync.runs import ProjectKey
from kbsync.settings import SyncSettings, load_settings
from kbsync.wiring import open_engine
from tests.servers.hostile_web import HostileServer, Reply

KEY = ProjectKey("acme", "alpha")
PAGES = [f"/docs/page-{n}" for n in range(5)]
TOPICS = ["refunds", "invoices", "webhooks", "shortcuts", "exports"]
HTML = {"content-type": "text/html; charset=utf-8"}


def page(path: str, topic: str) -> bytes:
    text = " ".join(f"This guide explains {topic}, step {n}, for support agents." for n in range(6))
    return (
        f"<html lang='en'><head><title>{topic}</title><link rel='canonical' href='{path}'></head>"
        f"<body><main><h1>All about {topic}</h1><p>{text}</p></main></body></html>"
    ).encode()


MAINTENANCE = (
    b"<html lang='en'><head><title>Down for maintenance</title><link rel='canonical' href='/maintenance'></head>"
    b"<body><main><h1>Down for maintenance</h1><p>We are upgrading the help center and will be back within "
    b"the hour. Thank you for your patience while we improve the docs.</p></main></body></html>"
)


def urlset(server: HostileServer, paths: list[str]) -> bytes:
    urls = "".join(f"<url><loc>{server.url(p)}</loc></url>" for p in paths)
    return f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'.encode()


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as running:
        running.replies["/sitemap.xml"] = Reply(200, {"content-type": "application/xml"}, urlset(running, PAGES))
        for path, topic in zip(PAGES, TOPICS, strict=True):
            running.replies[path] = Reply(200, HTML, page(path, topic))
        yield running


@pytest.fixture
def engine(write_settings, server: HostileServer) -> Iterator[object]:
    config: Path = write_settings(
        f"""
        state_dir = "var"
        log_format = "json"
        log_level = "warning"
        [[tenants]]
        id = "acme"
        [[tenants.projects]]
        id = "alpha"
        [[tenants.projects.sources]]
        kind = "web"
        sitemap = "{server.url("/sitemap.xml")}"
        allow_private_hosts = true
        """
    )
    with open_engine(load_settings(config)) as opened:
        first = opened.reconcile(KEY)
        assert first.outcome == "ok" and first.docs_added == 5, first.errors
        yield opened


def held(engine) -> set[str]:
    return set(engine.store.index(KEY.collection).docs)


def test_robots_disallow_all_keeps_every_page_and_says_why(engine, server: HostileServer) -> None:
    before = held(engine)
    server.replies["/robots.txt"] = Reply(200, {"content-type": "text/plain"}, b"User-agent: *\nDisallow: /\n")

    report = engine.reconcile(KEY, allow_mass_delete=True)  # the robots rule alone must keep them

    assert report.docs_deleted == 0 and held(engine) == before
    assert report.outcome == "ok"
    assert any("robots.txt now disallows 5 indexed page(s)" in w for w in report.warnings), report.warnings
    assert not [p for p in server.requests if p.startswith("/docs/")][5:]  # no page fetched after the rule


def test_an_empty_urlset_deletes_nothing(engine, server: HostileServer) -> None:
    before = held(engine)
    server.replies["/sitemap.xml"] = Reply(200, {"content-type": "application/xml"}, urlset(server, []))

    report = engine.reconcile(KEY, allow_mass_delete=True)

    assert report.docs_deleted == 0 and held(engine) == before
    assert any("the sitemap lists no pages at all" in w for w in report.warnings), report.warnings


def test_a_canonical_every_page_shares_is_not_accepted(engine, server: HostileServer) -> None:
    before = held(engine)
    for path in PAGES:
        server.replies[path] = Reply(200, HTML, MAINTENANCE)

    report = engine.reconcile(KEY, allow_mass_delete=True)

    assert report.docs_deleted == 0 and held(engine) == before
    assert any(f"5 pages name {server.url('/maintenance')} as their canonical URL" in w for w in report.warnings)


def test_the_breaker_refuses_a_mass_delete_unless_allowed(engine, server: HostileServer) -> None:
    before = held(engine)
    for path in PAGES[1:]:
        server.replies[path] = Reply(404, {"content-type": "text/plain"}, b"gone")

    refused = engine.reconcile(KEY)

    assert refused.docs_deleted == 0 and held(engine) == before
    assert refused.outcome == "partial"
    source = f"web:{server.url('/sitemap.xml')}"
    assert any(w.startswith(f"{source}: refused to delete 4 of its 5 documents") for w in refused.warnings)

    allowed = engine.reconcile(KEY, allow_mass_delete=True)

    assert allowed.docs_deleted == 4 and allowed.outcome == "ok"
    assert held(engine) == {f"web:{server.url(PAGES[0])}"}


@pytest.mark.parametrize(
    ("held_docs", "deleting", "allowed"),
    [(5, 2, True), (5, 3, False), (10, 5, True), (10, 6, False), (4, 4, True), (5, 5, False), (1000, 0, True)],
)
def test_the_breaker_thresholds(held_docs: int, deleting: int, allowed: bool) -> None:
    settings = SyncSettings()  # max_delete_fraction 0.5, from 5 documents
    verdict = check_deletes("web:x", "web", held_docs, deleting, settings, allow=False)
    assert verdict.allowed is allowed
    assert check_deletes("web:x", "web", held_docs, deleting, settings, allow=True).allowed
    assert check_deletes("chatwoot:help", "chatwoot", held_docs, deleting, settings, allow=False).allowed
