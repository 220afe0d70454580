"""kbsync/sources/_http.py (and _body.py) against a real local server that misbehaves the way real ones do."""

from __future__ import annotations

import email.utils
import gzip
import time
import zlib
from collections.abc import Iterator

import pytest

from kbsync.errors import SourceRejected, SourceUnavailable
from kbsync.sources._body import BodyTooLarge, BoundedDecoder, UndecodableBody
from kbsync.sources._http import HttpClient, HttpOptions, RejectedStatus, UnavailableStatus, parse_retry_after
from tests.servers.scripted import Reply, ScriptedServer

FAST = HttpOptions(
    connect_timeout=2.0,
    read_timeout=0.5,
    attempt_deadline_seconds=1.0,
    retry_budget_seconds=3.0,
    backoff_initial=0.01,
    backoff_max=0.05,
)
SECRET = "s3cr3t-token-value"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


def client_for(server: ScriptedServer, options: HttpOptions = FAST, **kwargs: object) -> HttpClient:
    return HttpClient(
        server.base_url,
        source="test:src",
        headers={"authorization": f"Bearer {SECRET}"},
        options=options,
        hints={401: "check token_env"},
        **kwargs,  # type: ignore[arg-type]
    )


def test_retries_429_and_5xx_then_succeeds(server: ScriptedServer) -> None:
    server.script("/x", Reply(429, headers={"retry-after": "0"}), Reply(503), Reply(502), Reply(body={"v": 1}))
    with client_for(server) as client:
        assert client.get_json("/x") == {"v": 1}
        assert (client.requests, client.attempts) == (1, 4)
    assert server.count("/x") == 4


def test_truncated_json_is_retried(server: ScriptedServer) -> None:
    body = b'{"results": [1, 2, 3]}'
    server.script("/x", Reply(body=body, cut_at=10), Reply(body=b'{"results": [1'), Reply(body=body))
    with client_for(server) as client:
        assert client.get_json("/x") == {"results": [1, 2, 3]}
    assert server.count("/x") == 3


def test_timeouts_are_retried_within_the_budget(server: ScriptedServer) -> None:
    server.script("/x", Reply(stall=0.8), Reply(body={"v": 2}))
    with client_for(server) as client:
        assert client.get_json("/x") == {"v": 2}


def test_a_trickling_server_cannot_hold_an_attempt_past_its_deadline(server: ScriptedServer) -> None:
    # Each byte arrives well within the read timeout, so only the attempt deadline can stop this body.
    slow = Reply(body=b'{"v": "' + b"x" * 200 + b'"}', trickle=0.02)
    server.script("/x", slow, Reply(body={"v": 3}))
    with client_for(server) as client:
        assert client.get_json("/x") == {"v": 3}
        assert client.attempts == 2


def test_the_budget_ends_retries_with_a_transient_error_carrying_the_status(server: ScriptedServer) -> None:
    server.script("/x", *[Reply(500) for _ in range(200)])
    options = HttpOptions(read_timeout=1.0, retry_budget_seconds=0.5, backoff_initial=0.05, backoff_max=0.1)
    with client_for(server, options) as client, pytest.raises(UnavailableStatus) as info:
        client.get_json("/x")
    assert info.value.status == 500
    assert info.value.transient
    assert "gave up after" in str(info.value) and "/x" in str(info.value)
    assert 2 <= server.count("/x") < 200


def test_a_retry_after_longer_than_the_budget_stops_at_once(server: ScriptedServer) -> None:
    server.script("/x", Reply(429, headers={"retry-after": "3600"}), Reply(body={"v": 1}))
    with client_for(server) as client, pytest.raises(UnavailableStatus) as info:
        client.get_json("/x")
    assert info.value.status == 429
    assert server.count("/x") == 1


def test_retry_after_is_waited_for(server: ScriptedServer) -> None:
    server.script("/x", Reply(429, headers={"retry-after": "1"}), Reply(body={"v": 1}))
    started = time.monotonic()
    with client_for(server) as client:
        client.get_json("/x")
    assert time.monotonic() - started >= 1.0  # the backoff alone is at most 0.06 s


def test_connection_refused_is_transient() -> None:
    client = HttpClient(
        "http://127.0.0.1:9", source="test:src", options=HttpOptions(retry_budget_seconds=0.2, backoff_initial=0.01)
    )
    with client, pytest.raises(SourceUnavailable, match="connection failed"):
        client.get_json("/x")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_client_errors_are_permanent_and_not_retried(server: ScriptedServer, status: int) -> None:
    server.script("/x", Reply(status, body={"message": f"nope, {SECRET} is wrong"}))
    with client_for(server) as client, pytest.raises(RejectedStatus) as info:
        client.get_json("/x", hints={404: "no such space"})
    assert info.value.status == status
    assert not info.value.transient
    assert SECRET not in str(info.value) and "[redacted]" in str(info.value)
    assert server.count("/x") == 1
    if status == 401:
        assert "check token_env" in str(info.value)
    if status == 404:
        assert "no such space" in str(info.value)


def test_redirects_are_not_followed(server: ScriptedServer) -> None:
    server.script("/x", Reply(302, headers={"location": "http://elsewhere.example/x"}, body=b""))
    with client_for(server) as client, pytest.raises(RejectedStatus, match=r"elsewhere\.example") as info:
        client.get_json("/x")
    assert info.value.status == 302


def test_a_body_that_is_not_json_is_permanent(server: ScriptedServer) -> None:
    server.script("/x", Reply(body=b"<html>login</html>", content_type="text/html"))
    with client_for(server) as client, pytest.raises(SourceRejected, match="expected JSON, got text/html"):
        client.get_json("/x")
    assert server.count("/x") == 1


def test_gzip_bodies_are_decoded(server: ScriptedServer) -> None:
    server.script("/x", Reply(body=gzip.compress(b'{"v": "zipped"}'), headers={"content-encoding": "gzip"}))
    with client_for(server) as client:
        assert client.get_json("/x") == {"v": "zipped"}


def test_a_decompression_bomb_is_refused(server: ScriptedServer) -> None:
    bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]")  # 50 MB of JSON in ~50 KB
    server.script("/x", Reply(body=bomb, headers={"content-encoding": "gzip"}))
    options = HttpOptions(read_timeout=5.0, max_body_bytes=1024 * 1024)
    with client_for(server, options) as client, pytest.raises(SourceRejected, match="larger than 1048576"):
        client.get_json("/x")


def test_stacked_content_encoding_is_refused(server: ScriptedServer) -> None:
    body = gzip.compress(gzip.compress(b'{"v": 1}'))
    server.script("/x", Reply(body=body, headers={"content-encoding": "gzip, gzip"}))
    with client_for(server) as client, pytest.raises(SourceRejected, match="stacked Content-Encoding"):
        client.get_json("/x")


def test_pacing_spaces_requests(server: ScriptedServer) -> None:
    options = HttpOptions(requests_per_second=20.0)
    started = time.monotonic()
    with client_for(server, options) as client:
        for _ in range(5):
            client.get_json("/x")
    assert time.monotonic() - started >= 4 / 20


def test_post_sends_json_and_the_client_is_pooled(server: ScriptedServer) -> None:
    with client_for(server) as client:
        client.request_json("POST", "/q", json_body={"page_size": 100})
        client.request_json("POST", "/q", json_body={"page_size": 100})
    assert [m for m, _, _ in server.requests] == ["POST", "POST"]
    assert all(h.get("authorization") == f"Bearer {SECRET}" for _, _, h in server.requests)
    assert len(set(server.client_ports)) == 1  # the second request reused the first one's connection


def test_parse_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_bounded_decoder_handles_raw_and_zlib_deflate() -> None:
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        compressor = zlib.compressobj(wbits=wbits)
        data = compressor.compress(b"hello " * 100) + compressor.flush()
        decoder = BoundedDecoder("deflate", 10_000)
        decoder.feed(data)
        assert decoder.finish() == b"hello " * 100
    cut = BoundedDecoder("gzip", 10_000)
    cut.feed(gzip.compress(b"x" * 1000)[:-8])
    with pytest.raises(UndecodableBody):
        cut.finish()
    with pytest.raises(UndecodableBody, match="unsupported"):
        BoundedDecoder("br", 10)
    small = BoundedDecoder(None, 4)
    with pytest.raises(BodyTooLarge):
        small.feed(b"12345")
