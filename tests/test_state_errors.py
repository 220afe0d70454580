"""Database failures reach callers as kbsync's StateError, never as SQLAlchemy's own types (issue 14, part 2):
the daemon's loops catch KbsyncError, so an escaped OperationalError from the page cache or `Queue.dead` crashed
a run or a status call instead of being reported. Provoked on a real SQLite database whose tables were dropped
under a running State (as an operator's botched restore or a full disk would)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from kbsync.errors import StateError
from kbsync.queue import Queue, QueueItem
from kbsync.sources.web import PageValidators
from kbsync.state import PageCacheTable, State, Watermark, metadata


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[tuple[State, Queue, PageCacheTable]]:
    """A state, queue and page cache whose tables have all been dropped after they were opened."""
    state = State.open_sqlite(tmp_path)
    queue = Queue(state)
    cache = PageCacheTable(state, "acme", "alpha", "web:https://docs.example/")
    with state.engine.begin() as tx:
        for table in metadata.sorted_tables:
            tx.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))
    yield state, queue, cache
    state.close()


ITEM = QueueItem(1, "acme", "alpha", "chatwoot:p", "article_updated", {}, None, 0.0, 0)
VALIDATORS = PageValidators(doc_id="web:1", etag='"x"')

CALLS: dict[str, Callable[[State, Queue, PageCacheTable], Any]] = {
    "page_cache.get": lambda s, q, c: c.get("https://docs.example/a"),
    "page_cache.put": lambda s, q, c: c.put("https://docs.example/a", VALIDATORS.doc_id, VALIDATORS.to_json()),
    "page_cache.delete": lambda s, q, c: c.delete("https://docs.example/a"),
    "page_cache.url_for": lambda s, q, c: c.url_for("web:1"),
    "queue.dead": lambda s, q, c: q.dead(),
    "queue.depth": lambda s, q, c: q.depth(),
    "queue.claim": lambda s, q, c: q.claim("w", 30),
    "queue.done": lambda s, q, c: q.done(ITEM, "w"),
    "queue.release": lambda s, q, c: q.release(ITEM, "w", error="x", retry=True, delay_seconds=0),
    "queue.enqueue": lambda s, q, c: q.enqueue("acme", "alpha", "chatwoot:p", "article_updated", {}, "d1"),
    "state.acquire_lease": lambda s, q, c: s.acquire_lease("project:acme/alpha", "me", 30),
    "state.renew_lease": lambda s, q, c: s.renew_lease("project:acme/alpha", "me", 30),
    "state.release_lease": lambda s, q, c: s.release_lease("project:acme/alpha", "me"),
    "state.start_run": lambda s, q, c: s.start_run("acme", "alpha", "poll"),
    "state.finish_run": lambda s, q, c: s.finish_run(1, "ok", {}, None),
    "state.last_runs": lambda s, q, c: s.last_runs("acme", "alpha"),
    "state.last_error": lambda s, q, c: s.last_error("acme", "alpha"),
    "state.watermark": lambda s, q, c: s.watermark("acme", "alpha", "chatwoot:p"),
    "state.set_watermark": lambda s, q, c: s.set_watermark("acme", "alpha", "chatwoot:p", Watermark(1, 1)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_database_error_is_raised_as_state_error(name: str, broken) -> None:
    """If broken: sqlalchemy.exc.OperationalError ('no such table') escapes instead (page cache, Queue.dead)."""
    with pytest.raises(StateError, match="cannot "):
        CALLS[name](*broken)
