"""The Confluence source against the Confluence Cloud-compatible server: listing, labels, the version gate, CQL
polls and their fallback, the second look, and every fault mapped to a clear error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from kbsync.errors import ConfigError, IncompleteListing
from kbsync.settings import ConfluenceSourceSettings, load_settings
from kbsync.sources._http import HttpOptions, RejectedStatus
from kbsync.sources.apis import open_api_source
from kbsync.sources.confluence import ConfluenceSource
from tests.servers.confluence import EMAIL, PAT, TOKEN, ConfluenceServer, FakeConfluence, Fault

FAST = HttpOptions(
    read_timeout=1.0,
    attempt_deadline_seconds=2.0,
    retry_budget_seconds=3.0,
    backoff_initial=0.01,
    backoff_max=0.05,
    requests_per_second=1000,
)
CODE_PAGE = (
    '<h2>Install</h2><p>Run <code>make</code> then read <a href="https://x.example/doc">the doc</a>.</p>'
    '<ac:structured-macro ac:name="code"><ac:parameter ac:name="language">bash</ac:parameter>'
    "<ac:plain-text-body><![CDATA[pip install kbsync]]></ac:plain-text-body></ac:structured-macro>"
    '<ac:structured-macro ac:name="warning"><ac:rich-text-body><p>Back up first.</p></ac:rich-text-body>'
    '</ac:structured-macro><p><ac:image><ri:attachment ri:filename="x.png"/></ac:image></p>'
    '<ac:structured-macro ac:name="jira"><ac:parameter ac:name="key">OPS-1</ac:parameter></ac:structured-macro>'
    "<ul><li>one<ul><li>nested</li></ul></li></ul><table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr>"
    "</table>"
)


@pytest.fixture
def fake() -> FakeConfluence:
    fake = FakeConfluence()
    fake.add_space("DOCS")
    fake.add_space("OTHER")
    return fake


@pytest.fixture
def server(fake: FakeConfluence) -> Iterator[ConfluenceServer]:
    with ConfluenceServer(fake) as running:
        yield running


@pytest.fixture
def make_source(write_settings, server: ConfluenceServer, monkeypatch) -> Iterator[Callable[..., ConfluenceSource]]:
    monkeypatch.setenv("CONF_EMAIL", EMAIL)
    monkeypatch.setenv("CONF_TOKEN", TOKEN)
    with ExitStack() as stack:

        def make(extra: str = "", *, email: bool = True) -> ConfluenceSource:
            email_line = 'email_env = "CONF_EMAIL"' if email else ""
            path = write_settings(
                f"""
                [[tenants]]
                id = "acme"
                [[tenants.projects]]
                id = "docs"
                [[tenants.projects.sources]]
                kind = "confluence"
                base_url = "{server.site_url}"
                space = "DOCS"
                token_env = "CONF_TOKEN"
                {email_line}
                {extra}
                """
            )
            settings = load_settings(path).tenants[0].projects[0].sources[0]
            assert isinstance(settings, ConfluenceSourceSettings)
            source = open_api_source(settings, stack, options=FAST)
            assert isinstance(source, ConfluenceSource)
            return source

        yield make


def test_lists_only_current_pages_as_markdown(fake: FakeConfluence, make_source, server: ConfluenceServer) -> None:
    page = fake.add_page("DOCS", "Setup guide", CODE_PAGE)
    for status in ("draft", "archived", "trashed"):
        fake.add_page("DOCS", f"A {status} page", "<p>secret plans</p>", status=status)
    fake.add_page("OTHER", "Elsewhere", "<p>other space</p>")
    listing = make_source().list()
    assert listing.complete
    assert [d.title for d in listing.documents] == ["Setup guide"]
    doc = listing.documents[0]
    assert doc.doc_id == f"confluence:DOCS:{page}"
    assert doc.url == f"{server.site_url}/spaces/DOCS/pages/{page}/Setup+guide"
    assert doc.locale == "en" and doc.updated_at == fake.pages["DOCS"][page].updated
    assert "## Install" in doc.text and "`make`" in doc.text and "[the doc](https://x.example/doc)" in doc.text
    assert "```bash\npip install kbsync\n```" in doc.text
    assert "> Back up first." in doc.text
    assert "- one\n  - nested" in doc.text and "| k | v |" in doc.text
    for dropped in ("<", "OPS-1", "x.png", "ac:"):
        assert dropped not in doc.text
    assert listing.total == 1 and listing.watermark == fake.pages["DOCS"][page].updated


def test_paging_follows_links_next(fake: FakeConfluence, make_source) -> None:
    ids = {fake.add_page("DOCS", f"Page {n}", f"<p>Body {n}</p>") for n in range(260)}
    listing = make_source().list()
    assert {d.doc_id.rsplit(":", 1)[1] for d in listing.documents} == ids
    assert fake.faults.count("/spaces/9000/pages") == 2  # 250 + 10


def test_labels_filter_and_the_second_look(fake: FakeConfluence, make_source) -> None:
    public = fake.add_page("DOCS", "Public", "<p>for everyone</p>", labels=["public", "faq"])
    fake.add_page("DOCS", "Internal", "<p>staff only</p>", labels=["internal"])
    source = make_source('labels = ["public"]')
    listing = source.list()
    assert [d.title for d in listing.documents] == ["Public"]
    doc_id = listing.documents[0].doc_id
    assert source.confirm_gone({doc_id}) == set()
    fake.set_labels("DOCS", public, ["internal"])
    assert source.confirm_gone({doc_id}) == {doc_id}
    trashed = fake.add_page("DOCS", "Soon gone", "<p>x</p>", labels=["public"])
    fake.set_status("DOCS", trashed, "trashed")
    assert source.confirm_gone({f"confluence:DOCS:{trashed}", "confluence:DOCS:999999"}) == {
        f"confluence:DOCS:{trashed}",
        "confluence:DOCS:999999",
    }


def test_unchanged_versions_are_not_converted_again(fake: FakeConfluence, make_source) -> None:
    first_id = fake.add_page("DOCS", "One", "<p>one</p>")
    fake.add_page("DOCS", "Two", "<p>two</p>")
    source = make_source()
    first = source.list()
    source.applied(first, [d.doc_id for d in first.documents])
    fake.edit("DOCS", first_id, body="<p>one, edited</p>")
    second = source.list()
    assert [d.title for d in second.documents] == ["One"] and len(second.unchanged) == 1
    assert source.list(rebuild=True).documents  # rebuild reads everything


def test_poll_fetches_only_changed_bodies(fake: FakeConfluence, make_source) -> None:
    nine_days_ago = fake.clock - 86_400 * 9  # outside the poll's window (a day before the watermark)
    ids = [fake.add_page("DOCS", f"Page {n}", f"<p>Body {n}</p>", updated=nine_days_ago + n) for n in range(5)]
    source = make_source()
    listing = source.list()
    source.applied(listing, [d.doc_id for d in listing.documents])
    fake.faults.clear_requests()
    quiet = source.changes_since(listing.watermark or 0)
    assert (quiet.published, quiet.gone, quiet.requests, quiet.complete) == ([], set(), 2, True)
    assert fake.faults.count("/api/v2/pages/") == 0  # no body fetched
    fake.edit("DOCS", ids[2], body="<p>Body 2, now with more words</p>")
    changed = source.changes_since(quiet.newest)
    assert [d.text for d in changed.published] == ["Body 2, now with more words\n"]
    assert fake.faults.count("/api/v2/pages/") == 1
    assert changed.newest == fake.pages["DOCS"][ids[2]].updated
    source.applied_changes(changed, [d.doc_id for d in listing.documents])
    assert source.changes_since(changed.newest).published == []  # the same version is not fetched twice


def test_poll_falls_back_to_version_numbers_without_cql(fake: FakeConfluence, make_source) -> None:
    ids = [fake.add_page("DOCS", f"Page {n}", f"<p>Body {n}</p>") for n in range(3)]
    fake.cql_allowed = False
    source = make_source()
    listing = source.list()
    assert listing.total == 3  # counted by the listing where search is refused
    source.applied(listing, [d.doc_id for d in listing.documents])
    assert source.changes_since(listing.watermark or 0).published == []
    fake.edit("DOCS", ids[0], body="<p>fresh</p>")
    fake.delete("DOCS", ids[1])
    changes = source.changes_since(listing.watermark or 0)
    assert [d.text for d in changes.published] == ["fresh\n"]
    assert changes.all_articles_count == 2  # the drop makes the engine reconcile


def test_an_edit_between_two_listing_pages_is_caught_by_the_next_poll(fake: FakeConfluence, make_source) -> None:
    ids = [fake.add_page("DOCS", f"Page {n}", f"<p>Body {n}</p>") for n in range(300)]
    fake.faults.before(
        "/spaces/9000/pages",
        lambda: fake.edit("DOCS", ids[0], body="<p>edited meanwhile</p>"),
        query_contains="cursor=",
    )
    source = make_source()
    listing = source.list()
    assert next(d for d in listing.documents if d.doc_id.endswith(ids[0])).text == "Body 0\n"
    source.applied(listing, [d.doc_id for d in listing.documents])
    changes = source.changes_since(listing.watermark or 0)
    assert [d.text for d in changes.published] == ["edited meanwhile\n"]


def test_a_listing_page_that_keeps_failing_is_an_incomplete_listing(fake: FakeConfluence, make_source) -> None:
    for n in range(260):
        fake.add_page("DOCS", f"Page {n}", "<p>x</p>")
    fake.faults.add(Fault(path_contains="/spaces/9000/pages", query_contains="cursor=", status=503, times=None))
    with pytest.raises(IncompleteListing, match="listing stopped at page 2, nothing may be deleted"):
        make_source().list()


def test_transient_faults_are_retried(fake: FakeConfluence, make_source) -> None:
    fake.add_page("DOCS", "Only", "<p>x</p>")
    fake.faults.add(Fault(path_contains="/api/v2/spaces", status=429, headers={"retry-after": "0"}))
    fake.faults.add(Fault(path_contains="/pages", status=500))
    fake.faults.add(Fault(path_contains="/pages", truncate_at=20))
    fake.faults.add(Fault(path_contains="/rest/api/search", delay=1.5))  # past the read timeout
    assert [d.title for d in make_source().list().documents] == ["Only"]
    assert fake.faults.pending == 0


def test_a_refused_token_names_the_variables(fake: FakeConfluence, make_source, monkeypatch) -> None:
    monkeypatch.setenv("CONF_TOKEN", "wrong-token-value")
    with pytest.raises(RejectedStatus, match="check CONF_TOKEN and CONF_EMAIL") as info:
        make_source().list()
    assert info.value.status == 401 and "wrong-token-value" not in str(info.value)


def test_a_personal_access_token_is_sent_as_bearer(fake: FakeConfluence, make_source, monkeypatch) -> None:
    fake.add_page("DOCS", "Only", "<p>x</p>")
    monkeypatch.setenv("CONF_TOKEN", PAT)
    assert len(make_source(email=False).list().documents) == 1


def test_space_permission_and_unknown_space(fake: FakeConfluence, make_source) -> None:
    fake.faults.add(Fault(path_contains="/api/v2/spaces", status=403, body={"message": "no permission"}))
    with pytest.raises(RejectedStatus, match="may not read space 'DOCS': grant it view permission"):
        make_source().list()
    del fake.spaces["DOCS"]
    with pytest.raises(RejectedStatus, match="space 'DOCS' not found"):
        make_source().list()


def test_settings_name_what_is_wrong(write_settings, monkeypatch) -> None:
    monkeypatch.delenv("CONF_TOKEN", raising=False)
    base = """
        [[tenants]]
        id = "acme"
        [[tenants.projects]]
        id = "docs"
        [[tenants.projects.sources]]
        kind = "confluence"
        space = "DOCS"
        token_env = "CONF_TOKEN"
        """
    with pytest.raises(ConfigError, match=r"base_url.*ending in /wiki"):
        load_settings(write_settings(base + 'base_url = "https://example.atlassian.net"\n'))
    with pytest.raises(ConfigError, match="CONF_TOKEN is not set") as info:
        load_settings(write_settings(base + 'base_url = "https://example.atlassian.net/wiki"\n'))
    assert info.value.key == "tenants[0].projects[0].sources[0].token_env"
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(write_settings(base + 'base_url = "https://e.atlassian.net/wiki"\ntoken = "inline"\n'))
