"""DNS rebinding (issue 17, low): the web source connects to the address its SSRF guard resolved and checked, and
never resolves the host again, so a DNS answer that changes after the check cannot redirect a request. A resolver
that answers 127.0.0.1 first and 127.0.0.2 afterwards, and a server on each of those addresses, on one port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from kbsync.settings import WebSourceSettings
from kbsync.sources.web import FetchOptions, MemoryPageCache, WebSource
from tests.servers.hostile_web import HostileServer, Reply

HOST = "docs.rebind.test"
CLOSE = {"content-type": "text/html; charset=utf-8", "Connection": "close"}  # every request a new connection


def page(origin: str, n: int) -> bytes:
    return (
        f"<html><head><title>Page {n}</title></head><body><main><h1>Page {n}</h1>"
        f"<p>Served by the {origin} server, page number {n} of the docs.</p></main></body></html>"
    ).encode()


@pytest.fixture
def servers() -> Iterator[tuple[HostileServer, HostileServer]]:
    with HostileServer("127.0.0.1") as first:
        with HostileServer("127.0.0.2", first.port) as rebound:
            for n in range(4):
                first.replies[f"/p{n}"] = Reply(200, CLOSE, page("first", n))
                rebound.replies[f"/p{n}"] = Reply(200, CLOSE, page("rebound", n))
            yield first, rebound


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """getaddrinfo for HOST: 127.0.0.1 the first time, 127.0.0.2 every later time; other names as usual."""
    answers: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: object, port: object, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        if host != HOST:
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        answers.append("127.0.0.1" if not answers else "127.0.0.2")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answers[-1], int(port)))]  # type: ignore[call-overload]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    return answers


def test_every_request_goes_to_the_address_resolved_first(servers, lookups: list[str]) -> None:
    first, rebound = servers
    urls = [f"http://{HOST}:{first.port}/p{n}" for n in range(4)]
    settings = WebSourceSettings(kind="web", urls=urls, allow_private_hosts=True)
    listing = WebSource(settings, cache=MemoryPageCache(), options=FetchOptions(attempts=1, workers=1)).list()

    assert rebound.requests == [], "a request followed the changed DNS answer"
    assert lookups == ["127.0.0.1"]  # resolved once, for the guard; connections never resolve again
    assert sorted(first.requests) == ["/p0", "/p1", "/p2", "/p3", "/robots.txt"]
    assert set(first.hosts) == {f"{HOST}:{first.port}"}  # the Host header still names the host
    assert all("first server" in d.text for d in listing.documents) and len(listing.documents) == 4
