"""Decompression bombs against the `web` source (issue 17, finding 2), from a hostile server on 127.0.0.1: decoded
bytes are bounded while streaming (pages, robots.txt, sitemaps, gzip sitemap files), stacked encodings are refused,
and the error names the URL. Memory is measured with tracemalloc (peak of Python allocations during the listing)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from kbsync.errors import SourceError
from kbsync.markdown import html_to_markdown
from kbsync.settings import WebSourceSettings
from kbsync.sources.web import FetchOptions, MemoryPageCache, WebSource
from tests.servers.hostile_web import HostileServer, Reply, gzip_bomb

MIB = 1024 * 1024
DECODED = 256 * MIB  # what each bomb inflates to
OPTIONS = FetchOptions(attempts=1, read_timeout=5.0, max_bytes=MIB, max_sitemap_bytes=MIB, max_robots_bytes=64 * 1024)
PEAK_LIMIT = 24 * MIB  # a few limits' worth; the bombs are ten times that
HTML = {"content-type": "text/html; charset=utf-8"}
PAGE = b"<html><head><title>Fine</title></head><body><main><h1>Fine</h1><p>A page of docs.</p></main></body></html>"


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"single": gzip_bomb(DECODED), "double": gzip_bomb(DECODED, layers=2)}


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """Import the extraction stack (trafilatura, lxml) before anything is measured: its import is not the body."""
    html_to_markdown(PAGE.decode())


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as running:
        yield running


def source(server: HostileServer, **settings: Any) -> WebSource:
    values = {"kind": "web", "allow_private_hosts": True, **settings}
    return WebSource(WebSourceSettings(**values), cache=MemoryPageCache(), options=OPTIONS)


def peak_of(call: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_bombs_are_small_on_the_wire(bombs: dict[str, bytes]) -> None:
    assert len(bombs["double"]) < 8 * 1024 and len(bombs["single"]) < 300 * 1024


def test_a_gzip_of_gzip_page_is_refused_naming_the_url(server: HostileServer, bombs: dict[str, bytes]) -> None:
    server.replies["/bomb"] = Reply(200, {**HTML, "Content-Encoding": "gzip, gzip"}, bombs["double"])
    server.replies["/fine"] = Reply(200, HTML, PAGE)
    web = source(server, urls=[server.url("/bomb"), server.url("/fine")])

    listing, peak = peak_of(web.list)

    [error] = listing.errors
    assert server.url("/bomb") in error.message and "stacked Content-Encoding 'gzip, gzip'" in error.message
    assert [d.url for d in listing.documents] == [server.url("/fine")]
    assert not listing.complete  # nothing may be deleted because of it
    assert peak < PEAK_LIMIT


def test_a_single_layer_bomb_stops_at_max_bytes(server: HostileServer, bombs: dict[str, bytes]) -> None:
    server.replies["/bomb"] = Reply(200, {**HTML, "Content-Encoding": "gzip"}, bombs["single"])
    web = source(server, urls=[server.url("/bomb")])

    with structlog.testing.capture_logs() as logs:
        listing, peak = peak_of(web.list)

    assert listing.documents == [] and peak < PEAK_LIMIT
    [skipped] = [e for e in logs if e["event"] == "web.page_skipped"]
    assert skipped["url"] == server.url("/bomb") and f"larger than {MIB} bytes once decoded" in skipped["reason"]
    assert web.stats.bytes_downloaded < len(bombs["single"])  # stopped reading once the bound was hit


def test_a_robots_txt_bomb_is_bounded(server: HostileServer, bombs: dict[str, bytes]) -> None:
    robots_headers = {"content-type": "text/plain", "Content-Encoding": "gzip"}
    server.replies["/robots.txt"] = Reply(200, robots_headers, bombs["single"])
    server.replies["/fine"] = Reply(200, HTML, PAGE)
    web = source(server, urls=[server.url("/fine")])

    listing, peak = peak_of(web.list)

    assert [d.url for d in listing.documents] == [server.url("/fine")] and peak < PEAK_LIMIT


@pytest.mark.parametrize(
    ("headers", "layers", "message"),
    [
        ({"Content-Encoding": "gzip"}, 1, f"larger than {MIB} bytes once decoded"),
        ({"Content-Encoding": "gzip, gzip"}, 2, "stacked Content-Encoding"),
        ({"Content-Encoding": "gzip"}, 2, f"larger than {MIB} bytes once decompressed"),  # a .xml.gz sent gzipped
        ({}, 1, f"larger than {MIB} bytes once decompressed"),  # a .xml.gz file
    ],
)
def test_a_sitemap_bomb_fails_the_listing_naming_the_url(
    server: HostileServer, bombs: dict[str, bytes], headers: dict[str, str], layers: int, message: str
) -> None:
    body = bombs["single"] if layers == 1 else bombs["double"]
    server.replies["/sitemap.xml.gz"] = Reply(200, {"content-type": "application/xml", **headers}, body)
    web = source(server, sitemap=server.url("/sitemap.xml.gz"))

    def failure() -> SourceError:
        with pytest.raises(SourceError) as caught:
            web.list()
        return caught.value

    error, peak = peak_of(failure)

    assert server.url("/sitemap.xml.gz") in str(error) and message in str(error)
    assert peak < PEAK_LIMIT


def test_an_unknown_encoding_is_refused(server: HostileServer) -> None:
    server.replies["/page"] = Reply(200, {**HTML, "Content-Encoding": "br"}, b"\x0b\x02\x80hello\x03")
    listing = source(server, urls=[server.url("/page")]).list()
    [error] = listing.errors
    assert "unsupported Content-Encoding 'br'" in error.message and server.url("/page") in error.message
