"""Issue 17, the HTTP side, against a real `kbsync run` subprocess: bodies capped and read after authentication,
a body-read deadline, no 500 for a lone surrogate, resyncs off the request path, webhook workers that skip a busy
project, replayed webhooks deduplicated, and answers that do not enumerate tenants.

The module's daemon runs one webhook worker (a blocked worker is then visible) and a 2 s body-read deadline.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from kbsync.http import sign
from tests.daemon.conftest import ACME_PORTAL, GLOBEX_PORTAL, DaemonProcess, Stack, wait_for
from tests.servers.chatwoot import FakeChatwoot

MiB = 1024 * 1024
FLOOD = 64 * MiB  # what an attacker offers; the daemon may read at most its cap of it
# What the client may get into the connection before the server stops reading: the cap plus the kernel's socket
# buffers on loopback (a few MiB each way). Far below FLOOD: a server reading the whole flood fails this.
READ_AT_MOST = 24 * MiB


@pytest.fixture(scope="module")
def daemon_options() -> tuple[tuple[str, ...], dict[str, str]]:
    return ("--workers", "1"), {"KBSYNC_SERVER__BODY_TIMEOUT_SECONDS": "2"}


def _raw_post(
    port: int, path: str, headers: dict[str, str], *, total: int, declared: int | None = None, stall: bool = False
) -> tuple[int, int, bytes]:
    """POST `total` bytes of body on a raw socket (chunked, or with a Content-Length of `declared`), sending until
    the server answers; with `stall`, send 10 bytes and then nothing. Returns (status, body bytes that got into the
    connection before the answer, the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    sent = 0

    def pump() -> None:
        nonlocal sent
        size = 64 * 1024
        piece = b"x" * size if declared is not None else f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"
        try:
            if stall:
                sock.sendall(b"x" * 10 if declared is not None else b"a\r\n" + b"x" * 10 + b"\r\n")
                sent = 10
                return
            while sent < total:
                sock.sendall(piece)
                sent += size
            if declared is None:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed the connection

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        pumper.join(timeout=30)
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, sent, answer


def _signed_looking(daemon: DaemonProcess) -> dict[str, str]:
    """Webhook headers that pass every check made before the body is read (the signature cannot be checked
    before the body is there)."""
    return {"X-Chatwoot-Timestamp": str(int(time.time())), "X-Chatwoot-Signature": "sha256=" + "0" * 64}


# -- bodies ------------------------------------------------------------------------------------------------


def test_unsigned_chunked_webhook_is_refused_without_reading_its_body(stack: Stack, daemon: DaemonProcess) -> None:
    """Issue 17 item 3: an unsigned 64 MiB chunked webhook was read whole before its answer. Refused (401) from
    its headers; the daemon stops reading at once."""
    status, sent, answer = _raw_post(daemon.port, "/webhooks/acme", {}, total=FLOOD)
    assert status == 401, answer
    assert sent < READ_AT_MOST, f"{sent / MiB:.0f} MiB of an unsigned webhook were read"
    assert daemon.http.get("/healthz").status_code == 200


def test_signed_looking_chunked_webhook_is_cut_at_the_cap(stack: Stack, daemon: DaemonProcess) -> None:
    """Headers that pass (a fresh timestamp, a signature to check): the body is read up to 1 MiB, then 413."""
    status, sent, answer = _raw_post(daemon.port, "/webhooks/acme", _signed_looking(daemon), total=FLOOD)
    assert status == 413, answer
    assert sent < READ_AT_MOST, f"{sent / MiB:.0f} MiB of a webhook over the 1 MiB cap were read"


def test_query_and_resync_without_a_token_are_refused_before_their_body(stack: Stack, daemon: DaemonProcess) -> None:
    """Issue 17: 100 MB with no token to /v1/query and /v1/resync was read and parsed."""
    for path in ("/v1/query", "/v1/resync"):
        status, sent, answer = _raw_post(daemon.port, path, {}, total=FLOOD)
        assert status == 401, (path, answer)
        assert sent < READ_AT_MOST, f"{path}: {sent / MiB:.0f} MiB read without a token"
        status, sent, answer = _raw_post(
            daemon.port, path, {"Authorization": "Bearer not-a-token"}, total=FLOOD, declared=FLOOD
        )
        assert status == 401, (path, answer)


def test_query_body_over_its_cap_is_413(stack: Stack, daemon: DaemonProcess) -> None:
    """/v1/query takes 64 KiB at most, with a valid token too, declared or chunked."""
    token = {"Authorization": f"Bearer {daemon.secrets.acme_query}"}
    status, sent, answer = _raw_post(daemon.port, "/v1/query", token, total=FLOOD)
    assert status == 413, answer
    assert sent < READ_AT_MOST
    big = json.dumps({"tenant": "acme", "project": "alpha", "query": "x" * 70_000})
    response = daemon.http.post("/v1/query", content=big, headers={**token, "Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert "64 KiB" in response.json()["error"]["message"]


def test_an_invalid_query_body_names_the_offending_field(stack: Stack, daemon: DaemonProcess) -> None:
    """Validated after the token check, in the API's one error shape (kbsync/http_errors.py)."""
    response = daemon.query("help", k=0)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert [f["field"] for f in error["fields"]] == ["body.k"], error
    assert (
        daemon.http.post(
            "/v1/query", content=b"{not json", headers={"Authorization": f"Bearer {daemon.secrets.acme_query}"}
        ).status_code
        == 400
    )


def test_a_body_that_stops_arriving_gets_408_after_the_deadline(stack: Stack, daemon: DaemonProcess) -> None:
    """A sender that declares 1000 bytes and sends 10 held the connection for as long as it liked."""
    token = {"Authorization": f"Bearer {daemon.secrets.acme_query}"}
    status, _, answer = _raw_post(daemon.port, "/v1/query", token, total=1000, declared=1000, stall=True)
    assert status == 408, answer
    status, _, answer = _raw_post(
        daemon.port, "/webhooks/acme", _signed_looking(daemon), total=1000, declared=1000, stall=True
    )
    assert status == 408, answer


# -- item 10: a lone surrogate ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["own", "none", "unknown"])
def test_lone_surrogate_in_a_query_is_never_a_500(token: str, stack: Stack, daemon: DaemonProcess) -> None:
    """Issue 17 item 10: `"\\ud800"` in a query gave a 500, and the console log then printed the bearer token."""
    presented = {"own": "", "none": None, "unknown": "Bearer-less-guess"}[token]
    for body in (
        {"tenant": "acme", "project": "alpha", "query": "\ud800"},
        {"tenant": "acme", "project": "alpha", "query": "ok", "\ud800": 1},
        {"tenant": "acme", "query": "\udfff"},  # a field missing, too: FastAPI's own 422 echoed the input
    ):
        headers = {"Content-Type": "application/json"}
        if presented is not None:
            headers["Authorization"] = f"Bearer {presented or daemon.secrets.acme_query}"
        response = daemon.http.post("/v1/query", content=json.dumps(body), headers=headers)
        expected = 422 if token == "own" else 401
        assert response.status_code == expected, response.text
        if token == "own":
            assert "surrogate" in response.text or "project" in response.text, response.text
    for secret in daemon.secrets.values():
        assert secret not in daemon.log_text()


def test_lone_surrogate_in_a_signed_webhook_is_422(stack: Stack, daemon: DaemonProcess) -> None:
    body = json.dumps(
        {
            "event": "article_updated",
            "account": {"id": 1},
            "portal": {"slug": ACME_PORTAL},
            "article": {"id": stack.acme_ids[0], "title": "\ud800"},
        }
    ).encode()
    response = daemon.webhook("article_updated", body=body)
    assert response.status_code == 422, response.text


# -- not enumerating tenants -----------------------------------------------------------------------------


def test_unknown_tenant_and_bad_signature_get_the_same_answer(stack: Stack, daemon: DaemonProcess) -> None:
    """Issue 17 (low): 404 for an unknown tenant and 401 for a bad signature told which tenants exist."""
    unknown = daemon.webhook("article_updated", stack.acme_ids[0], tenant="initech", secret="guess")
    forged = daemon.webhook("article_updated", stack.acme_ids[0], tenant="acme", secret="guess")
    assert (unknown.status_code, unknown.json()) == (forged.status_code, forged.json())
    assert unknown.status_code == 401
    # Nor does the size of the body: over the cap, declared or chunked, both answer 413 (and nothing past the cap
    # is read for either).
    for declared in (2 * MiB, None):
        answers = []
        for tenant in ("initech", "acme"):
            status, sent, _ = _raw_post(
                daemon.port, f"/webhooks/{tenant}", _signed_looking(daemon), total=2 * MiB, declared=declared
            )
            answers.append(status)
            assert sent < READ_AT_MOST
        assert answers == [413, 413], (declared, answers)


def test_metrics_and_readiness_details_need_the_admin_token(stack: Stack, daemon: DaemonProcess) -> None:
    """/metrics labels name every tenant: admin token (or server.public_metrics). /readyz says only its status."""
    assert daemon.http.get("/metrics").status_code == 401
    assert (
        daemon.http.get("/metrics", headers={"Authorization": f"Bearer {daemon.secrets.acme_query}"}).status_code == 401
    )
    scraped = daemon.http.get("/metrics", headers=daemon.admin_headers())
    assert scraped.status_code == 200 and 'tenant="acme"' in scraped.text
    ready = daemon.http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert "acme" not in ready.text and "globex" not in ready.text


# -- replayed webhooks -----------------------------------------------------------------------------------


def _post_signed(daemon: DaemonProcess, body: bytes, ts: str, delivery: str | None) -> httpx.Response:
    headers = {
        "Content-Type": "application/json",
        "X-Chatwoot-Timestamp": ts,
        "X-Chatwoot-Signature": sign(daemon.secrets.acme_webhook, ts, body),
    }
    if delivery is not None:
        headers["X-Chatwoot-Delivery"] = delivery
    return daemon.http.post("/webhooks/acme", content=body, headers=headers)


def test_captured_webhook_replayed_under_another_delivery_id_is_a_duplicate(
    stack: Stack, daemon: DaemonProcess, fake: FakeChatwoot
) -> None:
    """Issue 17 (low): the dedupe key ignored the signature, so a captured webhook replayed under a new or missing
    X-Chatwoot-Delivery within the 300 s window was queued again; now it adds no item. The module's one worker is held
    in a slow globex refresh meanwhile, so the first acme item is still waiting (tests/unit/test_queue_replay.py: what
    happens once it is claimed)."""
    body = json.dumps(
        {
            "event": "article_updated",
            "account": {"id": 1},
            "portal": {"slug": ACME_PORTAL},
            "article": {"id": stack.acme_ids[2]},
        }
    ).encode()
    fake.delay(8, path_contains=GLOBEX_PORTAL, times=None)
    try:
        assert _globex_webhook(daemon, "article_updated", stack.globex_ids[0]).status_code == 202
        wait_for(
            lambda: any(r.status is None and GLOBEX_PORTAL in r.path for r in fake.requests),
            20,
            "the worker to be held in the globex refresh",
        )
        ts = str(int(time.time()))
        first = _post_signed(daemon, body, ts, str(uuid.uuid4()))
        assert first.status_code == 202, first.text
        pending = daemon.status()["queue"]["pending"]
        for delivery in (str(uuid.uuid4()), None, str(uuid.uuid4())):
            replay = _post_signed(daemon, body, ts, delivery)  # answered as accepted: it is, by the first item
            assert replay.status_code == 202, replay.text
        assert daemon.status()["queue"]["pending"] == pending, "a replayed webhook was queued again"
        # A new signing (the next notice of the same article) is not a replay.
        fresh = _post_signed(daemon, body, str(int(ts) + 1), None)
        assert fresh.status_code == 202, fresh.text
        assert daemon.status()["queue"]["pending"] == pending + 1
    finally:
        fake.reset_faults()
    wait_for(daemon.queue_drained, 60, "the webhooks to be applied")


# -- resyncs off the request path, workers that skip a busy project ---------------------------------------


def _slow_acme(fake: FakeChatwoot, seconds: float) -> None:
    """Every request for acme's portal waits `seconds` (under the client's 20 s read timeout): a source that
    trickles, so an acme run holds acme's project lock that long per request."""
    fake.delay(seconds, path_contains=ACME_PORTAL, times=None)


def _globex_webhook(daemon: DaemonProcess, event: str, article_id: int) -> httpx.Response:
    """A signed globex webhook, answered within Chatwoot's 5 s or an httpx.TimeoutException."""
    body = json.dumps(
        {"event": event, "account": {"id": 2}, "portal": {"slug": GLOBEX_PORTAL}, "article": {"id": article_id}}
    ).encode()
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Chatwoot-Timestamp": ts,
        "X-Chatwoot-Signature": sign(daemon.secrets.globex_webhook, ts, body),
        "X-Chatwoot-Delivery": str(uuid.uuid4()),
    }
    return daemon.http.post("/webhooks/globex", content=body, headers=headers, timeout=5)


def _acme_in_flight(fake: FakeChatwoot) -> bool:
    return any(r.status is None and ACME_PORTAL in r.path for r in fake.requests)


def test_eight_resyncs_do_not_starve_a_webhook_or_readiness(
    stack: Stack, daemon: DaemonProcess, fake: FakeChatwoot
) -> None:
    """Issue 17 item 7: eight concurrent /v1/resync calls filled the thread pool webhook intake shares; a signed
    webhook and /readyz timed out (Chatwoot waits 5 s and never retries). /v1/resync answers 202 and the
    scheduler runs it; webhooks and /readyz have threads of their own."""
    _slow_acme(fake, 8)
    admin = daemon.admin_headers()
    with ThreadPoolExecutor(8) as pool:
        try:
            resyncs = [
                pool.submit(daemon.http.post, "/v1/resync", json={"tenant": "acme"}, headers=admin, timeout=120)
                for _ in range(8)
            ]
            wait_for(lambda: _acme_in_flight(fake), 20, "the first resync to reach acme's portal")
            webhook = _globex_webhook(daemon, "article_updated", stack.globex_ids[0])
            ready = daemon.http.get("/readyz", timeout=5)
        except httpx.TimeoutException as exc:
            pytest.fail(f"a webhook or /readyz got no answer within 5 s behind eight resyncs: {exc!r}")
        finally:
            fake.reset_faults()
        assert webhook.status_code == 202, webhook.text
        assert ready.status_code == 200, ready.text
        answers = [r.result() for r in resyncs]
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
    assert answers[0].json() == {"status": "accepted", "projects": [{"tenant": "acme", "project": "alpha"}]}
    wait_for(daemon.queue_drained, 120, "the queue to drain after the resyncs")


def test_worker_skips_a_project_busy_in_a_slow_run_and_applies_another_tenant(
    stack: Stack, daemon: DaemonProcess, fake: FakeChatwoot
) -> None:
    """Issue 17 item 6: a project lock held by a run on a trickling source held the webhook worker, and another
    tenant's webhook waited as long. The worker now gives the busy project's item back and takes the next."""
    marker = f"globex {uuid.uuid4().hex[:8]} quokka zephyr lantern"
    article = fake.add_article(
        GLOBEX_PORTAL,
        title=f"Article {marker.split()[1]}",
        status="published",
        content=f"{marker}.\n\nThis paragraph explains {marker} in plain words.",
    )
    _slow_acme(fake, 12)
    started = time.time()
    resync = threading.Thread(
        target=lambda: daemon.http.post(
            "/v1/resync", json={"tenant": "acme"}, headers=daemon.admin_headers(), timeout=120
        ),
        daemon=True,
    )
    try:
        resync.start()
        wait_for(lambda: _acme_in_flight(fake), 20, "the acme resync to reach its slow portal")
        assert daemon.webhook("article_updated", stack.acme_ids[0]).status_code == 202  # claimed first: acme busy
        assert _globex_webhook(daemon, "article_created", article).status_code == 202
        daemon.wait_queryable(marker, timeout=10, tenant="globex", project="beta")
        acme_run = daemon.project_status("acme", "alpha")["last_runs"]["reconcile"]
        assert acme_run["started_at"] >= started - 1 and acme_run["outcome"] is None, acme_run
    finally:
        fake.reset_faults()
    resync.join(timeout=120)
    wait_for(daemon.queue_drained, 120, "the acme webhook to be applied after the slow run")


def test_a_client_that_hangs_up_mid_body_is_not_an_error(stack: Stack, daemon: DaemonProcess) -> None:
    """A sender that goes away after part of its body is a closed connection, not a crash logged as one."""
    before = len(daemon.log_text())
    token = {"Authorization": f"Bearer {daemon.secrets.acme_query}"}
    for path, headers in (("/v1/query", token), ("/webhooks/acme", _signed_looking(daemon))):
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
        sock.sendall((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + b"{" * 10)
        sock.close()
    time.sleep(0.5)  # the server notices the hang-ups
    assert daemon.http.get("/healthz").status_code == 200
    logged = daemon.log_text()[before:]
    assert '"level": "error"' not in logged and "Traceback" not in logged, logged
