"""Replicas sharing PostgreSQL state (README "Scaling out", issue 8 "Prove it"): three `kbsync run` processes, one
Chatwoot server, two tenants on two Chroma servers.

Any replica accepts a webhook and commits it before the 202; per-project leases serialize a project's writes across
the cluster (invariant 7, checked from the run records, not assumed); a replica killed with `kill -9` loses its
leases after `lease_seconds` and another finishes its project and its accepted webhooks (invariant 9); a Chroma
server or PostgreSQL that goes away loses nothing and crashes nothing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any

import httpx

from tests.cluster.conftest import (
    ACME_PORTAL,
    GLOBEX_PORTAL,
    LEASE_SECONDS,
    PROJECTS,
    REPLICAS,
    Cluster,
    Replica,
    Sent,
    metric_value,
    wait_for,
)

WEBHOOKS = 210  # 15 edits of each of the 14 articles, round-robin over the replicas
CHATWOOT_WAITS = 5.0  # seconds Chatwoot waits for a webhook answer (and it never retries)


def webhooks_total(replicas: list[Replica], outcome: str) -> dict[str, float]:
    return {r.name: metric_value(r.metrics(), "kbsync_webhooks_total", outcome=outcome) for r in replicas}


def delta(after: dict[str, float], before: dict[str, float]) -> float:
    return sum(after[name] - before[name] for name in after)


def edit_and_send(cluster: Cluster, articles: list[Any], *, offset: int = 0) -> list[Sent]:
    """A new revision of each article saved in Chatwoot, then its webhook, round-robin over the replicas."""
    sent = []
    for n, article in enumerate(articles):
        cluster.edit(article)
        sent.append(cluster.send(article, cluster.replicas[(n + offset) % REPLICAS]))
    return sent


def in_background(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `call` in a thread; its response (or the error that ended it) lands in the returned dict."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["response"] = call()
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def wait_run_started(cluster: Cluster, replica: Replica, tenant: str, project: str, since: float) -> None:
    """Until `replica` holds the project's lease and has recorded a run that has not finished."""

    def started() -> bool:
        running = [
            r
            for r in cluster.runs(since=since)
            if (r.tenant, r.project, r.owner) == (tenant, project, replica.owner) and r.finished_at is None
        ]
        return bool(running) and cluster.lease_owner(tenant, project) == replica.owner

    wait_for(started, 30, f"{replica.name} to take the lease of {tenant}/{project} and start its run")


def assert_all_applied(cluster: Cluster, sent: list[Sent], what: str) -> None:
    """Every webhook answered 202 is stored exactly once and done."""
    accepted = [s.delivery for s in sent if s.status == 202]
    rows = cluster.sql("SELECT delivery_id, status FROM queue_items WHERE delivery_id = ANY(:ids)", ids=accepted)
    stored = Counter(row.delivery_id for row in rows)
    missing = set(accepted) - set(stored)
    assert not missing, f"{what}: {len(missing)} webhooks answered 202 were never stored"
    assert max(stored.values(), default=1) == 1, f"{what}: a delivery was stored twice"
    not_done = Counter(row.status for row in rows if row.status != "done")
    assert not not_done, f"{what}: accepted webhooks not applied: {dict(not_done)}"


def resyncs_meanwhile(cluster: Cluster, stop: threading.Event) -> tuple[threading.Thread, list[tuple[str, str]]]:
    """Admin resyncs of both projects on each replica in turn until `stop`: runs that are not queue items, so the
    project leases (not only the queue claims) must keep the replicas apart. Returns (replica, outcome) pairs."""
    outcomes: list[tuple[str, str]] = []

    def run() -> None:
        for n in itertools.count():
            if stop.wait(0.3):
                return
            replica = cluster.replicas[n % REPLICAS]
            tenant, project = PROJECTS[n % len(PROJECTS)]
            response = replica.resync(tenant, project, rebuild=False)
            outcome = response.json()["reports"][0]["outcome"] if response.status_code == 200 else response.text
            outcomes.append((replica.name, outcome))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcomes


def test_replicas_started_together_share_the_start_up_reconciles(cluster: Cluster) -> None:
    """Design §9: scheduled work is spread by the leases. Three replicas started together, two projects: each
    replica takes at most its fair share (ceil(2 / 3) = 1), so the projects' first reconciles run on two different
    replicas, at once. If broken: the first replica up takes every project its run pool holds (as it did before
    fair shares) and the others only find them busy."""
    first: dict[tuple[str, str], Any] = {}
    for run in cluster.runs():  # the module's own database: its first runs are the start-up ones
        if run.kind == "reconcile":
            first.setdefault((run.tenant, run.project), run)
    assert set(first) == set(PROJECTS), first
    owners = {key: run.owner for key, run in first.items()}
    assert len(set(owners.values())) == len(PROJECTS), (
        f"one replica took every project: {owners}; runs: "
        + "; ".join(f"{r.kind} {r.tenant}/{r.project} {r.owner} {r.started_at:.2f}" for r in cluster.runs())
        + f"; leases: {cluster.sql('SELECT name, expires_at FROM leases')}"
    )


def test_webhooks_round_robin_over_three_replicas_are_each_applied_once_in_their_tenants_server(
    healthy: Cluster,
) -> None:
    """Design §9 and invariant 7. A few hundred signed webhooks for edits over two tenants, sent round-robin (and
    some delivered twice, to another replica) while admin resyncs hit every replica, end with every article's last
    revision, and only it, queryable through every replica and held by its own tenant's Chroma server; `/metrics`
    of the replicas together count each webhook once; the run records show the work spread over replicas and no
    project worked by two at once. If broken: an article keeps an older revision or stale chunks, a collection
    lands on the other tenant's server, a 202 is lost or a duplicate applied, or two runs of a project overlap."""
    cluster = healthy
    replicas = cluster.replicas
    started = time.time()
    queued_before = webhooks_total(replicas, "queued")
    duplicate_before = webhooks_total(replicas, "duplicate")
    stop = threading.Event()
    resyncer, resyncs = resyncs_meanwhile(cluster, stop)

    sent: list[Sent] = []
    duplicates: list[Sent] = []
    try:
        for n in range(WEBHOOKS):
            article = cluster.articles[n % len(cluster.articles)]
            cluster.edit(article)
            sent.append(cluster.send(article, replicas[n % REPLICAS]))
            if n % 10 == 9:  # the same delivery again, to another replica: de-duplicated cluster-wide
                duplicates.append(
                    cluster.send(article, replicas[(n + 1) % REPLICAS], delivery=sent[-1].delivery, body=sent[-1].body)
                )
    finally:
        stop.set()
        resyncer.join(60)

    assert Counter(s.status for s in sent) == {202: WEBHOOKS}, "every signed webhook is accepted"
    assert Counter(s.status for s in duplicates) == {200: len(duplicates)}, "a repeated delivery is a duplicate"
    slowest = max(s.seconds for s in sent + duplicates)
    assert slowest < CHATWOOT_WAITS, f"a webhook took {slowest:.2f} s to answer; Chatwoot gives up after 5 s"
    assert resyncs and {outcome for _, outcome in resyncs} <= {"ok", "busy"}, resyncs

    cluster.wait_converged(180, "after the round-robin webhooks")
    assert_all_applied(cluster, sent, "round-robin webhooks")

    queued = delta(webhooks_total(replicas, "queued"), queued_before)
    duplicated = delta(webhooks_total(replicas, "duplicate"), duplicate_before)
    assert queued == WEBHOOKS, f"/metrics of the replicas count {queued:.0f} queued webhooks, {WEBHOOKS} were accepted"
    assert duplicated == len(duplicates), f"/metrics count {duplicated:.0f} duplicates, {len(duplicates)} were sent"

    # On a loaded machine the webhook work can all land on one replica; one idle resync per replica makes sure
    # the run records below hold runs of every replica, so the overlap check compares owners for real.
    for n, replica in enumerate(replicas):
        tenant, project = PROJECTS[n % len(PROJECTS)]
        response = replica.resync(tenant, project, rebuild=False)
        assert response.status_code == 200 and response.json()["reports"][0]["outcome"] == "ok", response.text
    runs = cluster.assert_runs_serialized(since=cluster.created_at)
    owners = Counter(r.owner for r in runs if r.started_at >= started)
    assert len(owners) == REPLICAS, f"runs of {len(owners)} replicas ({owners}, resyncs {Counter(resyncs)})"


def test_kill_9_of_the_lease_holder_mid_sync_hands_its_project_and_webhooks_to_another_replica(
    healthy: Cluster,
) -> None:
    """Design §9, invariant 9 across replicas. A replica rebuilding acme/alpha (holding its lease, with webhooks
    of its own and of the others accepted meanwhile) is killed with SIGKILL: its lease expires after
    lease_seconds, not before, and another replica finishes the project and applies every accepted webhook. If
    broken: the project stays locked by a dead replica (a lease or a queue claim that outlives it), a webhook the
    dead replica accepted is lost, or another replica took over before the lease expired."""
    cluster = healthy
    holder = cluster.replicas[0]
    started = time.time()
    cluster.fake.delay(4.0, path_contains=f"{ACME_PORTAL}/articles")  # holds the rebuild mid-sync
    thread, result = in_background(lambda: holder.resync("acme", "alpha", rebuild=True))
    wait_run_started(cluster, holder, "acme", "alpha", started)

    sent = edit_and_send(cluster, cluster.articles * 2)  # to every replica, the lease holder included
    assert Counter(s.status for s in sent) == {202: len(sent)}
    (lease,) = cluster.sql("SELECT owner, expires_at FROM leases WHERE name = 'project:acme/alpha'")
    assert lease.owner == holder.owner, "the kill must land while the holder works"
    owner = holder.owner
    killed_at = holder.kill()
    cluster.killed[owner] = killed_at
    thread.join(30)
    assert "response" not in result, f"the rebuild answered before the kill: {result['response'].text[:300]}"

    cluster.wait_converged(LEASE_SECONDS + 60, "after kill -9 of the lease holder")
    assert_all_applied(cluster, sent, "webhooks accepted around the kill")

    after = [r for r in cluster.runs(since=killed_at) if (r.tenant, r.project) == ("acme", "alpha")]
    assert after, "no replica worked acme/alpha after the kill"
    takeover = after[0]
    assert takeover.owner != owner
    assert takeover.started_at >= lease.expires_at, (
        f"another replica started acme/alpha {takeover.started_at - killed_at:.1f} s after the kill, "
        f"{lease.expires_at - takeover.started_at:.1f} s before the dead replica's lease expired"
    )
    waited = takeover.started_at - killed_at
    assert waited < LEASE_SECONDS + 10, f"acme/alpha waited {waited:.0f} s for a dead replica ({LEASE_SECONDS} s lease)"
    assert all(r.outcome == "ok" for r in after), [(r.kind, r.owner, r.outcome) for r in after]
    cut = [r for r in cluster.runs(since=started) if r.owner == owner and r.outcome == "abandoned"]
    # The killed replica may also have been applying another project's webhook (a refresh) at that moment.
    (rebuild,) = [r for r in cut if (r.tenant, r.project, r.kind) == ("acme", "alpha", "reconcile")]
    others = [(r.tenant, r.project, r.kind) for r in cut if r is not rebuild]
    assert all(kind == "refresh" for _, _, kind in others), others
    assert rebuild.finished_at >= lease.expires_at, "closed by the replica that took the project over"
    cluster.assert_runs_serialized(since=cluster.created_at)


def test_a_chroma_server_restarted_mid_sync_loses_nothing(healthy: Cluster) -> None:
    """Design §9: tenant globex's Chroma server stops while a replica rebuilds globex/beta and webhooks for it keep
    coming; the run fails (it does not hang or claim success), readiness names the server, the other tenant keeps
    answering, and once the server is back the webhooks' retries converge: every revision queryable. If broken:
    an edit accepted while the server was away is never applied, or the index loses chunks."""
    cluster = healthy
    runner = cluster.replicas[1]
    server_b = cluster.chroma_b
    started = time.time()
    cluster.fake.delay(3.0, path_contains=f"{GLOBEX_PORTAL}/articles")  # the rebuild has read the index, not written
    thread, result = in_background(lambda: runner.resync("globex", "beta", rebuild=True))
    wait_run_started(cluster, runner, "globex", "beta", started)
    server_b.stop()

    sent = edit_and_send(cluster, cluster.tenant_articles("globex") * 2)
    assert Counter(s.status for s in sent) == {202: len(sent)}, "webhooks are stored whatever Chroma does"
    ready = runner.http.get("/readyz", headers={"Authorization": f"Bearer {runner.secrets.admin}"})
    assert ready.status_code == 503 and str(server_b.port) in ready.text, ready.text
    anonymous = runner.http.get("/readyz")
    assert anonymous.status_code == 503 and str(server_b.port) not in anonymous.text, "only the admin sees which store"
    assert runner.query("acme", "alpha", "help").status_code == 200, "tenant acme's server is still up"

    thread.join(90)
    assert "response" in result, f"the rebuild got no answer: {result.get('error')!r}"
    (report,) = result["response"].json()["reports"]
    assert report["outcome"] == "failed" and report["errors"], report
    wait_for(
        lambda: any(row.attempts >= 1 for row in cluster.pending_items()),
        30,
        "a webhook refresh to fail against the stopped server",
    )

    server_b.start()
    cluster.wait_converged(120, "after the Chroma server came back")
    assert_all_applied(cluster, sent, "webhooks accepted while the Chroma server was away")
    cluster.assert_runs_serialized(since=cluster.created_at)


def test_postgres_down_answers_503_keeps_every_replica_running_and_recovers(healthy: Cluster) -> None:
    """Design §9: PostgreSQL stops while a refresh is in flight. Webhooks answer 503, never a 202 that was not
    stored; /readyz answers 503; no replica exits, for longer than a lease. When PostgreSQL is back every replica
    is ready again, new webhooks are accepted, and every webhook accepted before, during (none) or after the outage
    is applied. If broken: a replica crashes (a worker dies on a state error), a 202 is lost, or an item claimed
    when the database went away stays stuck."""
    cluster = healthy
    replicas = cluster.replicas
    unavailable_before = webhooks_total(replicas, "unavailable")
    cluster.fake.delay(3.0, path_contains=f"{ACME_PORTAL}/articles")  # a refresh in flight when the database goes
    before = edit_and_send(cluster, cluster.articles)
    assert Counter(s.status for s in before) == {202: len(before)}
    wait_for(cluster.held_leases, 15, "a run in flight")

    cluster.stop_postgres()
    refused: list[Sent] = []
    outage_ends = time.monotonic() + LEASE_SECONDS + 4  # past a lease, a claim retry and the in-flight refresh
    n = 0
    while time.monotonic() < outage_ends:
        article = cluster.articles[n % len(cluster.articles)]
        cluster.edit(article)
        refused.append(cluster.send(article, replicas[n % REPLICAS]))
        n += 1
        time.sleep(0.2)
    assert Counter(s.status for s in refused) == {503: len(refused)}, "only 503 while the database is away"
    slowest = max(s.seconds for s in refused)
    assert slowest < CHATWOOT_WAITS, f"a webhook took {slowest:.2f} s to be refused"
    for replica in replicas:
        assert replica.http.get("/readyz").status_code == 503, f"{replica.name} says ready without its database"
    scraped = replicas[0].http.get("/metrics", headers={"Authorization": f"Bearer {replicas[0].secrets.admin}"})
    assert scraped.status_code == 200, f"/metrics fails while the database is away: {scraped.text[:300]}"
    dead = [f"{r.name} exited {r.proc.returncode}:\n{r.log_tail(15)}" for r in replicas if not r.alive]
    assert not dead, "a replica crashed while PostgreSQL was away:\n" + "\n".join(dead)

    back_at = cluster.start_postgres()
    for replica in replicas:
        replica.wait_ready(60)
    after = edit_and_send(cluster, cluster.articles, offset=1)
    assert Counter(s.status for s in after) == {202: len(after)}, "webhooks are accepted again"

    cluster.wait_converged(120, "after PostgreSQL came back")
    assert_all_applied(cluster, before + after, "webhooks accepted around the outage")
    assert not cluster.delivery_status([s.delivery for s in refused]), "a refused webhook was stored"
    unavailable = delta(webhooks_total(replicas, "unavailable"), unavailable_before)
    assert unavailable == len(refused), f"/metrics count {unavailable:.0f} unavailable, {len(refused)} were refused"
    assert all(r.alive for r in replicas)
    # Runs cut by the outage could not record their end; every run since is serialized.
    cluster.assert_runs_serialized(since=back_at)
