"""The durable webhook queue: enqueue (committed before the 202), claim, done, release.

Claims expire (`claimed_until`): a worker that dies with an item claimed, `kill -9` included, only delays it, and
`claim()` takes expired items back, so there is no stalled-job sweeper. Items of one project are claimed one at a
time (per-project serialization). `X-Chatwoot-Delivery` ids and the hashes of what was signed are unique keys: a
repeated delivery is an IntegrityError mapped to "duplicate", never a read-then-insert race.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kbsync.errors import StateError
from kbsync.state import State, db_errors, delete_in_batches, metadata

__all__ = ["Enqueued", "Queue", "QueueItem"]

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("delivery_id", sa.String(200), primary_key=True),
    sa.Column("received_at", sa.Float, nullable=False),
)

items = sa.Table(
    "queue_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("source", sa.String(512), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the hint (article id, updated_at): JSON
    sa.Column("delivery_id", sa.String(200)),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),  # pending | done | dead
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("not_before", sa.Float, nullable=False, default=0.0),
    sa.Column("owner", sa.String(128)),
    sa.Column("claimed_until", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Index("queue_pending", "status", "not_before"),
    sa.Index("queue_project", "tenant", "project", "status"),
)


@dataclass(frozen=True, slots=True)
class QueueItem:
    id: int
    tenant: str
    project: str
    source: str
    event: str
    payload: dict[str, Any]
    delivery_id: str | None
    received_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Outcome of `enqueue`: the new item's id (the first one's, `item_ids` all of them), or `duplicate=True` for a
    delivery id seen before; `covered=True`: stored as done, a signed notice whose first delivery still waits."""

    item_id: int | None
    duplicate: bool
    item_ids: tuple[int, ...] = ()
    covered: bool = False


def _new_item(
    tenant: str, project: str, source: str, event: str, payload: dict[str, Any], delivery_id: str | None, now: float
) -> dict[str, Any]:
    """The columns of a freshly received, pending item."""
    return {
        "delivery_id": delivery_id,
        "tenant": tenant,
        "project": project,
        "source": source,
        "event": event,
        "payload": json.dumps(payload),
        "received_at": now,
        "status": "pending",
        "attempts": 0,
        "not_before": 0.0,
    }


def _waiting_item(tx: sa.Connection, tenant: str, fingerprint: str, now: float) -> int | None:
    """The item of this signed notice's latest delivery while it is still queued and unclaimed (it covers this
    one); otherwise None, and `now` is recorded as the notice's latest delivery (its items carry that
    `received_at`)."""
    key = (deliveries.c.tenant == tenant) & (deliveries.c.delivery_id == fingerprint)
    seen = tx.execute(sa.select(deliveries.c.received_at).where(key)).scalar()
    if seen is None:
        tx.execute(sa.insert(deliveries).values(tenant=tenant, delivery_id=fingerprint, received_at=now))
        return None
    waiting = sa.select(items.c.id).where(
        items.c.tenant == tenant,
        items.c.received_at == seen,
        items.c.status == "pending",
        sa.or_(items.c.claimed_until.is_(None), items.c.claimed_until <= now),
    )
    item = tx.execute(waiting.order_by(items.c.id).limit(1)).scalar()
    if item is not None:
        return int(item)
    tx.execute(sa.update(deliveries).where(key).values(received_at=now))
    return None


def _item(row: sa.Row[Any]) -> QueueItem:
    return QueueItem(
        id=row.id,
        tenant=row.tenant,
        project=row.project,
        source=row.source,
        event=row.event,
        payload=json.loads(row.payload),
        delivery_id=row.delivery_id,
        received_at=row.received_at,
        attempts=row.attempts,
    )


class Queue:
    """Webhook work items in the state database."""

    def __init__(self, state: State, *, max_attempts: int = 8) -> None:
        self.db = state.engine
        self.max_attempts = max_attempts
        with db_errors("create the queue tables"):
            metadata.create_all(self.db, tables=[deliveries, items])

    def enqueue(
        self,
        tenant: str,
        project: str | Sequence[str],
        source: str,
        event: str,
        payload: dict[str, Any],
        delivery_id: str | None,
        *,
        fingerprint: str | None = None,
    ) -> Enqueued:
        """Store one event durably (committed when this returns); a repeated delivery id is a duplicate. A repeated
        `fingerprint` (the hash of what was signed: a captured webhook replayed under another or no delivery id)
        is stored `covered`, done without work of its own, while the item of its first delivery still waits to be
        claimed (that item's refresh reads the source later). Once that item is being applied, the same notice
        queues again: its refresh may have read the source before the change this one announces (a minimal body, an
        id only, is the same for two edits a second apart). Replays thus add at most one waiting item. Several
        projects (a portal that more than one project reads) get one item each, in one transaction."""
        projects = [project] if isinstance(project, str) else list(project)
        now = time.time()
        try:
            with self.db.begin() as tx:
                if delivery_id:
                    tx.execute(sa.insert(deliveries).values(tenant=tenant, delivery_id=delivery_id, received_at=now))
                cover = _waiting_item(tx, tenant, fingerprint, now) if fingerprint else None
                ids = []
                for name in projects:
                    row = _new_item(tenant, name, source, event, payload, delivery_id, now)
                    if cover is not None:  # stored (a 202 is a stored webhook), with nothing left to do of its own
                        row.update(status="done", owner=f"covered by item {cover}")
                    inserted = tx.execute(sa.insert(items).values(**row)).inserted_primary_key
                    ids.append(int(inserted[0]))  # type: ignore[index]
                return Enqueued(ids[0] if ids else None, False, tuple(ids), covered=cover is not None)
        except IntegrityError:
            return Enqueued(None, True)
        except SQLAlchemyError as exc:
            raise StateError(f"cannot store the webhook: {exc}") from exc

    def claim(self, owner: str, lease_seconds: float) -> QueueItem | None:
        """One due item whose project has no live claim; an expired claim counts as free."""
        now = time.time()
        candidate, other = items.alias("candidate"), items.alias("other")
        busy = (
            sa.select(other.c.id)
            .where(
                other.c.tenant == candidate.c.tenant,
                other.c.project == candidate.c.project,
                other.c.status == "pending",
                other.c.claimed_until > now,
            )
            .exists()
        )
        query = (
            sa.select(candidate)
            .where(
                candidate.c.status == "pending",
                candidate.c.not_before <= now,
                sa.or_(candidate.c.claimed_until.is_(None), candidate.c.claimed_until <= now),
                ~busy,
            )
            .order_by(candidate.c.id)
            .limit(1)
            # PostgreSQL: replicas claiming at once skip each other's rows instead of waiting (SQLite has no such
            # clause and needs none: its writers are serialized).
            .with_for_update(skip_locked=True, of=candidate)
        )
        with db_errors("claim a queue item"):
            with self.db.begin() as tx:
                row = tx.execute(query).first()
                if row is None:
                    return None
                claimed = tx.execute(
                    sa.update(items)
                    .where(
                        items.c.id == row.id,
                        sa.or_(items.c.claimed_until.is_(None), items.c.claimed_until <= now),
                    )
                    .values(owner=owner, claimed_until=now + lease_seconds)
                ).rowcount
                return _item(row) if claimed else None

    def release_claims(self) -> int:
        """Free every claim on a pending item; returns how many. Only for a process that alone works this queue
        (the daemon on its SQLite state, holding the store's exclusive lock): any claim it finds at start was left
        by a process that died (`kill -9`), and would otherwise hold the item and, through per-project
        serialization, every later item of its project until the claim expired."""
        with db_errors("release queue claims"):
            with self.db.begin() as tx:
                return int(
                    tx.execute(
                        sa.update(items)
                        .where(items.c.status == "pending", items.c.claimed_until.is_not(None))
                        .values(owner=None, claimed_until=None)
                    ).rowcount
                )

    def renew(self, item: QueueItem, owner: str, lease_seconds: float) -> None:
        """Extend a live claim while its work runs."""
        self._update(item.id, owner, claimed_until=time.time() + lease_seconds)

    def done(
        self,
        item: QueueItem,
        owner: str,
        *,
        covered_until: float | None = None,
        cover_events: frozenset[str] | None = None,
    ) -> int:
        """Mark an item applied. With `covered_until`, every pending, unclaimed item of the same source received
        before that time (and, with `cover_events`, of those events) is applied too: the refresh read the source
        after they arrived. Returns the number of items closed."""
        with db_errors("finish a queue item"):
            with self.db.begin() as tx:
                closed = tx.execute(
                    sa.update(items)
                    .where(items.c.id == item.id, items.c.owner == owner)
                    .values(status="done", claimed_until=None)
                ).rowcount
                if covered_until is not None:
                    covered = sa.true() if cover_events is None else items.c.event.in_(sorted(cover_events))
                    closed += tx.execute(
                        sa.update(items)
                        .where(
                            items.c.tenant == item.tenant,
                            items.c.project == item.project,
                            items.c.source == item.source,
                            covered,
                            items.c.status == "pending",
                            items.c.received_at <= covered_until,
                            sa.or_(items.c.claimed_until.is_(None), items.c.claimed_until <= time.time()),
                        )
                        .values(status="done", owner=owner, claimed_until=None)
                    ).rowcount
                return closed

    def release(
        self, item: QueueItem, owner: str, *, error: str, retry: bool, delay_seconds: float, count: bool = True
    ) -> str:
        """Give an item back: retried later (bounded by `max_attempts` failures), or dead. `count=False` for an
        item that was not tried (its project was busy elsewhere). Returns the new status."""
        attempts = item.attempts + 1 if count else item.attempts
        status = "pending" if retry and attempts < self.max_attempts else "dead"
        self._update(
            item.id,
            owner,
            status=status,
            attempts=attempts,
            not_before=time.time() + delay_seconds,
            claimed_until=None,
            last_error=error[:2000],
        )
        return status

    def _update(self, item_id: int, owner: str, **values: Any) -> None:
        with db_errors("update a queue item"):
            with self.db.begin() as tx:
                tx.execute(sa.update(items).where(items.c.id == item_id, items.c.owner == owner).values(**values))

    def depth(self, tenant: str | None = None, project: str | None = None) -> dict[str, int]:
        """Items per status (pending, dead), optionally for one project."""
        query = sa.select(items.c.status, sa.func.count()).where(items.c.status != "done").group_by(items.c.status)
        if tenant is not None:
            query = query.where(items.c.tenant == tenant)
        if project is not None:
            query = query.where(items.c.project == project)
        with db_errors("read the queue"):
            with self.db.connect() as conn:
                counts = {status: int(n) for status, n in conn.execute(query)}
        return {"pending": counts.get("pending", 0), "dead": counts.get("dead", 0)}

    def prune(self, *, done_before: float, dead_before: float, deliveries_before: float, batch: int) -> int:
        """Delete applied items received before `done_before`, dead ones before `dead_before` and delivery ids
        before `deliveries_before`, `batch` rows per statement; pending items always stay. Returns rows deleted."""
        finished = sa.or_(
            sa.and_(items.c.status == "done", items.c.received_at < done_before),
            sa.and_(items.c.status == "dead", items.c.received_at < dead_before),
        )
        deleted = delete_in_batches(self.db, items, [items.c.id], [finished], batch)
        key = [deliveries.c.tenant, deliveries.c.delivery_id]
        old = [deliveries.c.received_at < deliveries_before]
        return deleted + delete_in_batches(self.db, deliveries, key, old, batch)

    def dead(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest dead items (for status)."""
        query = sa.select(items).where(items.c.status == "dead").order_by(items.c.id.desc()).limit(limit)
        with db_errors("read the dead queue items"), self.db.connect() as conn:
            return [
                {
                    "id": r.id,
                    "tenant": r.tenant,
                    "project": r.project,
                    "event": r.event,
                    "attempts": r.attempts,
                    "received_at": r.received_at,
                    "error": r.last_error,
                }
                for r in conn.execute(query)
            ]
