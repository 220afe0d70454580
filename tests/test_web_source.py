"""The `web` source against a real docs site on 127.0.0.1 (tests/servers/web.py): discovery, robots, scope,
normalisation, extraction, conditional requests, deletes and the SSRF guard."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kbsync import __version__
from kbsync.errors import SourceRejected, SourceUnavailable
from kbsync.settings import WebSourceSettings
from kbsync.sources import Listing, make_doc_id
from kbsync.sources.web import (
    FetchOptions,
    MemoryPageCache,
    PageValidators,
    WebSource,
    clean_url,
    normalize_url,
)
from tests.servers.web import (
    DRAFT,
    FAQ,
    FAQ_MARKDOWN,
    FIRST_ARTICLE_REDIRECT,
    FRENCH,
    MOVED_AWAY,
    PDF,
    PRIVATE,
    DocsSite,
    DocsSiteServer,
    RequestRecord,
)

# Quick retries and short timeouts: a fault costs milliseconds, not seconds.
FAST = FetchOptions(attempts=2, backoff_initial=0.01, backoff_max=0.02, connect_timeout=2.0, read_timeout=0.5)
CHROME = (
    "Was this helpful",
    "Thanks for your feedback",
    "cookies to analyse",
    "Accept all cookies",
    "All rights reserved",
    "Privacy policy",
    "Skip to content",
    "Sign in",
    "Related articles",
    "Acme Docs",
)


@pytest.fixture(scope="module")
def server() -> Iterator[DocsSiteServer]:
    with DocsSiteServer(DocsSite()) as running:
        yield running


@pytest.fixture
def site(server: DocsSiteServer) -> DocsSite:
    server.site.reset()
    return server.site


def make_source(site: DocsSite, *, client: httpx.Client | None = None, **overrides: Any) -> WebSource:
    values: dict[str, Any] = {"kind": "web", "sitemap": site.sitemap_url, "allow_private_hosts": True, **overrides}
    return WebSource(WebSourceSettings(**values), client=client, cache=MemoryPageCache(), options=FAST)


def doc_id(site: DocsSite, path: str) -> str:
    return make_doc_id("web", site.url(path))


def expected_ids(site: DocsSite) -> set[str]:
    return {doc_id(site, path) for path in site.expected_pages()}


def by_id(listing: Listing) -> dict[str, Any]:
    return {d.doc_id: d for d in listing.documents}


def page_requests(site: DocsSite) -> list[Any]:
    return [r for r in site.requests() if r.path.startswith(("/docs/", "/fr/", "/faq"))]


@dataclass(frozen=True)
class Crawl:
    listing: Listing
    cache: MemoryPageCache
    requests: list[RequestRecord]

    def served(self, path: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture(scope="module")
def baseline(server: DocsSiteServer) -> Crawl:
    """One whole-site listing of the untouched site, committed (as the engine will once the documents are
    stored); tests that only read a listing share it (extraction is the slow part of a crawl)."""
    server.site.reset()
    source = make_source(server.site)
    listing = source.list()
    source.commit()
    assert isinstance(source.cache, MemoryPageCache)
    return Crawl(listing, source.cache, server.site.requests())


@pytest.fixture
def crawled(site: DocsSite, baseline: Crawl) -> tuple[WebSource, Listing]:
    """A source that has listed and stored the whole site (its validators), and that listing."""
    source = WebSource(
        WebSourceSettings(kind="web", sitemap=site.sitemap_url, allow_private_hosts=True),
        cache=baseline.cache.copy(),
        options=FAST,
    )
    return source, baseline.listing


# -- discovery --------------------------------------------------------------------------------------------------


def test_sitemap_index_with_gzipped_sitemaps_lists_every_page(site: DocsSite, baseline: Crawl) -> None:
    listing = baseline.listing
    assert listing.complete and not listing.errors and not listing.unchanged
    assert set(by_id(listing)) == expected_ids(site)
    assert len(listing.documents) == len(site.expected_pages()) == 22
    served = {r.path for r in baseline.requests}
    assert {"/sitemap.xml", "/sitemaps/pages.xml", "/sitemaps/articles.xml.gz", "/sitemaps/extra.xml"} <= served
    # <lastmod> of the gzipped sitemap is kept with the validators; the plain sitemap has none
    gz_page, plain_page = site.article_paths[-1], site.article_paths[1]
    assert baseline.cache.get(site.url(gz_page)).lastmod == site.page(gz_page).updated  # type: ignore[union-attr]
    assert baseline.cache.get(site.url(plain_page)).lastmod == 0  # type: ignore[union-attr]
    assert by_id(listing)[doc_id(site, gz_page)].updated_at == site.page(gz_page).updated


def test_robots_txt_disallow_rules_are_honoured(site: DocsSite, baseline: Crawl) -> None:
    assert not baseline.served(PRIVATE), "disallowed for every agent"
    assert not baseline.served(DRAFT), "disallowed for the kbsync agent"
    assert doc_id(site, DRAFT) not in baseline.listing.doc_ids and baseline.listing.complete
    robots = baseline.served("/robots.txt")
    assert len(robots) == 1 and robots[0].user_agent == f"kbsync/{__version__}"  # the real version
    assert {r.user_agent for r in baseline.requests} == {f"kbsync/{__version__}"}


def test_include_rules_limit_the_crawl_and_listed_urls_are_always_in(site: DocsSite) -> None:
    include = ["^" + re.escape(site.url("/docs/")) + "(vue|ios)$"]
    listing = make_source(site, include=include, urls=[site.url(FAQ)]).list()
    assert set(by_id(listing)) == {doc_id(site, p) for p in ("/docs/vue", "/docs/ios", FAQ)}
    assert listing.complete and not site.requests(FRENCH) and not site.requests("/docs/webhooks")


def test_max_pages_caps_the_listing(site: DocsSite) -> None:
    listing = make_source(site, max_pages=5).list()
    assert len(listing.documents) == 5 and listing.complete
    assert len(page_requests(site)) == 5


def test_url_variants_and_an_old_url_are_one_document(site: DocsSite, baseline: Crawl) -> None:
    first = site.first_article
    assert [d.doc_id for d in baseline.listing.documents].count(doc_id(site, first)) == 1
    # the utm/gclid and fragment variants were never requested; the old URL redirected to the same page
    assert [r.query for r in baseline.served(first)] == ["", ""]
    assert [r.status for r in baseline.served(FIRST_ARTICLE_REDIRECT)] == [301]


def test_normalize_url_gives_one_identity_per_page() -> None:
    assert normalize_url("HTTP://Docs.Example.COM:80/a/b/?utm_source=x&b=2&a=1&fbclid=z#frag") == (
        "http://docs.example.com/a/b?a=1&b=2"
    )
    assert normalize_url("https://docs.example.com:443") == "https://docs.example.com/"
    assert normalize_url("https://user:pw@docs.example.com/a/./b/../c/") == "https://docs.example.com/a/c"
    assert normalize_url("https://docs.example.com/%7euser/a%2fb") == "https://docs.example.com/~user/a%2Fb"
    assert normalize_url("https://docs.example.com:8443/x") == "https://docs.example.com:8443/x"
    # the URL requested keeps the site's own path and query (no redirect round trip for a trailing slash)
    assert (
        clean_url("https://Docs.example.com/guide/?b=2&a=1&utm_medium=m#top")
        == "https://docs.example.com/guide/?b=2&a=1"
    )
    with pytest.raises(ValueError):
        clean_url("ftp://docs.example.com/file")


# -- extraction -------------------------------------------------------------------------------------------------


def test_extraction_keeps_headings_lists_tables_code_and_drops_site_chrome(site: DocsSite, baseline: Crawl) -> None:
    docs = by_id(baseline.listing)
    shortcuts = docs[doc_id(site, "/docs/keyboard-shortcuts")].text
    assert "| On Mac" in shortcuts and "| Option + E | Alt + E |" in shortcuts
    product = docs[doc_id(site, "/docs/product")].text
    assert "### Compatibility and Requirements" in product and "| Mozilla Firefox | 52 |" in product
    dark_mode = docs[doc_id(site, "/docs/live-chat-dark-mode")].text
    assert "```" in dark_mode and 'darkMode: "auto"' in dark_mode
    assert "1. `light` - Enable only light mode." in dark_mode
    assert "- You use the Search function" in product
    for doc in docs.values():
        leaked = [phrase for phrase in CHROME if phrase in doc.text]
        assert not leaked, f"{doc.url} kept site chrome: {leaked}"


def test_title_locale_and_canonical_url_go_into_the_document(site: DocsSite, baseline: Crawl) -> None:
    docs = by_id(baseline.listing)
    article = docs[doc_id(site, "/docs/webhooks")]
    assert article.title == site.page("/docs/webhooks").title == "Getting started with webhooks in Chatwoot"
    assert (article.locale, article.url, article.kind) == ("en_US", site.url("/docs/webhooks"), "web")
    assert article.updated_at == site.page("/docs/webhooks").updated  # Last-Modified
    french = docs[doc_id(site, FRENCH)]
    assert french.locale == "fr_FR" and french.title == "Introduction à Chatwoot"
    assert french.url == site.url(FRENCH), "a canonical link on another host is ignored"


def test_canonical_link_on_the_same_host_names_the_document(site: DocsSite) -> None:
    listing = make_source(site, sitemap="", urls=[site.url("/docs/webhooks?view=print")]).list()
    (doc,) = listing.documents
    assert doc.url == site.url("/docs/webhooks") and doc.doc_id == doc_id(site, "/docs/webhooks")


def test_markdown_page_is_taken_as_it_is(site: DocsSite, baseline: Crawl) -> None:
    faq = by_id(baseline.listing)[doc_id(site, FAQ)]
    assert faq.text == FAQ_MARKDOWN.strip()
    assert faq.title == "Frequently asked questions" and faq.locale == ""


def test_content_that_is_not_a_page_is_skipped(site: DocsSite, baseline: Crawl) -> None:
    assert doc_id(site, PDF) not in baseline.listing.doc_ids and baseline.listing.complete
    assert [r.status for r in baseline.served(PDF)] == [200]


# -- conditional requests ---------------------------------------------------------------------------------------


def test_recrawl_with_nothing_changed_is_all_304_and_downloads_no_page_body(
    site: DocsSite, crawled: tuple[WebSource, Listing]
) -> None:
    """Unchanged pages cost a 304 each, no body and (Listing.unchanged) no embedding."""
    source, first = crawled
    second = source.list()
    assert second.complete and second.documents == []
    assert second.unchanged == set(by_id(first)) == expected_ids(site)
    requests = page_requests(site)
    assert requests and all(r.status == 304 and r.body_bytes == 0 and r.if_none_match for r in requests)
    assert source.stats.documents == 0 and source.stats.not_modified == len(requests)


def test_only_the_edited_page_is_downloaded_again(site: DocsSite, crawled: tuple[WebSource, Listing]) -> None:
    source, _ = crawled
    site.edit("/docs/vue", "Vue 3 is supported from widget version 2.")
    listing = source.list()
    assert [d.doc_id for d in listing.documents] == [doc_id(site, "/docs/vue")]
    assert "Vue 3 is supported" in listing.documents[0].text
    assert listing.unchanged == expected_ids(site) - {doc_id(site, "/docs/vue")}


def test_validators_are_kept_only_after_commit(site: DocsSite) -> None:
    """A 304 must never stand for a page the index does not hold: until commit(), pages are downloaded again."""
    source = make_source(site, sitemap="", urls=[site.url("/docs/vue"), site.url("/docs/ios")])
    source.list()
    again = source.list()
    assert len(again.documents) == 2 and not again.unchanged
    assert all(not r.if_none_match and r.status == 200 for r in site.requests())
    source.commit()
    assert source.list().unchanged == {doc_id(site, "/docs/vue"), doc_id(site, "/docs/ios")}


def test_poll_trusting_lastmod_does_not_request_pages_whose_lastmod_is_unchanged(
    site: DocsSite, crawled: tuple[WebSource, Listing]
) -> None:
    source, _ = crawled
    source = WebSource(source.settings.model_copy(update={"trust_lastmod": True}), cache=source.cache, options=FAST)
    listing = source.list()
    gz_pages = site.article_paths[len(site.article_paths) // 2 :]
    assert all(not site.requests(path) for path in gz_pages)
    assert listing.unchanged == expected_ids(site) and source.stats.lastmod_skips == len(gz_pages)


def test_unconditional_listing_downloads_every_page_again(site: DocsSite, crawled: tuple[WebSource, Listing]) -> None:
    source, _ = crawled
    listing = source.list(rebuild=True)
    assert len(listing.documents) == 22 and not listing.unchanged
    assert all(not r.if_none_match for r in page_requests(site))


# -- failures and deletes ---------------------------------------------------------------------------------------


def test_page_answering_500_is_a_doc_error_and_the_listing_is_incomplete(
    site: DocsSite, crawled: tuple[WebSource, Listing]
) -> None:
    source, _ = crawled
    broken = site.add_broken_page()
    listing = source.list()
    assert not listing.complete
    assert [e.doc_id for e in listing.errors] == [doc_id(site, broken)]
    assert "HTTP 500" in listing.errors[0].message
    assert listing.unchanged == expected_ids(site), "the other pages are still listed"
    assert len(site.requests(broken)) == FAST.attempts, "retried before giving up"


def test_one_failure_is_retried_away(site: DocsSite) -> None:
    site.fail("/docs/ios", times=1, status=503)
    listing = make_source(site, sitemap="", urls=[site.url("/docs/ios")]).list()
    assert listing.complete and doc_id(site, "/docs/ios") in by_id(listing)
    assert [r.status for r in site.requests("/docs/ios")] == [503, 200]


def test_timeout_is_a_doc_error_not_a_delete(site: DocsSite) -> None:
    site.delay("/docs/android", 1.0)
    listing = make_source(site, sitemap="", urls=[site.url("/docs/android"), site.url("/docs/ios")]).list()
    assert not listing.complete and [e.doc_id for e in listing.errors] == [doc_id(site, "/docs/android")]
    assert "timed out" in listing.errors[0].message


@pytest.mark.parametrize("status", [404, 410])
def test_removed_page_is_absent_from_a_complete_listing_and_confirmed_gone(
    site: DocsSite, crawled: tuple[WebSource, Listing], status: int
) -> None:
    source, _ = crawled
    gone = doc_id(site, "/docs/gatsby")
    site.remove("/docs/gatsby", status)
    listing = source.list()
    assert listing.complete and gone not in listing.doc_ids
    assert source.confirm_gone({gone, doc_id(site, "/docs/vue")}) == {gone}
    assert source.cache.get(site.url("/docs/gatsby")) is None


def test_page_dropped_from_a_complete_sitemap_is_confirmed_gone(
    site: DocsSite, crawled: tuple[WebSource, Listing]
) -> None:
    source, _ = crawled
    site.unlist("/docs/nextjs")
    listing = source.list()
    assert listing.complete and doc_id(site, "/docs/nextjs") not in listing.doc_ids
    assert source.confirm_gone({doc_id(site, "/docs/nextjs")}) == {doc_id(site, "/docs/nextjs")}


def test_transient_failures_never_confirm_a_page_gone(site: DocsSite, crawled: tuple[WebSource, Listing]) -> None:
    source, _ = crawled
    target = doc_id(site, "/docs/nextjs")
    site.fail("/docs/nextjs", status=500)
    assert source.confirm_gone({target}) == set()
    site.reset()
    site.delay("/docs/nextjs", 1.0)
    assert source.confirm_gone({target}) == set()
    site.reset()
    # dropped from the sitemap, but a sitemap cannot be read: the second look cannot prove anything
    site.unlist("/docs/nextjs")
    site.fail("/sitemaps/pages.xml", status=500)
    assert source.confirm_gone({target}) == set()


def test_failing_child_sitemap_makes_the_listing_incomplete(site: DocsSite, crawled: tuple[WebSource, Listing]) -> None:
    source, _ = crawled
    site.fail("/sitemaps/articles.xml.gz", status=500)
    listing = source.list()
    assert not listing.complete and any("sitemap" in e.message for e in listing.errors)
    assert doc_id(site, site.article_paths[0]) in listing.unchanged


@pytest.mark.parametrize(
    ("status", "error"), [(500, SourceUnavailable), (404, SourceRejected)], ids=["unavailable", "missing"]
)
def test_root_sitemap_failure_fails_the_whole_listing(site: DocsSite, status: int, error: type[Exception]) -> None:
    site.fail("/sitemap.xml", status=status)
    with pytest.raises(error):
        make_source(site).list()


# -- safety -----------------------------------------------------------------------------------------------------


def test_private_sitemap_is_refused_without_allow_private_hosts(site: DocsSite) -> None:
    source = make_source(site, allow_private_hosts=False)
    with pytest.raises(SourceRejected, match=r"127\.0\.0\.1.*loopback.*allow_private_hosts"):
        source.list()
    assert site.requests() == [], "not a single request reached the private host"
    assert source.confirm_gone({doc_id(site, "/docs/vue")}) == set()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/sitemap.xml",
        "http://192.168.0.1/sitemap.xml",
        "http://[::1]/sitemap.xml",
        "http://[::ffff:127.0.0.1]/sitemap.xml",
        "http://0.0.0.0/sitemap.xml",
        "http://100.64.0.1/sitemap.xml",
    ],
)
def test_ssrf_guard_refuses_non_public_addresses(url: str) -> None:
    for settings in (
        WebSourceSettings(kind="web", sitemap=url),
        WebSourceSettings(kind="web", urls=[url]),
    ):
        with pytest.raises(SourceRejected, match="allow_private_hosts"):
            WebSource(settings, options=FAST).list()


def test_redirect_to_a_host_outside_the_include_rules_is_not_followed(site: DocsSite, baseline: Crawl) -> None:
    assert [r.status for r in baseline.served(MOVED_AWAY)] == [302]
    assert not [r for r in baseline.requests if r.host.startswith("localhost")]
    assert doc_id(site, MOVED_AWAY) not in baseline.listing.doc_ids and baseline.listing.complete


def test_no_credentials_are_ever_sent(site: DocsSite, server: DocsSiteServer) -> None:
    with httpx.Client(
        headers={"Authorization": "Bearer tenant-secret"}, auth=("user", "pass"), cookies={"session": "s3cret"}
    ) as client:
        make_source(site, client=client, max_pages=3).list()
        userinfo = f"http://admin:pw@127.0.0.1:{server.port}{FAQ}"
        make_source(site, client=client, sitemap="", urls=[userinfo]).list()
    assert site.requests(FAQ)
    assert all(r.authorization == "" and r.cookie == "" for r in site.requests())


def test_page_validators_are_plain_json() -> None:
    validators = PageValidators(doc_id="web:https://a.example/x", etag='"abc"', last_modified="Mon", lastmod=5)
    assert PageValidators.from_json(json.loads(json.dumps(validators.to_json()))) == validators
