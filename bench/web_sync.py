"""Crawl of the test docs site (tests/servers/web.py, 127.0.0.1) through `WebSource.list()`, then re-crawls.

1. initial crawl: every page downloaded and extracted (pages, seconds, bytes on the wire, requests);
2. re-crawl with nothing changed (the reconcile path): conditional requests, every page a 304, no body, and so
   no document for the engine to chunk or embed; its time as a fraction of the initial crawl;
3. poll trusting the sitemap's <lastmod> (pages listed with a <lastmod> that did not move are not requested);
4. one page edited: exactly one document comes back.

The engine is not involved (the web source is not wired into it yet): "0 embeddings" here means an empty
`Listing.documents`, everything in `Listing.unchanged`.

    python bench/web_sync.py [--articles N] [--workers 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kbsync.sources.web.pages as web_pages
from kbsync.logging import configure_logging
from kbsync.settings import WebSourceSettings
from kbsync.sources import Listing
from kbsync.sources.web import FetchOptions, MemoryPageCache, WebSource
from tests.servers.web import DocsSite, DocsSiteServer


class TimedExtraction:
    """Seconds spent in `html_to_markdown` (trafilatura), summed over the worker threads."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._extract = web_pages.html_to_markdown

    def __call__(self, html: str) -> tuple[str, str]:
        started = time.perf_counter()
        try:
            return self._extract(html)
        finally:
            self.seconds += time.perf_counter() - started


EXTRACTION = TimedExtraction()
web_pages.html_to_markdown = EXTRACTION  # type: ignore[assignment]  # measurement only


def _crawl(source: WebSource, **kwargs: Any) -> tuple[Listing, dict[str, Any]]:
    EXTRACTION.seconds = 0.0
    started = time.perf_counter()
    listing = source.list(**kwargs)
    seconds = time.perf_counter() - started
    stats = source.stats
    return listing, {
        "seconds": round(seconds, 3),
        "documents": len(listing.documents),
        "unchanged": len(listing.unchanged),
        "errors": len(listing.errors),
        "complete": listing.complete,
        "not_modified_304": stats.not_modified,
        "lastmod_skips": stats.lastmod_skips,
        "requests": stats.requests,
        "bytes_downloaded": stats.bytes_downloaded,
        "text_chars": sum(len(d.text) for d in listing.documents),
        "extraction_seconds": round(EXTRACTION.seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=0, help="first N corpus articles (default: all 161)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--per-host", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_logging("console", "warning")

    corpus = json.loads(
        (Path(__file__).resolve().parents[2] / "shared" / "corpus" / "chatwoot-docs.json").read_text(encoding="utf-8")
    )["articles"]
    slugs = tuple(a["slug"] for a in corpus[: args.articles or None])
    options = FetchOptions(workers=args.workers, per_host=args.per_host)
    with DocsSiteServer(DocsSite(slugs=slugs)) as server:
        site = server.site
        settings = WebSourceSettings(kind="web", sitemap=site.sitemap_url, allow_private_hosts=True)
        source = WebSource(settings, cache=MemoryPageCache(), options=options)
        initial_listing, initial = _crawl(source)
        source.commit()  # what the engine does once the documents are stored
        _, recrawl = _crawl(source)
        source.commit()
        trusting = WebSource(settings.model_copy(update={"trust_lastmod": True}), cache=source.cache, options=options)
        _, poll = _crawl(trusting)
        site.edit(site.article_paths[0])
        _, edited = _crawl(source)
        source.commit()
    pages = len(initial_listing.documents)
    result = {
        "pages": pages,
        "workers": args.workers,
        "per_host": args.per_host,
        "initial": initial,
        "recrawl_unchanged": {
            **recrawl,
            "fraction_of_initial_time": round(recrawl["seconds"] / initial["seconds"], 4),
            "fraction_of_initial_bytes": round(recrawl["bytes_downloaded"] / initial["bytes_downloaded"], 4),
        },
        "poll_trust_lastmod": poll,
        "one_page_edited": edited,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"initial crawl: {pages} pages in {initial['seconds']:.2f} s ({pages / initial['seconds']:.1f} pages/s), "
        f"{initial['bytes_downloaded'] / 1024:.0f} KiB in {initial['requests']} requests, "
        f"complete={initial['complete']}; "
        f"time inside trafilatura {initial['extraction_seconds']:.2f} s"
        f"{' (summed over the worker threads, GIL waits included)' if args.workers > 1 else ''}"
    )
    print(
        f"re-crawl, nothing changed: {recrawl['not_modified_304']} x 304, {recrawl['documents']} documents to embed, "
        f"{recrawl['bytes_downloaded'] / 1024:.1f} KiB "
        f"({100 * result['recrawl_unchanged']['fraction_of_initial_bytes']:.1f}% of the bytes), "
        f"{recrawl['seconds']:.2f} s ({100 * result['recrawl_unchanged']['fraction_of_initial_time']:.1f}% of the time)"
    )
    print(
        f"poll trusting <lastmod>: {poll['lastmod_skips']} pages not requested, {poll['not_modified_304']} x 304, "
        f"{poll['requests']} requests, {poll['seconds']:.2f} s"
    )
    print(
        f"one page edited: {edited['documents']} document downloaded, {edited['unchanged']} unchanged, "
        f"{edited['seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
