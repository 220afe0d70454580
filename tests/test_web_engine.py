"""Web pages and Chatwoot articles in one collection (issue 5): each source deletes only its own documents, and an
unchanged site costs 304s and zero embeddings, also after a restart (validators live in the state database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kbsync.runs import ProjectKey
from kbsync.settings import load_settings
from kbsync.sources.chatwoot import ChatwootClientOptions
from kbsync.wiring import open_engine
from tests.servers.chatwoot import AGENT_TOKEN, ChatwootServer, FakeChatwoot
from tests.servers.web import DocsSite, DocsSiteServer

KEY = ProjectKey("acme", "alpha")
FAST = ChatwootClientOptions(attempts=2, backoff_initial=0.01, backoff_max=0.02, requests_per_second=None)


@pytest.fixture(scope="module")
def site_server() -> Iterator[DocsSiteServer]:
    with DocsSiteServer(DocsSite(slugs=("canned-responses", "webhooks", "android"))) as running:
        yield running


@pytest.fixture(scope="module")
def chatwoot() -> Iterator[ChatwootServer]:
    fake = FakeChatwoot()
    fake.add_portal(1, "alpha-help", locales=["en"])
    for n, text in enumerate(["Refunds are paid within five business days.", "Invoices are emailed monthly."]):
        fake.add_article("alpha-help", title=f"Billing {n}", content=text, status="published")
    fake.snapshot()  # what reset() restores
    with ChatwootServer(fake) as running:
        yield running


@pytest.fixture
def config(write_settings, site_server: DocsSiteServer, chatwoot: ChatwootServer, monkeypatch) -> Path:
    site_server.site.reset()
    chatwoot.fake.reset()
    monkeypatch.setenv("ACME_TOKEN", AGENT_TOKEN)
    return write_settings(
        f"""
        log_format = "json"
        log_level = "warning"
        [[tenants]]
        id = "acme"
        chatwoot_url = "{chatwoot.base_url}"
        account_id = 1
        api_token_env = "ACME_TOKEN"
        [[tenants.projects]]
        id = "alpha"
        [[tenants.projects.sources]]
        kind = "chatwoot"
        portal = "alpha-help"
        [[tenants.projects.sources]]
        kind = "web"
        sitemap = "{site_server.site.sitemap_url}"
        allow_private_hosts = true
        """
    )


def docs_by_source(engine) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for doc in engine.store.index(KEY.collection).docs.values():
        out.setdefault(doc.source, set()).add(doc.doc_id)
    return out


def test_web_and_chatwoot_documents_coexist_and_delete_only_their_own(config, site_server, chatwoot) -> None:
    site = site_server.site
    with open_engine(load_settings(config), chatwoot_options=FAST) as engine:
        first = engine.reconcile(KEY)
        assert first.outcome == "ok", first.errors
        held = docs_by_source(engine)
        web_source = f"web:{site.sitemap_url}"
        assert len(held["chatwoot:alpha-help"]) == 2
        assert len(held[web_source]) >= 3
        assert all(doc_id.startswith("web:http://127.0.0.1") for doc_id in held[web_source])

        site.remove(site.article_paths[0], status=410)
        gone_article = sorted(held["chatwoot:alpha-help"])[0]
        chatwoot.fake.delete_article("alpha-help", int(gone_article.rsplit(":", 1)[1]))
        report = engine.reconcile(KEY)
        after = docs_by_source(engine)
        assert report.docs_deleted == 2 and report.chunks_embedded == 0
        assert after["chatwoot:alpha-help"] == held["chatwoot:alpha-help"] - {gone_article}
        assert after[web_source] == held[web_source] - {f"web:{site.url(site.article_paths[0])}"}


def test_unchanged_site_costs_304s_and_zero_embeddings_even_after_a_restart(config, site_server) -> None:
    site = site_server.site
    with open_engine(load_settings(config), chatwoot_options=FAST) as engine:
        assert engine.reconcile(KEY).chunks_embedded > 0
    site.clear_requests()
    with open_engine(load_settings(config), chatwoot_options=FAST) as engine:  # a restart: new process state
        report = engine.reconcile(KEY)
    assert report.chunks_embedded == 0 and report.outcome == "ok"
    page_hits = [r for r in site.requests() if r.path.startswith("/docs/")]
    assert page_hits and all(r.status == 304 for r in page_hits), [(r.path, r.status) for r in page_hits]


def test_an_edited_page_re_embeds_only_its_changed_chunks(config, site_server) -> None:
    site = site_server.site
    with open_engine(load_settings(config), chatwoot_options=FAST) as engine:
        engine.reconcile(KEY)
        site.edit(site.article_paths[1], paragraph="Webhook deliveries are retried three times by our gateway.")
        report = engine.reconcile(KEY)
        assert report.docs_updated == 1 and 1 <= report.chunks_embedded <= 2
        hit = engine.query(KEY, "how often are webhook deliveries retried", k=1)[0]
        assert "retried three times" in hit.text
